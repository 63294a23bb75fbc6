"""The CUDA decode kernel (csrc/delta_decode.cuh and its units, loaded by deltapack.kernels.cuda) against
kernels.reference.delta_apply and the Triton path. The scope checks (which batches and tables the
kernel takes) run everywhere; the kernel itself runs on a GPU where the extension builds, and is
skipped elsewhere (with the build error). Cases as in delta_cases.py: fresh random deltas, odd
shapes, rows without a delta (slot −1) that must stay bit-identical, a per-dtype tolerance
relative to the largest output change."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from deltapack.kernels import cuda as kcuda
from deltapack.kernels import ops, reference
from deltapack.kernels.packed import DeltaTable, KernelDelta, RowGroups
from tests.kernels.delta_cases import TOL, _deltas

# Encodings in the kernels' scope: BitDelta q1 (tensor scale, constant zero 0.5), RTN q{b} with
# u8 zeros at group / row / tensor granularity, and Delta-CoMe low-rank blocks (8/3/2-bit Vt and
# Ut, f16 singular values; act-order permutation or not; groups of 128 or 32, or a scale per row;
# a 1-bit sign-grid tail).
SPECS = {"bitdelta": ("bitdelta", 1.0, {})}
for _b in (1, 2, 3, 4, 8):
    for _name, _kw in (("g32", {"group": 32}), ("g128", {"group": 128}), ("row", {"granularity": "row"}), ("tensor", {"granularity": "tensor"})):
        SPECS[f"q{_b}{_name}"] = ("rtn", float(_b), {"bits": _b, **_kw})
SPECS |= {
    "dc1": ("delta-come", 1.0, {}),
    "dc1_g32": ("delta-come", 1.0, {"group": 32}),
    "dc05_noperm": ("delta-come", 0.5, {"act_order": False}),
    "dc2_perm": ("delta-come", 2.0, {"act_order": True}),
    "dc2_row": ("delta-come", 2.0, {"granularity": "row"}),
    # a 1-bit tail of singular vectors on the sign grid (constant zero 0.5; session 13's form)
    "dc1_sign": ("delta-come", 1.0, {"schedule": [(8, 2), (2, 4), (1, None)]}),
    "dc1_sign_g32": ("delta-come", 1.0, {"group": 32, "schedule": [(8, 2), (2, 4), (1, None)]}),
}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# odd shapes: partial last words, N not a multiple of a block's outputs, rows of x not 16-byte
# aligned in 16-bit dtypes (33×100: the element-by-element activation path)
SHAPES = [(72, 200), (33, 100), (130, 1032)]
# DeltaZip's 2:4 with 2-bit kept values: only the lookup-table kernel reads it (not in SPECS, whose
# tests run the warp kernels)
S24Q2 = ("deltazip", 2.0, {"bits": 2})


def _tables(specs: list[tuple[str, float, dict]], out: int, inp: int, device: str, seed: int, multi: bool = False):
    """Deltas of ``specs`` (one slot each); ``multi`` adds a slot holding every delta's part (a
    slot of several parts, the others padded with KIND_NONE)."""
    with tempfile.TemporaryDirectory() as tmp:
        kds = _deltas(Path(tmp), out, inp, specs, device, seed)
    if multi:
        kds.append(KernelDelta(out, inp, [p for k in kds for p in k.parts], "multi"))
    return kds, DeltaTable.build(kds)


def _slots(M: int, n_slots: int, g: torch.Generator, no_delta_share: float = 0.25) -> torch.Tensor:
    slots = torch.randint(0, n_slots, (M,), generator=g)
    slots[torch.rand(M, generator=g) < no_delta_share] = -1
    if M > 1:
        slots[0] = -1  # at least one row without a delta
        slots[-1] = int(torch.randint(0, n_slots, (1,), generator=g))  # and one with
    else:
        slots[0] = slots[0].clamp(min=0)
    return slots


def _rel_err(got: torch.Tensor, want: torch.Tensor, y: torch.Tensor) -> float:
    change = (want.float() - y.float()).abs().max().item()
    assert change > 0, "degenerate case: the deltas change nothing"
    return (got.float() - want.float()).abs().max().item() / change


def check(kds: list[KernelDelta], tab: DeltaTable, M: int, dtype: torch.dtype, seed: int, x_offset: int = 0, triton: bool = False, fused: bool = False) -> float:
    """One batch through the CUDA kernels vs the reference (and, with ``triton``, the Triton path:
    each specialization compiles for 15-30 s, so only the mixed-batch tests ask); returns the
    relative error. ``x_offset`` reads x from a wider buffer shifted by that many elements. The
    low-rank scratch ``t`` is poisoned (NaN): a value read before it is written shows. ``fused``:
    ``y = x·Wᵀ + Δx`` with the base GEMV inside the apply launch, y poisoned beforehand."""
    dev = "cuda"
    out, inp = tab.out_features, tab.in_features
    g = torch.Generator().manual_seed(seed)
    xb = torch.randn(M, inp + x_offset, generator=g).to(device=dev, dtype=dtype)
    x = xb[:, x_offset:]
    y = torch.randn(M, out, generator=g).to(device=dev, dtype=dtype)
    slots = _slots(M, len(kds), g).to(dev)
    groups = RowGroups.per_row(slots)
    assert kcuda.handles(x, tab, groups), "the batch should be in the CUDA kernels' scope"
    t = torch.full((M, max(1, tab.max_rank)), float("nan"), device=dev)
    untouched = slots < 0
    W = None
    if fused:
        W = (torch.randn(out, inp, generator=g) / inp**0.5).to(device=dev, dtype=dtype)
        y = x.float().matmul(W.float().T).to(dtype)  # the base output the delta adds to
        got = kcuda.delta_apply(x, torch.full_like(y, float("nan")), tab, groups, t=t, base=W)
        tol = 2 * TOL[dtype] * y.float().abs().max().item()
        assert ((got[untouched].float() - y[untouched].float()).abs() <= tol).all(), "a row without a delta is not x·Wᵀ"
    else:
        got = kcuda.delta_apply(x, y.clone(), tab, groups, t=t)
        assert torch.equal(got[untouched], y[untouched]), "a row without a delta changed"
    want = reference.delta_apply(x, y, [k.dense() for k in kds], slots)
    assert torch.isfinite(got).all(), "non-finite output (an unwritten element or a poisoned read)"
    err = _rel_err(got, want, y)
    assert err <= TOL[dtype], f"{out}x{inp} M={M} {dtype}{' fused' if fused else ''}: rel err {err:.3g} > {TOL[dtype]}"
    if triton:
        from deltapack.kernels.triton import delta_apply as triton_apply

        tri = triton_apply(x, y.clone() if W is None else torch.empty_like(y), tab, groups, base=W)
        if W is None:
            assert torch.equal(tri[untouched], got[untouched])
        terr = _rel_err(got, tri, y)
        assert terr <= 2 * TOL[dtype], f"{out}x{inp} M={M} {dtype}: CUDA vs Triton rel diff {terr:.3g}"
    return err


# ---- scope (runs everywhere: tables on the CPU) -------------------------------------------------
def _cpu_table(specs, out: int = 72, inp: int = 200, multi: bool = False):
    return _tables(specs, out, inp, "cpu", seed=3, multi=multi)[1]


def test_sources_found():
    d = kcuda.csrc_dir()
    assert d is not None and all((d / f).is_file() for f in kcuda.SOURCES + kcuda.HEADERS)
    # every unit in csrc/ is compiled (an inst_*.cu left out would leave its launchers undefined)
    assert sorted(p.name for p in d.glob("*.cu")) == sorted(kcuda.SOURCES)


def test_preferred_reads_env(monkeypatch):
    monkeypatch.delenv(kcuda.ENV_DECODE, raising=False)
    assert kcuda.preferred() == kcuda.available()  # on wherever it builds (measured faster)
    monkeypatch.setenv(kcuda.ENV_DECODE, "0")
    assert kcuda.preferred() is False
    monkeypatch.setenv(kcuda.ENV_DECODE, "1")
    assert kcuda.preferred() == kcuda.available()


def test_scope_tables():
    tab = _cpu_table([SPECS["bitdelta"], SPECS["q4g32"], SPECS["q2row"], SPECS["q8tensor"], SPECS["q1g128"], SPECS["q3g32"], SPECS["dc1"], SPECS["dc1_g32"]], multi=True)
    x = torch.randn(16, 200)
    assert kcuda.table_supported(tab)
    assert kcuda.eligible(x, tab, RowGroups.per_row(torch.tensor([0, 1, -1, 2] * 4)))
    assert kcuda.eligible(x.half(), tab, RowGroups.per_row(torch.zeros(16, dtype=torch.int64)))
    assert not kcuda.handles(x, tab, RowGroups.per_row(torch.zeros(16, dtype=torch.int64)))  # a CPU x


@pytest.mark.parametrize(
    "specs",
    [
        [("lowrank", 2.0, {})],  # raw f16 factors
        [("deltazip", 2.0, {"bits": 3})],  # 2:4 sparse with 3-bit kept values (2-bit ones: the lookup-table kernel's)
        [("rtn", 8.0, {"bits": 8, "group": 48})],  # a group that splits a 32-code chunk
        [("rtn", 1.0, {"bits": 1, "group": 16})],  # group smaller than a chunk's 32 codes
        [("delta-come", 1.0, {"group": 16})],  # Ut groups of 16 outputs: an apply block spans two
        [SPECS["q4g32"], ("lowrank", 2.0, {})],  # one out-of-scope slot is enough
    ],
    ids=["lowrank", "s24q3", "group48", "q1g16", "delta-come-g16", "mixed-lowrank"],
)
def test_scope_rejects_tables(specs):
    tab = _cpu_table(specs)
    assert not kcuda.table_supported(tab)
    assert not kcuda.eligible(torch.randn(2, 200), tab, RowGroups.per_row(torch.tensor([0, -1])))


def test_scope_rejects_batches():
    tab = _cpu_table([SPECS["q4g32"], SPECS["bitdelta"]])
    assert kcuda.eligible(torch.randn(16, 200), tab, RowGroups.per_row(torch.zeros(16, dtype=torch.int64)))
    assert kcuda.eligible(torch.randn(64, 200), tab, RowGroups.per_row(torch.zeros(64, dtype=torch.int64)))
    # segment groups (a slot shared by several rows: max_len > 1) are served one group per row ...
    assert kcuda.eligible(torch.randn(4, 200), tab, RowGroups.segments([0, 0, 1, -1], "cpu"))
    assert kcuda.eligible(torch.randn(4, 200), tab, RowGroups.single(4, "cpu"))
    # ... when their layout is known (the custom op rebuilds groups without it) ...
    g = RowGroups.segments([0, 0, 1, -1], "cpu")
    assert not kcuda.eligible(torch.randn(4, 200), tab, RowGroups(g.row_idx, g.start, g.length, g.slot, g.max_len))
    # ... and not with DELTAPACK_CUDA_SEGMENTS=0
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(kcuda.ENV_SEGMENTS, "0")
        assert not kcuda.eligible(torch.randn(4, 200), tab, RowGroups.segments([0, 0, 1, -1], "cpu"))
    # more than MAX_ROWS rows: only while every group is short (many distinct deltas)
    M = kcuda.MAX_ROWS + 36
    assert kcuda.eligible(torch.randn(M, 200), tab, RowGroups.per_row(torch.zeros(M, dtype=torch.int64)))
    short = [i // (kcuda.PER_ROW_MAX_LEN - 1) for i in range(M)]  # short segments (too short for the prefill path)
    assert kcuda.eligible(torch.randn(M, 200), tab, RowGroups.segments(short, "cpu"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DELTAPACK_TRITON_DEQUANT_MIN_ROWS", "0")  # no prefill path: only the length decides
        long = [0] * (kcuda.PER_ROW_MAX_LEN + 1) + [1] * (M - kcuda.PER_ROW_MAX_LEN - 1)
        assert not kcuda.eligible(torch.randn(M, 200), tab, RowGroups.segments(long, "cpu"))
        assert kcuda.eligible(torch.randn(kcuda.MAX_ROWS, 200), tab, RowGroups.segments(long[: kcuda.MAX_ROWS], "cpu"))
    # activation dtype
    assert not kcuda.eligible(torch.randn(2, 200).double(), tab, RowGroups.per_row(torch.zeros(2, dtype=torch.int64)))
    # strided features
    assert not kcuda.eligible(torch.randn(200, 2).T, tab, RowGroups.per_row(torch.zeros(2, dtype=torch.int64)))


@pytest.mark.parametrize(
    "slots",
    [[0, 0, 1, -1], [2, -1, 0, 2, 2, 1, -1, 0], [-1, -1, -1], [1] * 7],
    ids=["small", "shuffled", "none", "one-slot"],
)
def test_as_per_row(slots):
    """A segment batch as one group per row keeps every row's slot (−1 where none)."""
    g = kcuda.as_per_row(RowGroups.segments(slots, "cpu"), len(slots))
    assert g.identity and g.max_len == 1
    assert g.slot.tolist() == slots
    single = kcuda.as_per_row(RowGroups.single(5, "cpu", slot=3), 5)
    assert single.slot.tolist() == [3] * 5
    per_row = RowGroups.per_row(torch.tensor(slots))
    assert kcuda.as_per_row(per_row, len(slots)) is per_row  # already per row


