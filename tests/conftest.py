import pytest
import torch


@pytest.fixture
def rng():
    """A fresh, seeded generator per test: random inputs, reproducible failures."""
    return torch.Generator().manual_seed(torch.randint(0, 2**31 - 1, (1,)).item())


@pytest.fixture(scope="session")
def zoo_pair(tmp_path_factory):
    """(base_dir, finetune_dir): a real tiny Llama pair trained by deltapack.zoo."""
    from tests.zoo_pair import tiny_pair

    return tiny_pair(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def calib_file(tmp_path_factory):
    """A small calibration text in the fine-tune's format."""
    from deltapack.zoo.tasks import get_task

    p = tmp_path_factory.mktemp("calib") / "calib.txt"
    ex = get_task("arith").examples(64, seed=7, split="train")
    p.write_text("\n\n".join(e.prompt + e.target for e in ex))
    return p
