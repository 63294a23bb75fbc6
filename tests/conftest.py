import pytest
import torch


@pytest.fixture
def rng():
    """A fresh, seeded generator per test: random inputs, reproducible failures."""
    return torch.Generator().manual_seed(torch.randint(0, 2**31 - 1, (1,)).item())