def test_apply_subtiles(monkeypatch):
    """Sub-tiles per apply block: more as the grid grows, capped by Ut's scale groups (an apply
    block's outputs share one group) and by the override."""
    monkeypatch.delenv(kcuda.ENV_APPLY_SUBTILES, raising=False)
    tab128 = _cpu_table([SPECS["dc1"]], out=4096, inp=256)
    tab32 = _cpu_table([SPECS["dc1_g32"]], out=4096, inp=256)
    dense = _cpu_table([SPECS["bitdelta"]], out=4096, inp=256)
    assert tab128.group_n == 128 and tab32.group_n == 32
    sms = 132
    assert kcuda.apply_subtiles(tab128, sms, 1, 4096, 4) == 1  # B = 1: 128 blocks, one each
    assert kcuda.apply_subtiles(tab128, sms, 16, 4096, 4) == 4  # 2048 blocks → 512: capped by 128 / 32
    assert kcuda.apply_subtiles(tab32, sms, 16, 4096, 4) == 1  # a block of 32 outputs fills a group of 32
    assert kcuda.apply_subtiles(tab32, sms, 64, 4096, 1) == 4  # 8 outputs per block: up to 4 in a group
    assert kcuda.apply_subtiles(dense, sms, 64, 4096, 4) == 8  # no Ut: only the grid limits it
    monkeypatch.setenv(kcuda.ENV_APPLY_SUBTILES, "16")
    assert kcuda.apply_subtiles(tab128, sms, 1, 4096, 4) == 4  # the override, capped
    assert kcuda.apply_subtiles(dense, sms, 1, 4096, 4) == 16


