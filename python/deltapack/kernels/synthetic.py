"""Random deltas in the exact layouts the compressors write, at a given bits/param budget,
written through :class:`~deltapack.format.DeltaWriter` into a real .dpk: the kernel tests and
``bench/kernels.py`` read them back through the same path a compressed fine-tune takes.

Layouts (python/deltapack/compress): ``delta-come`` (8/3/2-bit Vt and Ut groups of 128 with
u8 zeros, 1-bit groups on the sign grid with the constant zero 0.5, f16 singular values,
act-order permutation per :func:`fit_lowrank_plan`),
``bitdelta`` (``q1``, one f16 scale, constant zero 0.5), ``deltazip`` (``s24q{b}``, a scale
per row, symmetric), ``lowrank`` (raw f16 ``u`` and ``vt``), ``rtn`` (``q{b}`` groups with u8
zeros). Values are scaled so that ``Δ·x`` of a unit-variance ``x`` is O(1).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..compress.plan import DELTA_COME_SCHEDULE, fit_lowrank_plan
from ..format import DeltaFile, DeltaWriter
from ..format import open as open_dpk

METHODS = ("delta-come", "bitdelta", "deltazip", "lowrank", "rtn")


def _grid(rows: int, cols: int, granularity: str, group: int) -> tuple[int, int]:
    return {"tensor": (1, 1), "row": (rows, 1), "group": (rows, -(-cols // group))}[granularity]


def _add_q(w: DeltaWriter, name: str, rows: int, cols: int, bits: int, g: torch.Generator, *, std: float, granularity: str = "group", group: int = 128, stored_zero: bool = True) -> None:
    codes = torch.randint(0, 2**bits, (rows, cols), generator=g, dtype=torch.uint8)
    gr = _grid(rows, cols, granularity, group)
    # scale so that (code − zero) · scale has about ``std`` spread: codes span ~2^bits levels
    scales = (std * (0.5 + torch.rand(gr, generator=g)) * 2.0 / max(1, 2**bits - 1)).to(torch.float16)
    kw: dict[str, Any] = {"granularity": granularity, "group_size": group if granularity == "group" else None}
    if stored_zero:
        zeros = torch.randint(0, 2**bits, gr, generator=g, dtype=torch.uint8)
        w.add_quantized(name, codes, bits, scales, zeros, **kw)
    else:
        w.add_quantized(name, codes, bits, scales, zero_point=0.5 if bits == 1 else 2 ** (bits - 1), **kw)


def lowrank_rank(out: int, inp: int, bits_per_param: float) -> int:
    """Rank of an f16 U·Vt pair within the budget (16 bits per stored value)."""
    return max(1, int(bits_per_param * out * inp // (16 * (out + inp))))


def add_synthetic_delta(w: DeltaWriter, target: str, out: int, inp: int, method: str, bits_per_param: float, g: torch.Generator, *, group: int = 128, granularity: str = "group", act_order: bool | None = None, bits: int | None = None, schedule: list[tuple[int, int | None]] | None = None) -> dict[str, Any]:
    """Write one random delta of ``method`` for a linear ``[out, inp]``; returns its entry.
    ``schedule``: Delta-CoMe's bit groups (default 8:2,3:32,2)."""
    std = 1.0 / math.sqrt(inp)
    entry: dict[str, Any] = {"target": target, "op": "add"}
    if method == "delta-come":
        plan = fit_lowrank_plan(out, inp, bits_per_param, schedule or DELTA_COME_SCHEDULE, group_size=group, act_order=act_order)
        blocks = []
        for i, grp in enumerate(gr for gr in plan.groups if gr.rank):
            r = grp.rank
            zeros = grp.bits != 1  # the compressor's 1-bit groups: sign grid, constant zero 0.5
            _add_q(w, f"{target}.vt{i}", r, inp, grp.bits, g, std=1.0 / math.sqrt(inp), granularity=granularity, group=group, stored_zero=zeros)
            _add_q(w, f"{target}.ut{i}", r, out, grp.bits, g, std=1.0 / math.sqrt(out), granularity=granularity, group=group, stored_zero=zeros)
            s = (torch.rand(r, generator=g) + 0.5) * math.sqrt(out / max(1, plan.rank))
            w.add_raw(f"{target}.s{i}", s.to(torch.float16))
            blocks.append({"ut": f"{target}.ut{i}", "s": f"{target}.s{i}", "vt": f"{target}.vt{i}"})
        entry |= {"form": "low_rank", "blocks": blocks}
        if plan.act_order:
            w.add_raw(f"{target}.perm", torch.randperm(inp, generator=g).to(torch.int32))
            entry["input_perm"] = f"{target}.perm"
    elif method == "lowrank":
        r = lowrank_rank(out, inp, bits_per_param)
        w.add_raw(f"{target}.u", (torch.randn(out, r, generator=g) / math.sqrt(r)).to(torch.float16))
        w.add_raw(f"{target}.vt", (torch.randn(r, inp, generator=g) * std).to(torch.float16))
        entry |= {"form": "low_rank", "blocks": [{"u": f"{target}.u", "vt": f"{target}.vt"}]}
    elif method == "bitdelta":
        _add_q(w, f"{target}.delta", out, inp, 1, g, std=std, granularity="tensor", stored_zero=False)
        entry |= {"form": "dense", "tensor": f"{target}.delta"}
    elif method == "rtn":
        b = bits or max(1, min(8, int(bits_per_param)))
        _add_q(w, f"{target}.delta", out, inp, b, g, std=std, granularity=granularity, group=group)
        entry |= {"form": "dense", "tensor": f"{target}.delta"}
    elif method == "deltazip":
        b = bits or 2
        kc = inp // 2
        codes = torch.randint(0, 2**b, (out, kc), generator=g, dtype=torch.uint8)
        pairs = torch.tensor([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]], dtype=torch.uint8)
        idx = pairs[torch.randint(0, 6, (out, kc // 2), generator=g)].reshape(out, kc)
        scales = (std * (0.5 + torch.rand(out, 1, generator=g)) * 2.0 / (2**b - 1)).to(torch.float16)
        w.add_sparse24(f"{target}.delta", codes, idx, b, scales, shape=(out, inp), zero_point=2 ** (b - 1), granularity="row")
        entry |= {"form": "dense", "tensor": f"{target}.delta"}
    else:
        raise ValueError(f"unknown method {method!r} (one of {METHODS})")
    return entry


def write_synthetic(path: str | Path, layers: list[tuple[str, int, int, str, float]], seed: int = 0, **kw: Any) -> DeltaFile:
    """Write a .dpk with one random delta per ``(target, out, in, method, bits_per_param)``
    and open it."""
    g = torch.Generator().manual_seed(seed)
    with DeltaWriter(path) as w:
        entries = [add_synthetic_delta(w, t, o, i, m, b, g, **kw) for t, o, i, m, b in layers]
        w.finish(method="synthetic", base_name="synthetic-base", finetune_name=f"synthetic-{seed}", deltas=entries)
    return open_dpk(path)
