"""CUDA decode kernel (csrc/delta_decode.cu) and its loader: built on first use where a GPU and
nvcc exist, with :func:`torch.utils.cpp_extension.load`, into
``~/.cache/deltapack/cuda/<hash of the sources, torch version and GPU archs>``.

Scope: decode batches (at most :data:`MAX_ROWS` rows, one row per group: ``groups.max_len ==
1``) whose deltas are all dense packed parts (BitDelta ``q1``, RTN ``q2``/``q4``/``q8``) with
power-of-two scale groups that hold whole 32-bit words. :func:`handles` says whether a batch is
in scope; everything else goes to the Triton path. A build failure is logged once and leaves
:func:`available` False (the error is kept: :func:`build_error`).

:func:`preferred` (whether the ``auto`` backend uses this path) reads ``DELTAPACK_CUDA_DECODE``:
``1`` on, ``0`` or unset off.
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
    A_CODES,
    A_GROUP,
    A_SCALES,
    A_SROW,
    A_STRIDE,
    A_ZCONST,
    A_ZEROS,
    F_KIND,
    KIND_DENSE,
    NF,
    DeltaTable,
    DensePart,
    RowGroups,
)

log = logging.getLogger(__name__)

MAX_ROWS = 16
BITS = (1, 2, 4, 8)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SOURCES = ("delta_decode.cu",)
CFLAGS = ("-O3", "-lineinfo")
ENV_DECODE = "DELTAPACK_CUDA_DECODE"
ENV_ROWS_PER_WARP = "DELTAPACK_CUDA_ROWS_PER_WARP"  # 1, 2 or 4: overrides the heuristic (benchmarks)
# The table's layout as the kernel reads it (csrc/delta_decode.cu struct Fields, in this order).
FIELDS = (NF, F_KIND, A_BITS, A_CODES, A_STRIDE, A_SCALES, A_SROW, A_GROUP, A_ZEROS, A_ZCONST, KIND_DENSE)

_lock = threading.Lock()
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
        if all((d / s).is_file() for s in SOURCES):
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
    bdir = build_dir(sources)
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
    """Whether the ``auto`` backend should try this path: ``DELTAPACK_CUDA_DECODE=1`` forces it on
    (where it builds), ``0`` or unset leaves it off."""
    if os.environ.get(ENV_DECODE, "0").strip() != "1":
        return False
    return available()


def _part_supported(p, out_f: int, in_f: int, device: torch.device) -> bool:
    if not isinstance(p, DensePart):
        return False
    w = p.w
    if w.sparse24 or w.bits not in BITS or (w.rows, w.cols) != (out_f, in_f):
        return False
    g, cpw = int(w.group), 32 // w.bits
    return (
        w.codes.dtype == torch.int32
        and w.codes.device == device
        and w.stride * cpw >= w.cols
        and w.scales is not None
        and w.scales.dtype == torch.float16
        and w.scales.device == device
        and (w.zeros is None or (w.zeros.dtype == torch.uint8 and w.zeros.device == device))
        and g > 0
        and g & (g - 1) == 0
        and g % cpw == 0
    )


def table_supported(tab: DeltaTable) -> bool:
    """Every part of every delta dense (not 2:4), 1/2/4/8-bit, with fp16 scales, u8 or constant
    zeros and a power-of-two scale group of whole packed words (one scale per word), on the
    table's device. Read from the host-side parts (no device sync) and cached on the table."""
    ok = getattr(tab, "_cuda_decode_ok", None)
    if ok is None:
        t = tab.table
        ok = t.dim() == 3 and t.shape[-1] == NF and t.dtype == torch.int64 and t.is_contiguous()
        ok = ok and all(_part_supported(p, tab.out_features, tab.in_features, t.device) for d in tab.deltas for p in d.parts)
        object.__setattr__(tab, "_cuda_decode_ok", bool(ok))
    return ok


def eligible(x: torch.Tensor, tab: DeltaTable, groups: RowGroups) -> bool:
    """:func:`handles` less the device and build checks: the batch and the table are in the
    kernel's scope."""
    return (
        groups.max_len == 1
        and x.dim() == 2
        and x.shape[0] <= MAX_ROWS
        and x.dtype in DTYPES
        and x.shape[1] == tab.in_features
        and x.stride(1) == 1
        and table_supported(tab)
    )


def handles(x: torch.Tensor, tab: DeltaTable, groups: RowGroups) -> bool:
    """Whether this kernel serves the batch: a CUDA ``x`` of at most 16 rows in gather mode
    (``groups.max_len == 1``), a table of dense 1/2/4/8-bit parts only, and a built extension."""
    return x.is_cuda and tab.table.device == x.device and eligible(x, tab, groups) and available()


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def rows_per_warp(x: torch.Tensor, n_groups: int, n_out: int) -> int:
    """Outputs per warp: 4 (activations reused for 4 rows of W) when that still gives about 32
    warps per SM, else 2, else 1 (more warps in flight for small batches)."""
    env = os.environ.get(ENV_ROWS_PER_WARP)
    if env:
        return int(env)
    idx = x.device.index if x.device.index is not None else torch.cuda.current_device()
    target = 32 * _sm_count(idx)
    for nr in (4, 2):
        if n_groups * -(-n_out // nr) >= target:
            return nr
    return 1


def delta_apply(x: torch.Tensor, y: torch.Tensor, tab: DeltaTable, groups: RowGroups, t: torch.Tensor | None = None) -> torch.Tensor:
    """``y[row] += Δ_{slot(row)} · x[row]`` in place (one launch); returns ``y``. Batches outside
    the kernel's scope (see :func:`handles`; also ``y`` of another dtype or with strided
    features) go to the Triton path. ``t`` is unused (no low-rank parts here)."""
    M, K = x.shape
    N = y.shape[1]
    if K != tab.in_features or N != tab.out_features or y.shape[0] != M:
        raise ValueError(f"x {tuple(x.shape)} / y {tuple(y.shape)} do not match the table's {tab.out_features}×{tab.in_features}")
    if not handles(x, tab, groups) or y.dtype != x.dtype or y.device != x.device or y.stride(1) != 1:
        from .triton import delta_apply as triton_apply

        return triton_apply(x, y, tab, groups, t=t)
    if groups.n_groups == 0 or M == 0:
        return y
    mod = load()
    assert mod is not None
    mod.delta_decode(
        x,
        y,
        tab.table,
        tab.max_parts,
        groups.row_idx.contiguous(),
        groups.start.contiguous(),
        groups.length.contiguous(),
        groups.slot.contiguous(),
        FIELDS,
        rows_per_warp(x, groups.n_groups, N),
    )
    return y