def test_lut_scope(monkeypatch):
    """The lookup-table kernel takes tables of dense 1- and 2-bit parts and DeltaZip's 2:4
    s24q2 parts only, and (by default) batches of at least LUT_MIN_GROUPS row groups and a
    grid of a block per three SMs; DELTAPACK_CUDA_LUT
    forces it off or on."""
    monkeypatch.delenv(kcuda.ENV_LUT, raising=False)
    dense = _cpu_table([SPECS[s] for s in ("bitdelta", "q1g32", "q2row", "q2tensor", "q1g128")], multi=True)
    assert kcuda.lut_table(dense)
    for other in (["q3g32"], ["bitdelta", "q4g32"], ["dc1"], ["bitdelta", "dc1"]):
        assert not kcuda.lut_table(_cpu_table([SPECS[s] for s in other]))
    # DeltaZip's 2:4 parts with 2-bit kept values: only this kernel reads them
    s24 = _cpu_table([S24Q2, SPECS["bitdelta"]])
    assert kcuda.lut_table(s24) and not kcuda.table_supported(s24)
    assert kcuda.eligible(torch.randn(4, 200), s24, RowGroups.per_row(torch.tensor([0, 1, -1, 0])))
    assert not kcuda.lut_table(_cpu_table([("deltazip", 2.0, {"bits": 4})]))
    sms, low = 132, kcuda.LUT_MIN_GROUPS
    assert not kcuda.use_lut(dense, sms, low - 1, 4096)  # few groups: the warp-per-row apply
    assert kcuda.use_lut(dense, sms, low, 4096)  # 4 × 16 blocks ≥ 132 / 3
    assert not kcuda.use_lut(dense, sms, low, 512)  # 4 × 2 blocks: too small a grid
    assert kcuda.use_lut(dense, sms, 32, 512)
    monkeypatch.setenv(kcuda.ENV_LUT, "1")
    assert kcuda.use_lut(dense, sms, 1, 4096)
    assert not kcuda.use_lut(_cpu_table([SPECS["dc1"]]), sms, 64, 4096)
    monkeypatch.setenv(kcuda.ENV_LUT, "0")
    assert not kcuda.use_lut(dense, sms, 64, 4096)


