"""CUDA decode kernels (csrc/delta_decode.cuh; csrc/delta_decode.cu binds them) and their loader: built on first use where a GPU
and nvcc exist, with :func:`torch.utils.cpp_extension.load`, into
``~/.cache/deltapack/cuda/<hash of the sources, torch version and GPU archs>``.

Scope: decode batches of at most :data:`MAX_ROWS` rows, or of any size whose row groups hold at
most :data:`PER_ROW_MAX_LEN` rows (many distinct deltas), served one row per group (segment
batches are converted, :func:`as_per_row`, unless their groups are long enough for the Triton
prefill path), whose deltas are made of

- dense packed parts (BitDelta ``q1``, RTN ``q{1,2,3,4,8}``) whose scale groups hold whole
  32-code chunks, and
- low-rank blocks with packed ``Vt`` / ``Ut`` (Delta-CoMe: 8/3/2-bit, f16 singular values,
  optional act-order permutation) whose ``Ut`` scale groups along the output are multiples of
  32 (an apply block's 8–32 outputs share one group, so Ut's scale and zero fold into ``t``);

not 2:4 sparse parts (DeltaZip) and not raw f16 factors (plain low-rank): those batches go to
the Triton path. With ``base`` on at most :data:`FUSE_MAX_ROWS` rows (fused; more rows run
cuBLAS first) and low-rank parts, one launch does everything: apply
blocks start the base GEMV at once while shrink items (t = Vt·x) run beside them, and each
apply block waits for its row's t only after its base GEMV (counters in a small per-stream
scratch, :func:`sync_scratch`; ``DELTAPACK_CUDA_ONEPASS=0`` takes the two launches instead).
Otherwise two launches (shrink for the low-rank parts, then apply), or one without low-rank
parts; with ``base`` the apply launch also computes the base GEMV, or, for tables whose deltas
are one dense 1- or 2-bit part each (BitDelta, RTN q1 / q2: :func:`lean_bits`) with 16-bit
activations, the lean fused GEMV (csrc ``lean_kernel``). Tables of dense 1- and
2-bit parts only (BitDelta, RTN q1 / q2) take a lookup-table kernel instead of the apply from
four row groups on (:func:`use_lut`): a nibble of codes per shared-memory lookup. The apply launch is a
programmatic dependent of the shrink (Hopper): its blocks start while the shrink runs, stage x
and compute the base GEMV, and wait for t only before the low-rank products
(``DELTAPACK_CUDA_PDL=0`` turns this off). A build
failure is logged once and leaves :func:`available` False (the error is kept:
:func:`build_error`).

:func:`preferred` (whether the ``auto`` backend uses this path) reads ``DELTAPACK_CUDA_DECODE``:
on (unset or ``1``) wherever the extension builds, ``0`` off. The first use on a machine
builds it (about 2.5 min on the H100 box; cached afterwards).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from pathlib import Path
from types import ModuleType

import torch

from .packed import (
    A_BITS,
    A_IDX,
    A_ISTRIDE,
    B_BITS,
    F_KIND,
    F_PERM,
    F_RANK,
    F_ROFF,
    F_S,
    KIND_DENSE,
    KIND_LOWRANK,
    KIND_SPARSE24,
    NF,
    DeltaTable,
    DensePart,
    LowRankPart,
    Operand,
    RowGroups,
)

log = logging.getLogger(__name__)

MAX_ROWS = 64
# Beyond MAX_ROWS rows, batches whose row groups hold at most this many rows (many distinct
# deltas: gather style, or short segments) are still served one group per row. Each row then
# reads its delta once, as the Triton decode path would (triton.DECODE_MAX_ROWS), only faster.
PER_ROW_MAX_LEN = 16
# Rows up to which ``base`` is fused into the delta launch (every fused block reads its row's
# base rows again; H100, bench/results/kernels_h100_s5/call1: fused 46.7 vs 56.5 µs unfused at
# B = 1, 94.4 vs 80.9 at B = D = 4, 297 vs 190 at B = D = 16). DELTAPACK_CUDA_FUSE_MAX_ROWS overrides.
FUSE_MAX_ROWS = 2
MAX_PARTS = 16  # parts per slot (csrc kMaxParts)
BITS = (1, 2, 3, 4, 8)
APPLY_WARPS = 8  # csrc kApplyWarps: an apply block holds APPLY_WARPS × rows_per_warp outputs
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Compiled units (nvcc builds them in parallel; the launchers' specializations are spread over the
# inst_* units, see csrc/delta_decode.cuh) and the header they share.
SOURCES = (
    "delta_decode.cu",
    "inst_apply_bf16.cu",
    "inst_apply_f16.cu",
    "inst_apply_f32.cu",
    "inst_onepass_bf16.cu",
    "inst_onepass_f16.cu",
    "inst_onepass_f32.cu",
    "inst_small.cu",
)
HEADERS = ("delta_decode.cuh",)
CFLAGS = ("-O3", "-lineinfo")
ENV_DECODE = "DELTAPACK_CUDA_DECODE"
ENV_ROWS_PER_WARP = "DELTAPACK_CUDA_ROWS_PER_WARP"  # 1, 2 or 4: overrides the heuristic (benchmarks)
ENV_SHRINK_ROWS = "DELTAPACK_CUDA_SHRINK_ROWS"  # rank rows per shrink block (benchmarks)
ENV_PDL = "DELTAPACK_CUDA_PDL"  # 0: launch apply after the shrink completes (no programmatic dependent launch)
ENV_ONEPASS = "DELTAPACK_CUDA_ONEPASS"  # 0: fused low-rank batches take the two launches (benchmarks)
ENV_CONCURRENT = "DELTAPACK_CUDA_CONCURRENT"  # 1: fused low-rank batches run the delta beside cuBLAS on a side stream (concurrent())
ENV_ONEPASS_A_BLOCKS = "DELTAPACK_CUDA_ONEPASS_A_BLOCKS"  # one pass: blocks that only run shrink items (default: one per SM at most)
# one pass: 1 = apply blocks prefetch their base rows into L2 at start (off: the shrink items' loads then
# do not queue behind 32 MB of prefetch; H100, bench/results/kernels_h100_s5/call5: 4-8 % faster off)
ENV_ONEPASS_PREFETCH = "DELTAPACK_CUDA_ONEPASS_PREFETCH"
ENV_ONEPASS_MIN_BLOCKS = "DELTAPACK_CUDA_ONEPASS_MIN_BLOCKS"  # one pass: 2 (default, at most 128 registers) or 3 blocks per SM (80)
SHRINK_ROWS = 8
ENV_FUSE_MAX_ROWS = "DELTAPACK_CUDA_FUSE_MAX_ROWS"
ENV_SEGMENTS = "DELTAPACK_CUDA_SEGMENTS"  # 0: segment batches (max_len > 1) go to the Triton path
ENV_APPLY_MIN_BLOCKS = "DELTAPACK_CUDA_APPLY_MIN_BLOCKS"  # apply: 3 blocks per SM (at most 80 registers); else unfused 1 (no bound), fused 2 (benchmarks)
ENV_SHRINK_WARPS = "DELTAPACK_CUDA_SHRINK_WARPS"  # warps per shrink block, 1-8 (benchmarks; default: shrink_warps())
ENV_APPLY_SUBTILES = "DELTAPACK_CUDA_APPLY_SUBTILES"  # unfused apply: sub-tiles per block (benchmarks; default: apply_subtiles())
ENV_LUT = "DELTAPACK_CUDA_LUT"  # 0: never the lookup-table kernel; 1: wherever the table allows it (tests); unset: use_lut()
# 1: the lookup-table kernel loads a row's next words before looking up the current ones (two register
# buffers). Off by default: slower on the H100 (BitDelta B = D = 32, 4096²: 88 vs 68 µs; ncu: 30 vs 40 %
# occupancy, a 64-byte stack frame; bench/results/kernels_h100_s7/call2)
ENV_LUT_PREFETCH = "DELTAPACK_CUDA_LUT_PREFETCH"
# 1: the lookup-table kernel copies each warp's rows of codes through shared memory with coalesced
# async copies (csrc lut_part_staged) instead of one uncoalesced 16-byte load per row; 0: off.
# Unset: off. Slower on the H100 (the staging's 32 KB per block drop occupancy from 43 to 30 %;
# decode step 1571 against 1395 µs, bench/results/kernels_h100_s12/call2). sm_80 or newer only.
ENV_LUT_STAGE = "DELTAPACK_CUDA_LUT_STAGE"
LUT_BITS = (1, 2)  # code widths of the lookup-table kernel's dense parts
ENV_LEAN = "DELTAPACK_CUDA_LEAN"  # 0: the lean fused GEMV and the lean base GEMV off (benchmarks: session 9's fused paths); see lean_on()
LEAN_DTYPES = (torch.float16, torch.bfloat16)
LUT_THREADS = 256  # csrc kLutThreads: outputs per lookup-table block
LUT_MIN_GROUPS = 4  # use_lut(): fewer row groups take the warp-per-row apply
TRACE_SLOTS = 8  # csrc kTrSlots: start, claims done, shrink items run, base GEMV done, t waited, end, t-independent operands staged
# The table's layout as the kernel reads it (csrc/delta_decode.cuh struct Fields, in this order;
# each operand's 8 fields follow A_BITS / B_BITS in packed.py's order).
FIELDS = (NF, F_KIND, F_RANK, F_ROFF, F_PERM, F_S, A_BITS, B_BITS, KIND_LOWRANK, KIND_DENSE, A_IDX, A_ISTRIDE, KIND_SPARSE24)

_lock = threading.Lock()
_sync: dict[tuple[int, int], torch.Tensor] = {}
_tried = False
_module: ModuleType | None = None
_error: str | None = None


def csrc_dir() -> Path | None:
    """The folder holding csrc/*.cu: ``$DELTAPACK_CSRC``, the source checkout's ``csrc/`` (next to
    ``python/``), or the wheel's (``site-packages/csrc/``, see pyproject.toml's maturin include)."""
    here = Path(__file__).resolve()
    cands = [Path(p) for p in [os.environ.get("DELTAPACK_CSRC")] if p]
    cands += [here.parents[3] / "csrc", here.parents[2] / "csrc"]
    for d in cands:
        if all((d / s).is_file() for s in SOURCES + HEADERS):
            return d
    return None


def _archs() -> str:
    env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        return env
    caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    return ";".join(f"{a}.{b}" for a, b in sorted(caps))


def build_dir(sources: list[Path]) -> Path:
    h = hashlib.sha256()
    for s in sources:
        h.update(s.name.encode() + b"\0" + s.read_bytes() + b"\0")
    for part in (torch.__version__, str(torch.version.cuda), _archs(), " ".join(CFLAGS)):
        h.update(part.encode() + b"\0")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "deltapack" / "cuda" / h.hexdigest()[:16]


def _build() -> ModuleType:
    from torch.utils import cpp_extension

    src = csrc_dir()
    if src is None:
        raise FileNotFoundError(f"csrc/{SOURCES[0]} not found (looked next to the checkout's python/ and in site-packages; set DELTAPACK_CSRC)")
    sources = [src / s for s in SOURCES]
    bdir = build_dir(sources + [src / h for h in HEADERS])
    bdir.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name="deltapack_cuda",
        sources=[str(s) for s in sources],
        build_directory=str(bdir),
        extra_cuda_cflags=list(CFLAGS),
        verbose=os.environ.get("DELTAPACK_CUDA_VERBOSE") == "1",
    )


def load() -> ModuleType | None:
    """The built extension module, building it on the first call; None where it cannot be had
    (no GPU, no nvcc, or a failed build: :func:`build_error` says why)."""
    global _tried, _module, _error
    if _tried:
        return _module
    with _lock:
        if _tried:
            return _module
        if not torch.cuda.is_available():
            _error = "no CUDA device"
        else:
            from torch.utils import cpp_extension

            if cpp_extension.CUDA_HOME is None:
                _error = "nvcc not found (CUDA_HOME unset and no nvcc on PATH)"
                log.warning("deltapack: CUDA decode kernel unavailable (%s); using the Triton kernels", _error)
            else:
                try:
                    _module = _build()
                except Exception as e:  # noqa: BLE001 - any build failure falls back to Triton
                    _error = f"{type(e).__name__}: {e}"
                    log.warning("deltapack: building the CUDA decode kernel failed; using the Triton kernels. %s", _error)
        _tried = True
    return _module


def available() -> bool:
    return load() is not None


def build_error() -> str | None:
    """Why :func:`available` is False (None before the first try and after a good build)."""
    return _error


def preferred() -> bool:
    """Whether the ``auto`` backend should try this path: on by default where the extension
    builds (H100: the decode step with one Delta-CoMe delta takes 776 µs against 2361 µs on the
    Triton path, bench/results/kernels_h100_s5/ and _s3/); ``DELTAPACK_CUDA_DECODE=0`` turns it off."""
    if os.environ.get(ENV_DECODE, "1").strip() == "0":
        return False
    return available()


def _grids_ok(o: Operand, device: torch.device) -> bool:
    """f16 scales and u8 or constant zeros on ``device``."""
    return (
        o.scales is not None
        and o.scales.dtype == torch.float16
        and o.scales.device == device
        and (o.zeros is None or (o.zeros.dtype == torch.uint8 and o.zeros.device == device))
    )


def _words_ok(o: Operand, device: torch.device, n: int, along: int) -> bool:
    """int32 code words on ``device`` holding rows of ``n`` codes, :func:`_grids_ok` scales and
    zeros, and scale groups (along a row of ``along`` codes) that hold whole 32-code chunks."""
    g = int(o.group)
    return o.codes.dtype == torch.int32 and o.codes.device == device and o.stride * 32 >= n * o.bits and _grids_ok(o, device) and g > 0 and (g % 32 == 0 or g >= along)


def _operand_ok(o: Operand, device: torch.device, along: int) -> bool:
    """A packed operand the kernels decode: 1/2/3/4/8-bit codes (:func:`_words_ok`), not 2:4."""
    return not o.sparse24 and o.bits in BITS and _words_ok(o, device, o.cols, along)


def _part_supported(p, out_f: int, in_f: int, device: torch.device) -> bool:
    if isinstance(p, DensePart):
        return (p.w.rows, p.w.cols) == (out_f, in_f) and _operand_ok(p.w, device, in_f)
    if not isinstance(p, LowRankPart):
        return False
    vt, ut, u = p.vt, p.ut, p.u_codes
    ut_group = int(ut.group)
    return (
        (vt.rows, vt.cols, ut.rows, ut.cols) == (p.rank, in_f, p.rank, out_f)
        and _operand_ok(vt, device, in_f)
        and ut.bits in BITS
        and _grids_ok(ut, device)
        # an apply block's outputs (at most 32, aligned) share one scale group of Ut
        and (ut_group % 32 == 0 or ut_group >= out_f)
        and u is not None
        and u.dtype == torch.int32
        and u.device == device
        and u.shape[0] == out_f
        and u.shape[1] * 32 >= p.rank * ut.bits
        and (p.s is None or (p.s.dtype == torch.float16 and p.s.device == device))
        and (p.perm is None or (p.perm.dtype == torch.int32 and p.perm.device == device and p.perm.numel() == in_f))
    )


def _table_layout_ok(tab: DeltaTable) -> bool:
    """The descriptor table as the kernels index it: contiguous int64 [slots, parts, NF], at
    most :data:`MAX_PARTS` parts per slot."""
    t = tab.table
    return t.dim() == 3 and t.shape[-1] == NF and t.dtype == torch.int64 and t.is_contiguous() and tab.max_parts <= MAX_PARTS


def table_supported(tab: DeltaTable) -> bool:
    """Every part of every delta in the kernels' scope (see the module doc), at most
    :data:`MAX_PARTS` parts per slot, on the table's device. Read from the host-side parts (no
    device sync) and cached on the table."""
    ok = getattr(tab, "_cuda_decode_ok", None)
    if ok is None:
        ok = _table_layout_ok(tab) and all(_part_supported(p, tab.out_features, tab.in_features, tab.table.device) for d in tab.deltas for p in d.parts)
        object.__setattr__(tab, "_cuda_decode_ok", bool(ok))
    return ok


def _shape_info(tab: DeltaTable) -> tuple[int, bool, int]:
    """(wlen: the largest Σ over a slot's low-rank parts of the rank rounded up to 32 — the
    apply kernel's shared buffer of folded activations; whether some slot has a dense part;
    u_words: the largest Σ over a slot's low-rank parts of the words of a rank-major Ut row —
    an apply block caches its rows of Ut in shared memory when they fit)."""
    info = getattr(tab, "_cuda_shape_info", None)
    if info is None:
        lowrank = [[p for p in d.parts if isinstance(p, LowRankPart)] for d in tab.deltas]
        wlen = max((sum(-(-p.rank // 32) * 32 for p in ps) for ps in lowrank), default=0)
        u_words = max((sum(p.u_stride for p in ps) for ps in lowrank), default=0)
        dense = any(isinstance(p, DensePart) for d in tab.deltas for p in d.parts)
        info = (wlen, dense, u_words)
        object.__setattr__(tab, "_cuda_shape_info", info)
    return info


def segments_per_row() -> bool:
    return os.environ.get(ENV_SEGMENTS, "1").strip() != "0"


def as_per_row(groups: RowGroups, m: int) -> RowGroups:
    """The same batch with one group per row (the slot of the row's segment, −1 for rows in no
    group), made on the device without a host sync and kept on ``groups`` for the next layer."""
    if groups.max_len <= 1 and groups.identity:
        return groups
    cached = getattr(groups, "_cuda_per_row", None)
    if cached is not None and cached[0] == m:
        return cached[1]
    dev = groups.slot.device
    pos = torch.arange(m, device=dev, dtype=torch.int32)
    g = (torch.searchsorted(groups.start, pos, right=True) - 1).clamp(min=0)
    inside = (pos >= groups.start[g]) & (pos < groups.start[g] + groups.length[g]) if groups.n_groups else torch.zeros_like(pos, dtype=torch.bool)
    slots = torch.where(inside, groups.slot[g], -1) if groups.n_groups else torch.full_like(pos, -1)
    row_slot = torch.empty_like(slots).scatter_(0, groups.row_idx.long(), slots)
    out = RowGroups.per_row(row_slot)
    object.__setattr__(groups, "_cuda_per_row", (m, out))
    return out


def eligible(x: torch.Tensor, tab: DeltaTable, groups: RowGroups) -> bool:
    """:func:`handles` less the device and build checks: the batch and the table are in the
    kernel's scope. Segment batches are served one group per row (:func:`as_per_row`;
    ``DELTAPACK_CUDA_SEGMENTS=0``: only gather batches) when their layout is known
    (``RowGroups.contiguous_groups``) and their groups are too short for the Triton prefill
    path. Batches of up to :data:`MAX_ROWS` rows, or of any size whose groups hold at most
    :data:`PER_ROW_MAX_LEN` rows."""
    return (
        (groups.max_len == 1 or (segments_per_row() and groups.row_idx.numel() == x.shape[0] and groups.contiguous_groups and not _prefill(groups)))
        and x.dim() == 2
        and (x.shape[0] <= MAX_ROWS or groups.max_len <= PER_ROW_MAX_LEN)
        and x.dtype in DTYPES
        and x.shape[1] == tab.in_features
        and x.stride(1) == 1
        and (table_supported(tab) or lut_table(tab))
    )


def _prefill(groups: RowGroups) -> bool:
    """Segment groups long enough for the Triton path's dequantize + cuBLAS prefill."""
    from .triton import dequant_min_rows

    d = dequant_min_rows(None)
    return groups.host_segments is not None and 0 < d <= groups.max_len


def handles(x: torch.Tensor, tab: DeltaTable, groups: RowGroups) -> bool:
    """Whether these kernels may serve the batch: a CUDA ``x`` of at most :data:`MAX_ROWS` rows
    (or with short groups), in gather mode (``groups.max_len == 1``) or as segments (served per
    row), a table in their scope (:func:`table_supported`, or :func:`lut_table` for the
    lookup-table kernel alone), and a built extension. A table only the lookup-table kernel
    reads (2:4 parts) still goes to Triton when :func:`use_lut` declines the batch."""
    return x.is_cuda and tab.table.device == x.device and eligible(x, tab, groups) and available()


@functools.lru_cache(maxsize=None)
def _index(device: torch.device) -> int:
    """The CUDA device ordinal of ``device`` (the current device for a bare ``cuda``)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def _stream_key(device: torch.device) -> tuple[int, int]:
    """(device ordinal, its current stream's handle): per-stream caches are keyed by it."""
    idx = _index(device)
    return idx, torch.cuda.current_stream(idx).cuda_stream


def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def rows_per_warp(x: torch.Tensor, n_groups: int, n_out: int, fused_dense: bool = False, lean: bool = False) -> int:
    """Outputs per warp of the apply launch: 4 (activations read once for 4 rows) while that
    still gives a block per SM, else 2, else 1 (H100: bench/results/kernels_h100_s4/).
    ``fused_dense`` (the base GEMV fused, no low-rank part): 2 at every width. On the H100 at one
    row that was the fastest or within 3 % of it on all five Llama shapes, for the base alone and
    with BitDelta folded in (11008×4096: 57.6 µs against 66.7 at 4 outputs per warp;
    bench/results/kernels_h100_s9/call4). ``lean`` (the lean fused GEMV): 1, its fastest on
    every shape (bench/results/kernels_h100_s10/call1: the lab's register design)."""
    env = os.environ.get(ENV_ROWS_PER_WARP)
    if env:
        return int(env)
    if lean:
        return 1
    if fused_dense:
        return 2
    target = _sm_count(_index(x.device))
    for nr in (4, 2):
        if n_groups * -(-n_out // (APPLY_WARPS * nr)) >= target:
            return nr
    return 1


def fuse_max_rows() -> int:
    env = os.environ.get(ENV_FUSE_MAX_ROWS)
    return min(int(env) if env else FUSE_MAX_ROWS, MAX_ROWS)


def _s24_lut_ok(o: Operand, device: torch.device, in_f: int) -> bool:
    """A 2:4 operand the lookup-table kernel reads: 2-bit kept values with a constant zero
    (DeltaZip's symmetric s24q2), int32 code and position words on ``device``, f16 scales whose
    groups (of kept values) hold whole 32-value chunks or a whole row."""
    kc = in_f // 2
    idx = o.indices
    return (
        o.sparse24
        and o.bits == 2
        and in_f % 4 == 0
        and o.zeros is None
        and _words_ok(o, device, kc, kc)
        and idx is not None
        and idx.dtype == torch.int32
        and idx.device == device
        and idx.dim() == 2
        and idx.shape[1] * 32 >= kc * 2
        and idx.stride(1) == 1
    )


def lut_table(tab: DeltaTable) -> bool:
    """Whether the lookup-table kernel can serve ``tab``: no low-rank part, and every part of
    every delta dense with 1- or 2-bit codes (BitDelta, RTN q1 / q2) or 2:4 with 2-bit kept
    values and a constant zero (DeltaZip s24q2), on the table's device (cached on the table)."""
    ok = getattr(tab, "_cuda_lut_ok", None)
    if ok is None:
        dev, in_f = tab.table.device, tab.in_features
        ok = _table_layout_ok(tab) and not tab.has_lowrank and all(
            isinstance(p, DensePart)
            and (_s24_lut_ok(p.w, dev, in_f) if p.w.sparse24 else (p.w.bits in LUT_BITS and _part_supported(p, tab.out_features, in_f, dev)))
            for d in tab.deltas
            for p in d.parts
        )
        object.__setattr__(tab, "_cuda_lut_ok", bool(ok))
    return ok


def lean_bits(tab: DeltaTable) -> int:
    """The code width of the lean fused GEMV's folded parts (csrc ``lean_kernel``), or −1 where it
    cannot serve ``tab``: no low-rank part, at most one part per delta, each dense (not 2:4) with
    1- or 2-bit codes (BitDelta q1, RTN q1 / q2), all of one width; 0 for a table of no parts.
    The kernel folds codes by 8-input vectors: :func:`_part_supported`'s scale groups of whole
    32-code chunks (or a whole row) hold whole vectors. Cached on the table."""
    bits = getattr(tab, "_cuda_lean_bits", None)
    if bits is None:
        dev, in_f = tab.table.device, tab.in_features
        parts = [p for d in tab.deltas for p in d.parts]
        widths = {p.w.bits for p in parts if isinstance(p, DensePart)}
        ok = (
            _table_layout_ok(tab)
            and not tab.has_lowrank
            and all(len(d.parts) <= 1 for d in tab.deltas)
            and all(isinstance(p, DensePart) and not p.w.sparse24 and p.w.bits in LUT_BITS and _part_supported(p, tab.out_features, in_f, dev) for p in parts)
            and len(widths) <= 1
        )
        bits = (widths.pop() if widths else 0) if ok else -1
        object.__setattr__(tab, "_cuda_lean_bits", bits)
    return bits


def lean_on() -> bool:
    """``DELTAPACK_CUDA_LEAN`` (unset or 1: on; 0: off, benchmarks): the lean fused GEMV for
    :func:`lean_bits` tables, and the lean base GEMV inside the fused apply and the one pass of
    tables without dense parts (Delta-CoMe: x kept 16-bit in shared memory)."""
    return os.environ.get(ENV_LEAN, "1").strip() != "0"


def lean(x: torch.Tensor, tab: DeltaTable) -> int:
    """The ``lean`` argument of a fused launch: :func:`lean_bits` for 16-bit activations, −1 (the
    general fused apply) otherwise or with ``DELTAPACK_CUDA_LEAN=0``. The lean kernel keeps x in
    its 16-bit form in shared memory and runs one output per warp with its next loads in flight.
    H100, one row, BitDelta: 24.6 / 49.3 / 51.2 / 60.3 / 61.0 µs on the five Llama shapes against
    the fused apply's 27.7 / 56.9 / 61.2 / 69.4 / 70.6 and cuBLAS's base GEMV alone 23.1-56.7;
    decode step (2 layers) 366 µs against 440 and cuBLAS's base only 342
    (bench/results/kernels_h100_s10/call2, call3)."""
    if x.dtype not in LEAN_DTYPES or not lean_on():
        return -1
    return lean_bits(tab)


def lut_stage(device: torch.device) -> bool:
    """Whether the lookup-table kernel stages its code loads (:data:`ENV_LUT_STAGE`)."""
    # the variable first: off by default, so the per-call path never asks for the capability
    return os.environ.get(ENV_LUT_STAGE, "0").strip() == "1" and torch.cuda.get_device_capability(device)[0] >= 8


def use_lut(tab: DeltaTable, sms: int, n_groups: int, n_out: int) -> bool:
    """Unfused batches of a :func:`lut_table` table take the lookup-table kernel (a nibble of
    codes per shared-memory lookup instead of ~3.5 instructions per code) from
    :data:`LUT_MIN_GROUPS` row groups on, if its grid (one block per :data:`LUT_THREADS` outputs
    and row group) holds at least a block per three SMs. Its time hardly grows with the groups
    while the warp-per-row apply's does: on the H100 (4096 outputs, bench/results/kernels_h100_s8/)
    the apply wins at 2 groups (BitDelta 42 vs 51 µs) and the lookup table from 4 (52 vs 58 µs;
    at 8: 53 vs 85). A table with 2:4 parts, which no other CUDA kernel reads, goes to Triton when
    this declines. ``DELTAPACK_CUDA_LUT``: 0 never, 1 whenever the table allows."""
    if not lut_table(tab):
        return False
    env = os.environ.get(ENV_LUT, "").strip()
    if env:
        return env == "1"
    return n_groups >= LUT_MIN_GROUPS and 3 * n_groups * -(-n_out // LUT_THREADS) >= sms


def apply_subtiles(tab: DeltaTable, sms: int, n_groups: int, n_out: int, nr: int) -> int:
    """Sub-tiles of ``APPLY_WARPS × nr`` outputs per unfused apply block. A block's prologue (its
    table rows, the fold factors of the Ut scale group it covers, t) costs about as much as its
    share of Ut at one sub-tile, so with many row groups (multi-delta batches) a block takes
    several sub-tiles: the grid halves while it still holds two blocks per SM
    (``DELTAPACK_CUDA_APPLY_SUBTILES`` overrides). All sub-tiles of a block lie in one scale
    group of every Ut (``tab.group_n``): the count is capped to keep them there."""
    nb = APPLY_WARPS * nr
    cap = 1
    while cap < 64 and (tab.group_n % (nb * cap * 2) == 0 or tab.group_n >= n_out):
        cap *= 2
    env = os.environ.get(ENV_APPLY_SUBTILES)
    if env:
        return max(1, min(int(env), cap))
    blocks = n_groups * -(-n_out // nb)
    ns = 1
    while ns < min(cap, 8) and -(-blocks // (ns * 2)) >= 2 * sms:
        ns *= 2
    return ns


def apply_min_blocks(nsub: int) -> int:
    """Register bound of the apply launch: 3 blocks per SM (at most 80 registers) for sub-tiled
    (multi-delta) launches, whose blocks are compute- and latency-bound (H100 ncu, B = D = 32:
    25 % occupancy at 107 registers); otherwise none for the unfused apply and 2 blocks per SM
    (at most 128 registers) for the fused one (csrc: its base GEMV wants 16 warps' loads in
    flight per SM)."""
    env = os.environ.get(ENV_APPLY_MIN_BLOCKS)
    if env:
        return int(env)
    return 3 if nsub > 1 else 1


def shrink_warps(k: int) -> int:
    """Warps per shrink block: each block stages x (fp32, twice K floats with the permutation's
    copy) in shared memory, so at a long input two blocks fill an SM; 8 warps then share one
    staged x (H100 ncu, K = 11008: 12 % occupancy with 4; B = D = 32 delta-come: 375 µs
    against 511, and level at K = 4096: bench/results/kernels_h100_s6/call4)."""
    env = os.environ.get(ENV_SHRINK_WARPS)
    if env:
        return int(env)
    return 8 if k >= 8192 else 4


def shrink_rows(n_groups: int = 1) -> int:
    """Rank rows per shrink block (two launches) or item (one pass): SHRINK_ROWS for a few row
    groups (short chains, many blocks), 32 from 8 groups on (each block stages its row's x, so
    fewer, longer blocks pay that less often: H100, bench/results/kernels_h100_s6/call2)."""
    env = os.environ.get(ENV_SHRINK_ROWS)
    if env:
        return int(env)
    return SHRINK_ROWS if n_groups < 8 else 32


def onepass() -> bool:
    return os.environ.get(ENV_ONEPASS, "1").strip() != "0"


def concurrent() -> bool:
    """Whether fused low-rank batches run the delta beside cuBLAS's base GEMV on a side stream
    (:func:`_concurrent`) instead of the one-pass launch (``DELTAPACK_CUDA_CONCURRENT``: 1 on,
    0 / unset off). Off by default: slower on the H100, because a Delta-CoMe delta's own two
    launches (30-69 µs at one row) outlast the GEMV they would hide behind (23-57 µs). Decode
    step 826 against 772 µs; one row at 4096²: 51.6 against 43.1 µs
    (bench/results/kernels_h100_s9/call6)."""
    return os.environ.get(ENV_CONCURRENT, "0").strip() == "1"


_side: dict[tuple[int, int], torch.cuda.Stream] = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """A side stream per (device, current stream), made on first use."""
    key = _stream_key(device)
    s = _side.get(key)
    if s is None:
        s = _side[key] = torch.cuda.Stream(device=key[0])
    return s


def _concurrent(x: torch.Tensor, y: torch.Tensor, tab: DeltaTable, groups: RowGroups, t: torch.Tensor | None, base: torch.Tensor) -> torch.Tensor:
    """``y = x·baseᵀ + Δx`` with the delta's launches (shrink, apply into a zeroed scratch ``d``
    in y's dtype) on a side stream while cuBLAS's GEMV runs on the current one, then ``y += d``.
    The delta's latency chain hides behind the base weight's stream; the price is the scratch,
    one memset and one add (and a second rounding of Δx to y's dtype). Captures into CUDA graphs
    as a fork and a join."""
    cur = torch.cuda.current_stream(x.device)
    side = _side_stream(x.device)
    d = torch.empty_like(y)
    side.wait_stream(cur)
    with torch.cuda.stream(side):
        d.zero_()
        delta_apply(x, d, tab, groups, t=t)
    torch.matmul(x, base.T, out=y)
    cur.wait_stream(side)
    return y.add_(d)


def sync_scratch(device: torch.device) -> torch.Tensor:
    """The one-pass kernel's counters for the current stream of ``device`` (int32, zero between
    calls: the kernel zeroes what it counted). One per stream, so that launches on different
    streams never share counters; made on first use (inside a CUDA graph capture too: the
    tensor is kept, and the zero fill recorded in the graph only resets it again)."""
    key = _stream_key(device)
    buf = _sync.get(key)
    if buf is None:
        buf = _sync[key] = torch.zeros(1 + 2 * MAX_ROWS, dtype=torch.int32, device=torch.device("cuda", key[0]))
    return buf


def delta_apply(
    x: torch.Tensor,
    y: torch.Tensor,
    tab: DeltaTable,
    groups: RowGroups,
    t: torch.Tensor | None = None,
    base: torch.Tensor | None = None,
    *,
    trace: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y[row] += Δ_{slot(row)} · x[row]`` in place; returns ``y``. With ``base`` (the base
    weight [out, in], x's dtype) ``y = x·baseᵀ + Δx`` instead, inside the apply launch when
    every row is its own group (:func:`deltapack.kernels.triton.fusable`), else after a cuBLAS
    GEMM. ``t``: an optional fp32 [M, ≥ tab.max_rank] scratch for the low-rank intermediate.
    Batches outside the kernels' scope (see :func:`handles`; also ``y`` of another dtype or with
    strided features) go to the Triton path. ``trace`` (benchmarks): an int64 CUDA tensor of at
    least :func:`trace_len` elements that a one-pass launch fills with each block's phase times
    (ns of the GPU's global timer; see bench/device/cuda_decode.py)."""
    M, K = x.shape
    N = y.shape[1]
    if K != tab.in_features or N != tab.out_features or y.shape[0] != M:
        raise ValueError(f"x {tuple(x.shape)} / y {tuple(y.shape)} do not match the table's {tab.out_features}×{tab.in_features}")
    if base is not None and (base.shape != (N, K) or base.dtype != x.dtype or base.stride(1) != 1 or base.device != x.device):
        raise ValueError(f"base weight {tuple(base.shape)} {base.dtype} does not match {N}×{K} {x.dtype} with unit stride along the input")
    from .triton import delta_apply as triton_apply

    if not handles(x, tab, groups) or y.dtype != x.dtype or y.device != x.device or y.stride(1) != 1:
        return triton_apply(x, y, tab, groups, t=t, base=base)
    sms = _sm_count(_index(x.device))
    per_row = as_per_row(groups, M)
    warp_ok = table_supported(tab)
    lut = use_lut(tab, sms, per_row.n_groups, N) if lut_table(tab) else False
    if not warp_ok and not lut:  # 2:4 parts, and a batch too small for the lookup-table kernel
        return triton_apply(x, y, tab, groups, t=t, base=base)
    groups = per_row
    fuse = warp_ok and base is not None and groups.n_groups == M and M <= fuse_max_rows()
    if fuse and tab.has_lowrank and concurrent():
        return _concurrent(x, y, tab, per_row, t, base)
    lut = lut and not fuse
    if base is not None and not fuse:
        torch.matmul(x, base.T, out=y)
    if M == 0 or (groups.n_groups == 0 and not fuse):
        return y
    wlen, dense, u_words = _shape_info(tab)
    lean_db = lean(x, tab) if fuse else -1
    nr = rows_per_warp(x, groups.n_groups, N, fused_dense=fuse and not tab.has_lowrank, lean=lean_db >= 0)
    nsub = 1 if fuse else apply_subtiles(tab, sms, groups.n_groups, N, nr)
    if tab.has_lowrank:
        if t is None or t.shape[0] != M or t.shape[1] < tab.max_rank or t.dtype != torch.float32 or t.stride(1) != 1 or t.device != x.device:
            t = torch.empty((M, tab.max_rank), device=x.device, dtype=torch.float32)
        t = t[:, : tab.max_rank]
    else:
        t = x  # never read
    mod = load()
    assert mod is not None
    mod.delta_decode(
        x,
        y,
        t,
        base if fuse else None,
        tab.table,
        tab.max_parts,
        groups.row_idx.contiguous(),
        groups.start.contiguous(),
        groups.slot.contiguous(),
        FIELDS,
        wlen,
        tab.has_lowrank,
        dense,
        nr,
        shrink_rows(groups.n_groups),
        os.environ.get(ENV_PDL, "1").strip() != "0",
        sync_scratch(x.device) if fuse and tab.has_lowrank and onepass() else None,
        int(os.environ.get(ENV_ONEPASS_A_BLOCKS, "0")),
        int(os.environ.get(ENV_ONEPASS_MIN_BLOCKS, "2")),
        trace,
        bool(groups.identity),
        u_words,
        os.environ.get(ENV_ONEPASS_PREFETCH, "0").strip() == "1",
        nsub,
        apply_min_blocks(nsub),
        shrink_warps(K),
        lut,
        os.environ.get(ENV_LUT_PREFETCH, "0").strip() == "1",
        lean_db,
        lean_on(),
        lut and tab.dense_bits != 0 and lut_stage(x.device),  # 2:4-only tables keep the plain kernel's occupancy
    )
    return y


def trace_len(x: torch.Tensor, n_groups: int, n_out: int) -> int:
    """Elements a ``trace`` tensor needs: TRACE_SLOTS per block of the largest one-pass grid."""
    return TRACE_SLOTS * (_sm_count(_index(x.device)) + n_groups * -(-n_out // APPLY_WARPS))
