"""DeltaLinear / MultiDeltaLinear over packed deltas: the custom op, the backend switch,
torch.compile, and (on a GPU) load() through the kernels and CUDA-graph capture."""

from pathlib import Path

import pytest
import torch
from torch import nn

from deltapack.kernels import ops, reference
from deltapack.kernels.packed import KernelDelta, RowGroups
from deltapack.kernels.synthetic import write_synthetic
from deltapack.nn import DeltaLinear, MultiDeltaLinear

SPECS = [("delta-come", 2.0, {"group": 32, "act_order": True}), ("bitdelta", 1.0, {}), ("deltazip", 2.0, {}), ("lowrank", 1.0, {}), ("rtn", 3.0, {"bits": 3, "group": 32})]


def _deltas(tmp: Path, out: int, inp: int, device="cpu") -> list[KernelDelta]:
    kds = []
    for i, (m, b, kw) in enumerate(SPECS):
        f = write_synthetic(tmp / f"{i}.dpk", [("w", out, inp, m, b)], seed=i, **kw)
        kds.append(KernelDelta.from_entry(f, f.manifest["deltas"][0], (out, inp), device=device))
    return kds


def test_multi_delta_linear_reference_backend(tmp_path, rng):
    out, inp = 48, 64
    base = nn.Linear(inp, out)
    kds = _deltas(tmp_path, out, inp)
    m = MultiDeltaLinear(base, kds, backend="reference")
    x = torch.randn(2, 5, inp, generator=rng)
    slots = torch.tensor([0, 1, 2, 3, 4, -1, 2, 0, 1, 3])
    got = m(x, RowGroups.segments(slots, "cpu"))
    want = reference.delta_apply(x.reshape(-1, inp), base(x).reshape(-1, out), [k.dense() for k in kds], slots).reshape(2, 5, out)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(m(x), base(x)), "no rows mapping: base only"


def test_delta_linear_packed_matches_module_path(tmp_path, rng):
    from deltapack.nn.delta import read_delta

    out, inp = 40, 96
    f = write_synthetic(tmp_path / "d.dpk", [("w", out, inp, "delta-come", 3.0)], seed=3, group=32, act_order=True)
    entry = f.manifest["deltas"][0]
    base = nn.Linear(inp, out, bias=False)
    packed = DeltaLinear(base, KernelDelta.from_entry(f, entry, (out, inp), device="cpu"), backend="reference")
    module = DeltaLinear(base, read_delta(f, entry))
    x = torch.randn(3, inp, generator=rng)
    torch.testing.assert_close(packed(x), module(x), rtol=1e-5, atol=1e-5)


def test_custom_op_under_torch_compile(tmp_path, rng):
    """The op has a fake implementation: a full graph compiles (aot_eager) and matches eager."""
    out, inp = 32, 64
    m = MultiDeltaLinear(nn.Linear(inp, out), _deltas(tmp_path, out, inp), backend="reference")
    groups = RowGroups.per_row(torch.tensor([0, 4, -1, 2]))
    x = torch.randn(4, inp, generator=rng)
    eager = m(x, groups)
    compiled = torch.compile(lambda x: m(x, groups), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), eager)


def test_unknown_backend_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="unknown kernel backend"):
        ops.backend_name("fast")
    monkeypatch.setenv("DELTAPACK_BACKEND", "cuda-ish")
    with pytest.raises(ValueError, match="DELTAPACK_BACKEND"):
        ops.backend_name()


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@gpu
@pytest.mark.gpu
def test_multi_delta_linear_cuda_graph_and_compile(tmp_path):
    out, inp = 256, 512
    base = nn.Linear(inp, out).cuda().half()
    kds = _deltas(tmp_path, out, inp, device="cuda")
    m = MultiDeltaLinear(base, kds, backend="triton")
    groups = RowGroups.per_row(torch.tensor([0, 1, 2, 3, 4, -1, 1, 0], device="cuda"))
    x = torch.randn(8, inp, device="cuda", dtype=torch.half)
    want = reference.delta_apply(x, base(x), [k.dense() for k in kds], groups.slot)
    eager = m(x, groups)
    torch.testing.assert_close(eager.float(), want.float(), rtol=2e-2, atol=2e-2)
    g = torch.cuda.CUDAGraph()
    static_x = x.clone()
    with torch.cuda.graph(g):
        static_y = m(static_x, groups)
    x2 = torch.randn_like(x)
    static_x.copy_(x2)
    g.replay()
    torch.testing.assert_close(static_y, m(x2, groups))
    compiled = torch.compile(lambda x: m(x, groups), fullgraph=True)
    torch.testing.assert_close(compiled(x2), m(x2, groups))


@gpu
@pytest.mark.gpu
def test_load_on_gpu_uses_kernels(zoo_pair, tmp_path):
    from deltapack import load
    from deltapack.compress.pipeline import compress

    base_dir, ft_dir = zoo_pair
    out = tmp_path / "d.dpk"
    compress(base_dir, ft_dir, out, method="delta-come", bits_per_param=2.0, n_samples=8, seq_len=64, progress=False)
    cpu = load(base_dir, out, dtype=torch.float32)
    gpu = load(base_dir, out, device="cuda", dtype=torch.float32, backend="triton")
    lin = [m for m in gpu.modules() if isinstance(m, DeltaLinear)]
    assert lin and all(m.table is not None for m in lin)
    ids = torch.randint(3, 90, (2, 24))
    with torch.no_grad():
        a = cpu(ids).logits
        b = gpu(ids.cuda()).logits.cpu()
    torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)