def test_lean_scope(monkeypatch):
    """The lean fused GEMV takes tables whose deltas hold at most one part, dense with 1- or 2-bit
    codes of one width for the whole table, and 16-bit activations; DELTAPACK_CUDA_LEAN=0 turns
    it off."""
    monkeypatch.delenv(kcuda.ENV_LEAN, raising=False)
    one = _cpu_table([SPECS[s] for s in ("bitdelta", "q1g32", "q1row", "q1tensor", "q1g128")])
    two = _cpu_table([SPECS[s] for s in ("q2g32", "q2row", "q2tensor", "q2g128")])
    assert kcuda.lean_bits(one) == 1 and kcuda.lean_bits(two) == 2
    for other in (["bitdelta", "q2g32"], ["q3g32"], ["q4row"], ["dc1"], ["bitdelta", "dc1"]):
        assert kcuda.lean_bits(_cpu_table([SPECS[s] for s in other])) == -1, other
    assert kcuda.lean_bits(_cpu_table([SPECS["bitdelta"], SPECS["q1g32"]], multi=True)) == -1  # a slot of two parts
    assert kcuda.lean_bits(_cpu_table([S24Q2])) == -1
    x = torch.randn(2, 200)
    assert kcuda.lean(x.half(), one) == 1 and kcuda.lean(x.bfloat16(), two) == 2
    assert kcuda.lean(x, one) == -1  # fp32 activations: the general fused apply
    monkeypatch.setenv(kcuda.ENV_LEAN, "0")
    assert kcuda.lean(x.half(), one) == -1
    assert kcuda.rows_per_warp(x, 1, 4096, fused_dense=True, lean=True) == 1


# ---- the kernel (GPU) -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if not kcuda.available():
        pytest.skip(f"the CUDA extension did not build: {kcuda.build_error()}")
    return True


gpu = pytest.mark.gpu


@pytest.fixture
def fuse_all(monkeypatch):
    """Fuse the base GEMV at every batch size (by default only up to FUSE_MAX_ROWS rows), so that
    the fused kernels are tested at 16 rows too."""
    monkeypatch.setenv(kcuda.ENV_FUSE_MAX_ROWS, str(kcuda.MAX_ROWS))


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("spec", sorted(SPECS))
def test_encodings(built, spec, dtype):
    for i, (out, inp) in enumerate(SHAPES):
        seed = 1000 * i + sorted(SPECS).index(spec)
        kds, tab = _tables([SPECS[spec], SPECS[spec]], out, inp, "cuda", seed)
        for M in (1, 3, 16):
            check(kds, tab, M, dtype, seed=seed + M)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_mixed_slots_and_parts(built, dtype):
    """Rows on deltas of every method, bit width and granularity in one launch, and a slot of
    several parts, low-rank and dense (the other slots padded with KIND_NONE)."""
    specs = [SPECS[s] for s in ("bitdelta", "q1g32", "q2g128", "q3g32", "q4row", "q8tensor", "dc1", "dc05_noperm")]
    for out, inp in ((96, 256), (33, 100)):
        kds, tab = _tables(specs, out, inp, "cuda", seed=7, multi=True)
        assert tab.max_parts >= len(specs)
        for M in (1, 5, 16):
            check(kds, tab, M, dtype, seed=70 + M, triton=True)


