"""The multi-delta op as a torch custom op, and the backend switch.

``torch.ops.deltapack.delta_apply_(x, y, table_id, row_idx, start, length, slot, max_len)``
adds ``Δ_{slot} · x`` to the rows of ``y`` in place. It is registered with
``torch.library.custom_op`` and a fake (meta) implementation, so modules calling it work under
``torch.compile`` (the op is opaque to the compiler) and inside CUDA graphs (no host sync, no
allocation that depends on data, on the Triton and CUDA backends).

Backends: ``reference`` (plain PyTorch: dequantize each used delta's factors, then matmul;
any device), ``triton`` (:mod:`.triton`), ``cuda`` (:mod:`.cuda`, a decode kernel for ≤ 16
rows built from csrc/ on first use; other batches go to Triton), ``auto`` (``cuda`` where it
was built and measured faster, else ``triton`` on GPUs, ``reference`` on the CPU). Pick one
with the ``DELTAPACK_BACKEND`` environment variable or the ``backend`` argument of the
modules; an unknown name raises ValueError.
"""

from __future__ import annotations

import itertools
import os
import weakref
from collections.abc import Callable

import torch

from .packed import DeltaTable, RowGroups

BACKENDS = ("auto", "reference", "triton", "cuda")

_TABLES: weakref.WeakValueDictionary[int, DeltaTable] = weakref.WeakValueDictionary()
_ids = itertools.count(1)


def register_table(tab: DeltaTable) -> int:
    """A stable integer handle for ``tab`` (the op's argument); the table stays registered while
    something else holds it."""
    tid = getattr(tab, "_op_id", None)
    if tid is None:
        tid = next(_ids)
        object.__setattr__(tab, "_op_id", tid)
        _TABLES[tid] = tab
    return tid


def backend_name(backend: str | None = None) -> str:
    b = backend or os.environ.get("DELTAPACK_BACKEND", "auto")
    if b not in BACKENDS:
        raise ValueError(f"unknown kernel backend {b!r}; choose one of {BACKENDS} (argument or DELTAPACK_BACKEND)")
    return b


def apply_reference(x: torch.Tensor, y: torch.Tensor, tab: DeltaTable, groups: RowGroups, t: torch.Tensor | None = None) -> torch.Tensor:
    """The plain PyTorch path (dequantize the used deltas' factors, then matmul), in place."""
    starts, lens, slots = groups.start.tolist(), groups.length.tolist(), groups.slot.tolist()
    for s0, n, slot in zip(starts, lens, slots):
        if slot < 0 or n == 0:
            continue
        rows = groups.row_idx[s0 : s0 + n].long()
        d = tab.deltas[slot].forward_reference(x.index_select(0, rows))
        y.index_add_(0, rows, d.to(y.dtype))
    return y


def _triton(x, y, tab, groups, t=None):
    from .triton import delta_apply

    return delta_apply(x, y, tab, groups, t=t)


def _cuda(x, y, tab, groups, t=None):
    from . import cuda

    return cuda.delta_apply(x, y, tab, groups, t=t)  # batches outside its scope go to Triton


def delta_apply_backend(backend: str | None = None, device: torch.device | str | None = None) -> Callable:
    """The function ``(x, y, tab, groups, t=None) -> y`` of a backend (``auto`` resolved for
    ``device``)."""
    b = backend_name(backend)
    if b == "auto":
        dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if dev.type != "cuda":
            return apply_reference
        from . import cuda

        return _cuda if cuda.preferred() else _triton
    return {"reference": apply_reference, "triton": _triton, "cuda": _cuda}[b]


@torch.library.custom_op("deltapack::delta_apply_", mutates_args=("y",))
def delta_apply_op(
    x: torch.Tensor, y: torch.Tensor, table_id: int, row_idx: torch.Tensor, start: torch.Tensor, length: torch.Tensor, slot: torch.Tensor, max_len: int, backend: str,
    layout: int = 0, segments: list[int] | None = None,
) -> None:
    """``layout``: 1 = one group per row (``RowGroups.identity``), 2 = groups one after another
    along ``row_idx`` (segments), 3 = that with ``row_idx`` = 0 .. M − 1; ``segments``: the groups' (start, length, slot) on the host,
    flattened (the prefill path loops over them), or None."""
    tab = _TABLES.get(table_id)
    if tab is None:
        raise RuntimeError(f"delta table {table_id} is no longer registered")
    host = tuple(tuple(segments[i : i + 3]) for i in range(0, len(segments), 3)) if segments else None
    groups = RowGroups(row_idx=row_idx, start=start, length=length, slot=slot, max_len=max_len, identity=layout == 1, contiguous_groups=layout >= 1, host_segments=host, rows_in_order=layout == 3)
    delta_apply_backend(backend, x.device)(x, y, tab, groups)


@delta_apply_op.register_fake
def _(x, y, table_id, row_idx, start, length, slot, max_len, backend, layout=0, segments=None) -> None:
    return None


def delta_apply(x: torch.Tensor, y: torch.Tensor, tab: DeltaTable, groups: RowGroups, backend: str | None = None) -> torch.Tensor:
    """``y[rows] += Δ_{slot} · x[rows]`` through the custom op; ``x`` [M, in], ``y`` [M, out]."""
    layout = 1 if groups.identity else (3 if groups.rows_in_order else 2) if groups.contiguous_groups else 0
    segments = [v for seg in groups.host_segments for v in seg] if groups.host_segments else None
    torch.ops.deltapack.delta_apply_(x, y, register_table(tab), groups.row_idx, groups.start, groups.length, groups.slot, groups.max_len, backend_name(backend), layout, segments)
    return y