@gpu
@pytest.mark.parametrize("minb", ["", "3"], ids=["minb2", "minb3"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_fused_base(built, dtype, minb, fuse_all, monkeypatch):
    """y = x·Wᵀ + Δx in the apply launch (y poisoned beforehand): rows without a delta get the
    base GEMV alone; aligned (16-byte vector loads of W) and odd shapes (element by element).
    Dense 1- and 2-bit parts (per tensor, row or group of 32 / 128) fold into the base GEMV's
    loop in 16-bit dtypes; the multi slot holds several dense parts: the first 1-/2-bit one folds,
    the others run after the loop.
    ``minb``: the fused apply's register bound (2 or 3 blocks per SM)."""
    monkeypatch.setenv(kcuda.ENV_APPLY_MIN_BLOCKS, minb)
    specs = [SPECS[s] for s in ("dc1", "bitdelta", "q3g128", "dc05_noperm", "q1g32", "q2g128", "q2row", "q1tensor")]
    for out, inp in ((96, 256), (33, 100), (130, 1032)):
        kds, tab = _tables(specs, out, inp, "cuda", seed=17, multi=True)
        for M in (1, 3, 16):
            check(kds, tab, M, dtype, seed=170 + M, fused=True)


@gpu
@pytest.mark.parametrize("nr", ["", "2"], ids=["nr1", "nr2"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=lambda d: str(d).split(".")[-1])
def test_lean_fused(built, dtype, nr, fuse_all, monkeypatch):
    """The lean fused GEMV (y poisoned beforehand) against the reference and against the general
    fused apply (DELTAPACK_CUDA_LEAN=0): 1- and 2-bit tables of every scale granularity, rows
    without a delta, N not a multiple of a block's outputs, K a multiple of 8 (lean) or not
    (the fused apply takes it), x shifted off 16-byte alignment (idem)."""
    monkeypatch.setenv(kcuda.ENV_ROWS_PER_WARP, nr)
    for names in (("bitdelta", "q1g32", "q1row", "q1tensor", "q1g128"), ("q2g32", "q2row", "q2tensor", "q2g128")):
        for out, inp in ((96, 256), (33, 104), (130, 1032), (33, 100)):
            kds, tab = _tables([SPECS[s] for s in names], out, inp, "cuda", seed=out + inp)
            assert kcuda.lean_bits(tab) in (1, 2)
            for M in (1, 2, 5):
                for x_offset in (0, 1):
                    monkeypatch.delenv(kcuda.ENV_LEAN, raising=False)
                    check(kds, tab, M, dtype, seed=M + 7 * x_offset, x_offset=x_offset, fused=True)
                    monkeypatch.setenv(kcuda.ENV_LEAN, "0")
                    check(kds, tab, M, dtype, seed=M + 7 * x_offset, x_offset=x_offset, fused=True)


@gpu
@pytest.mark.slow
@pytest.mark.parametrize(
    "spec,dtype,M",
    [
        ("q4g128", torch.float16, 16),
        ("bitdelta", torch.bfloat16, 1),
        ("q2g32", torch.float32, 3),
        ("q8row", torch.bfloat16, 16),
        ("q1g32", torch.float16, 3),
        ("q4tensor", torch.float32, 1),
        ("dc1", torch.bfloat16, 1),
        ("dc1", torch.float16, 16),
    ],
)
def test_llama_shape(built, spec, dtype, M, fuse_all):
    kds, tab = _tables([SPECS[spec], SPECS["bitdelta"]], 4096, 4096, "cuda", seed=M)
    check(kds, tab, M, dtype, seed=M)
    if spec.startswith("dc"):
        check(kds, tab, M, dtype, seed=M + 1, fused=True)


@gpu
@pytest.mark.parametrize("nr", [1, 2, 4])
def test_rows_per_warp(built, nr, monkeypatch, fuse_all):
    """Every outputs-per-warp variant (the heuristic picks one per batch) and shrink tiles of
    1, 5 and 32 rank rows, plain and fused."""
    monkeypatch.setenv(kcuda.ENV_ROWS_PER_WARP, str(nr))
    kds, tab = _tables([SPECS["q4g32"], SPECS["bitdelta"], SPECS["q2row"], SPECS["dc1"]], 130, 1032, "cuda", seed=11)
    for jb in (1, 5, 32):
        monkeypatch.setenv(kcuda.ENV_SHRINK_ROWS, str(jb))
        for dtype in DTYPES:
            for M in (1, 16):
                check(kds, tab, M, dtype, seed=nr * 10 + M)
                check(kds, tab, M, dtype, seed=nr * 10 + M, fused=True)


@gpu
@pytest.mark.parametrize("ns", [1, 2, 4, 8])
def test_apply_subtiles_gpu(built, ns, monkeypatch):
    """Unfused apply blocks of several sub-tiles (forced; capped by Ut's scale groups): dense and
    low-rank slots, groups of 128 and 32, N not a multiple of a block's span, 1 to 64 rows."""
    monkeypatch.setenv(kcuda.ENV_APPLY_SUBTILES, str(ns))
    for nr, minb in ((1, "1"), (4, "1"), (2, "3")):
        monkeypatch.setenv(kcuda.ENV_ROWS_PER_WARP, str(nr))
        monkeypatch.setenv(kcuda.ENV_APPLY_MIN_BLOCKS, minb)
        for specs, out, inp in (
            (["dc1", "bitdelta", "q3g32", "dc05_noperm"], 300, 256),
            (["dc1_g32", "q4row", "dc2_perm"], 130, 1032),
        ):
            kds, tab = _tables([SPECS[s] for s in specs], out, inp, "cuda", seed=31 + ns, multi=True)
            for M in (1, 16, 64):
                check(kds, tab, M, torch.bfloat16, seed=ns * 100 + M)


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bfloat16", "float32"])
def test_many_rows_and_segments(built, dtype, monkeypatch):
    """Up to MAX_ROWS rows per launch, gather style, and segment batches (prefill layout: rows
    sorted by slot, several rows per slot) served one group per row, with and without base.
    Long segment groups go to the Triton prefill path by default; here it is off."""
    g = RowGroups.segments([0] * 20, "cpu")
    assert not kcuda.eligible(torch.randn(20, 512), _cpu_table([SPECS["dc1"]], out=300, inp=512), g)  # the prefill path's
    monkeypatch.setenv("DELTAPACK_TRITON_DEQUANT_MIN_ROWS", "0")
    kds, tab = _tables([SPECS["dc1"], SPECS["bitdelta"], SPECS["q2g128"]], 300, 512, "cuda", seed=41)
    for M in (33, kcuda.MAX_ROWS):
        check(kds, tab, M, dtype, seed=M)
    g = torch.Generator().manual_seed(5)
    for slots in ([0] * 32, [2, 0, -1, 1, 0, 2, 2, -1] * 4, [1] * 5 + [-1] * 3):
        M = len(slots)
        x = torch.randn(M, 512, generator=g).to("cuda", dtype)
        y = torch.randn(M, 300, generator=g).to("cuda", dtype)
        groups = RowGroups.segments(slots, "cuda")
        assert groups.max_len > 1 and kcuda.handles(x, tab, groups)
        want = reference.delta_apply(x, y, [k.dense() for k in kds], torch.tensor(slots, device="cuda"))
        got = kcuda.delta_apply(x, y.clone(), tab, groups)
        assert _rel_err(got, want, y) <= TOL[dtype]
        W = (torch.randn(300, 512, generator=g) / 512**0.5).to("cuda", dtype)
        base = x.float().matmul(W.float().T).to(dtype)
        want = reference.delta_apply(x, base, [k.dense() for k in kds], torch.tensor(slots, device="cuda"))
        got = kcuda.delta_apply(x, torch.full_like(y, float("nan")), tab, groups, base=W)
        assert _rel_err(got, want, base) <= 2 * TOL[dtype]


LUT_SPECS = ["bitdelta", "q1g32", "q1g128", "q1row", "q1tensor", "q2g32", "q2g128", "q2row", "q2tensor", "s24q2"]


@gpu
@pytest.mark.parametrize("stage", ["0", "1"], ids=["loads", "staged"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_lut_dense(built, dtype, stage, monkeypatch):
    """The lookup-table kernel (forced on) for every 1- and 2-bit dense encoding and DeltaZip's
    2:4 s24q2, a slot of several parts, odd shapes (partial words, N past a block's 256 outputs)
    and inputs longer than one table step (2048 1-bit / 1024 2-bit codes), against the
    reference and against the other path (the warp-per-row apply; Triton for 2:4); with the
    codes loaded per row or staged (rows of a multiple of 4 words: 2176 and 4224 inputs, and
    4200's 1-bit rows, take the staged copies; the others fall back to the loads)."""
    monkeypatch.setenv(kcuda.ENV_LUT_STAGE, stage)
    for out, inp in ((72, 200), (33, 100), (300, 2100), (257, 4200), (100, 2176), (513, 4224)):
        kds, tab = _tables([{**SPECS, "s24q2": S24Q2}[s] for s in LUT_SPECS], out, inp, "cuda", seed=out + inp, multi=True)
        assert kcuda.lut_table(tab)
        for M in (1, 5, 16):
            monkeypatch.setenv(kcuda.ENV_LUT, "1")
            check(kds, tab, M, dtype, seed=out + M)
            g = torch.Generator().manual_seed(M)
            x = torch.randn(M, inp, generator=g).to("cuda", dtype)
            y = torch.randn(M, out, generator=g).to("cuda", dtype)
            groups = RowGroups.per_row(_slots(M, len(kds), g).cuda())
            lut = kcuda.delta_apply(x, y.clone(), tab, groups)
            monkeypatch.setenv(kcuda.ENV_LUT, "0")
            warp = kcuda.delta_apply(x, y.clone(), tab, groups)
            assert _rel_err(lut, warp, y) <= 2 * TOL[dtype]


@gpu
@pytest.mark.parametrize("lut", ["0", "1", "staged"])
def test_many_distinct_deltas(built, lut, monkeypatch):
    """Batches past MAX_ROWS rows whose groups are short (one distinct delta per row or a few
    rows each) stay on these kernels, per row, with and without the lookup-table kernel (its
    code loads per row or staged)."""
    monkeypatch.setenv(kcuda.ENV_LUT, "0" if lut == "0" else "1")
    monkeypatch.setenv(kcuda.ENV_LUT_STAGE, "1" if lut == "staged" else "0")
    kds, tab = _tables([SPECS[s] for s in ("bitdelta", "q2g128", "q1row", "q1g32") * 2], 300, 512, "cuda", seed=43)
    M = kcuda.MAX_ROWS + 37
    check(kds, tab, M, torch.bfloat16, seed=M)  # one group per row
    # segments (rows sorted by slot) of at most 13 rows: 8 slots over 101 rows, some rows without
    slots = [i % 8 if i % 10 else -1 for i in range(M)]
    g = torch.Generator().manual_seed(9)
    x = torch.randn(M, 512, generator=g).to("cuda", torch.bfloat16)
    y = torch.randn(M, 300, generator=g).to("cuda", torch.bfloat16)
    groups = RowGroups.segments(slots, "cuda")
    assert 1 < groups.max_len <= kcuda.PER_ROW_MAX_LEN
    assert kcuda.handles(x, tab, groups)
    want = reference.delta_apply(x, y, [k.dense() for k in kds], torch.tensor(slots, device="cuda"))
    got = kcuda.delta_apply(x, y.clone(), tab, groups)
    assert _rel_err(got, want, y) <= TOL[torch.bfloat16]


@gpu
@pytest.mark.parametrize("M", [1, 5, 16])
def test_onepass(built, M, monkeypatch, fuse_all):
    """The one-pass fused launch (shrink items beside the base GEMV, counters in the stream's
    scratch) agrees with the two launches, leaves its counters at zero after every call (so the
    next call waits again), and holds across repeated calls, rows without a delta included, with
    more blocks than fit on the GPU at once (M = 16 at 4096x4096: over 4000 blocks)."""
    dtype = torch.bfloat16
    shapes = [(130, 1032, 3)] + ([(4096, 4096, 2)] if M == 16 else [])
    for out, inp, calls in shapes:
        kds, tab = _tables([SPECS["dc1"], SPECS["dc2_perm"], SPECS["bitdelta"]], out, inp, "cuda", seed=23 + M)
        g = torch.Generator().manual_seed(M)
        x = torch.randn(M, inp, generator=g).to("cuda", dtype)
        W = (torch.randn(out, inp, generator=g) / inp**0.5).to("cuda", dtype)
        slots = _slots(M, len(kds), g).to("cuda")
        groups = RowGroups.per_row(slots)
        results = {}
        for mode in ("0", "1"):
            monkeypatch.setenv(kcuda.ENV_ONEPASS, mode)
            for _ in range(calls):
                t = torch.full((M, tab.max_rank), float("nan"), device="cuda")
                results[mode] = kcuda.delta_apply(x, torch.full((M, out), float("nan"), device="cuda", dtype=dtype), tab, groups, t=t, base=W)
                assert torch.isfinite(results[mode]).all()
            torch.cuda.synchronize()
            assert not kcuda.sync_scratch(x.device).any(), "the one-pass counters were not left at zero"
        y = x.float().matmul(W.float().T).to(dtype)
        want = reference.delta_apply(x, y, [k.dense() for k in kds], slots)
        # the same batch as groups that are not the identity (row_idx a permutation)
        perm = torch.randperm(M, generator=g).to(device="cuda", dtype=torch.int32)
        ar = torch.arange(M, device="cuda", dtype=torch.int32)
        shuffled = RowGroups(row_idx=perm, start=ar, length=torch.ones_like(ar), slot=slots.to(torch.int32)[perm.long()], max_len=1)
        results["perm"] = kcuda.delta_apply(x, torch.full((M, out), float("nan"), device="cuda", dtype=dtype), tab, shuffled, base=W)
        for mode, got in results.items():
            assert _rel_err(got, want, y) <= TOL[dtype], f"onepass={mode} {out}x{inp} M={M}"
        assert _rel_err(results["1"], results["0"], y) <= 2 * TOL[dtype]


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["float16", "float32"])
def test_unaligned_activations(built, dtype):
    """x rows that do not start on 16-byte boundaries read activations element by element."""
    kds, tab = _tables([SPECS["q4g32"], SPECS["q1g128"]], 72, 256, "cuda", seed=5)
    check(kds, tab, 3, dtype, seed=5, x_offset=1)


@gpu
def test_through_the_op(built):
    """ops' ``cuda`` backend runs this kernel for batches in scope (bit-identical to calling it)."""
    kds, tab = _tables([SPECS["q4g32"], SPECS["bitdelta"]], 72, 200, "cuda", seed=9)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(4, 200, generator=g).cuda().half()
    y = torch.randn(4, 72, generator=g).cuda().half()
    groups = RowGroups.per_row(torch.tensor([0, -1, 1, 0], device="cuda"))
    assert kcuda.handles(x, tab, groups)
    a = kcuda.delta_apply(x, y.clone(), tab, groups)
    b = ops.delta_apply(x, y.clone(), tab, groups, backend="cuda")
    assert torch.equal(a, b)


@gpu
def test_out_of_scope_falls_back_to_triton(built):
    """Raw low-rank factors, segment groups the custom op rebuilt (their layout unknown) and more
    than MAX_ROWS rows in long groups: handles() is False and the
    ``cuda`` backend (and cuda.delta_apply itself) still gives the reference result, through
    Triton."""
    dev, dtype = "cuda", torch.float16
    g = torch.Generator().manual_seed(13)
    lr_kds, lr_tab = _tables([("lowrank", 2.0, {}), ("delta-come", 1.0, {"group": 32})], 72, 200, dev, seed=13)
    dn_kds, dn_tab = _tables([SPECS["q4g32"], SPECS["bitdelta"]], 72, 200, dev, seed=14)
    cases = [
        (lr_kds, lr_tab, torch.tensor([0, 1, -1, 0]), "row"),  # raw f16 low-rank factors
        (dn_kds, dn_tab, torch.tensor([0, 0, 1, -1, 1]), "seg"),  # max_len > 1
        (dn_kds, dn_tab, torch.randint(0, 2, (kcuda.MAX_ROWS + 1,), generator=g), "long"),  # too many rows, long groups
    ]
    for kds, tab, slots, mode in cases:
        M = slots.shape[0]
        x = torch.randn(M, 200, generator=g).to(dev, dtype)
        y = torch.randn(M, 72, generator=g).to(dev, dtype)
        groups = RowGroups.per_row(slots.to(dev)) if mode == "row" else RowGroups.segments(slots, dev)
        assert mode != "long" or groups.max_len > kcuda.PER_ROW_MAX_LEN
        if mode == "seg":  # as the custom op rebuilds them: without the layout flag
            groups = RowGroups(groups.row_idx, groups.start, groups.length, groups.slot, groups.max_len)
        assert not kcuda.handles(x, tab, groups)
        want = reference.delta_apply(x, y, [k.dense() for k in kds], slots.to(dev))
        for got in (ops.delta_apply(x, y.clone(), tab, groups, backend="cuda"), kcuda.delta_apply(x, y.clone(), tab, groups)):
            assert torch.equal(got[slots.to(dev) < 0], y[slots.to(dev) < 0])
            assert _rel_err(got, want, y) <= TOL[dtype]


@gpu
def test_cuda_graph(built):
    """The launch captures into a CUDA graph (no host sync, no allocation) and replays on new
    inputs."""
    dev, dtype = "cuda", torch.bfloat16
    kds, tab = _tables([SPECS["q4g128"], SPECS["bitdelta"]], 130, 1032, dev, seed=17)
    g = torch.Generator().manual_seed(17)
    M = 8
    slots = _slots(M, len(kds), g).to(dev)
    groups = RowGroups.per_row(slots)
    x = torch.randn(M, 1032, generator=g).to(dev, dtype)
    y = torch.randn(M, 130, generator=g).to(dev, dtype)
    assert kcuda.handles(x, tab, groups)
    kcuda.delta_apply(x, y.clone(), tab, groups)  # warm-up: build, table check, SM count
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kcuda.delta_apply(x, y, tab, groups)
    dense = [k.dense() for k in kds]
    for step in range(2):
        x.copy_(torch.randn(M, 1032, generator=g).to(dev, dtype))
        y0 = torch.randn(M, 130, generator=g).to(dev, dtype)
        y.copy_(y0)
        graph.replay()
        want = reference.delta_apply(x, y0, dense, slots)
        assert torch.equal(y[slots < 0], y0[slots < 0])
        assert _rel_err(y, want, y0) <= TOL[dtype], f"replay {step}"


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_concurrent_lowrank(built, dtype, monkeypatch):
    """DELTAPACK_CUDA_CONCURRENT=1: fused low-rank batches run the delta on a side stream beside
    cuBLAS's GEMV (y poisoned beforehand; rows without a delta get the base alone)."""
    monkeypatch.setenv(kcuda.ENV_CONCURRENT, "1")
    specs = [SPECS[s] for s in ("dc1", "dc05_noperm", "bitdelta")]
    for out, inp in ((96, 256), (130, 1032)):
        kds, tab = _tables(specs, out, inp, "cuda", seed=23, multi=True)
        for M in (1, 2):
            check(kds, tab, M, dtype, seed=230 + M, fused=True)


@gpu
@pytest.mark.parametrize("concurrent", ["0", "1"], ids=["onepass", "concurrent"])
def test_cuda_graph_fused_lowrank(built, fuse_all, concurrent, monkeypatch):
    """The fused low-rank path captures into a CUDA graph and replays: the one-pass launch (its
    counters reset inside the kernel, so every replay waits for its own t) and the side-stream
    fork and join (DELTAPACK_CUDA_CONCURRENT=1)."""
    monkeypatch.setenv(kcuda.ENV_CONCURRENT, concurrent)
    dev, dtype = "cuda", torch.bfloat16
    kds, tab = _tables([SPECS["dc1"], SPECS["dc05_noperm"]], 130, 1032, dev, seed=19)
    g = torch.Generator().manual_seed(19)
    M = 4
    slots = _slots(M, len(kds), g).to(dev)
    groups = RowGroups.per_row(slots)
    x = torch.randn(M, 1032, generator=g).to(dev, dtype)
    W = (torch.randn(130, 1032, generator=g) / 1032**0.5).to(dev, dtype)
    y = torch.empty(M, 130, device=dev, dtype=dtype)
    t = torch.empty(M, tab.max_rank, device=dev)
    kcuda.delta_apply(x, y, tab, groups, t=t, base=W)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kcuda.delta_apply(x, y, tab, groups, t=t, base=W)
    dense = [k.dense() for k in kds]
    for step in range(3):
        x.copy_(torch.randn(M, 1032, generator=g).to(dev, dtype))
        t.fill_(float("nan"))
        y.fill_(float("nan"))
        graph.replay()
        base = x.float().matmul(W.float().T).to(dtype)
        want = reference.delta_apply(x, base, dense, slots)
        assert torch.isfinite(y).all()
        assert _rel_err(y, want, base) <= TOL[dtype], f"replay {step}"
