"""Rate-distortion allocation across matrices: each matrix offers a menu of options (bytes,
squared error); pick one per matrix to minimise total error within a byte budget. Greedy on
each menu's lower convex hull — optimal for convex menus, and the standard approach."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    nbytes: int
    error: float  # squared error this option leaves (e.g. ‖Δ − Δ̂‖², possibly activation-weighted)
    choice: Any  # what the method needs to produce it (bits, rank, plan...)


def _hull(options: list[Option]) -> list[Option]:
    """Options on the lower convex hull of (bytes, error), cheapest first."""
    pts = sorted(options, key=lambda o: (o.nbytes, o.error))
    front: list[Option] = []
    for o in pts:  # drop dominated options (not cheaper and not better)
        if not front or o.error < front[-1].error:
            front.append(o)
    hull: list[Option] = []
    for o in front:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b is above the segment a-o: not on the lower hull
            if (b.error - a.error) * (o.nbytes - a.nbytes) >= (o.error - a.error) * (b.nbytes - a.nbytes):
                hull.pop()
            else:
                break
        hull.append(o)
    return hull


def allocate(menus: dict[str, list[Option]], budget_bytes: float) -> dict[str, Option]:
    """One option per key, total bytes ≤ budget (raises if even the cheapest options don't fit)."""
    hulls = {k: _hull(v) for k, v in menus.items()}
    pick = {k: 0 for k in hulls}
    spent = sum(h[0].nbytes for h in hulls.values())
    if spent > budget_bytes:
        raise ValueError(f"budget of {budget_bytes:.0f} bytes is below the cheapest allocation ({spent} bytes)")
    while True:
        best, best_gain = None, 0.0
        for k, h in hulls.items():
            i = pick[k]
            if i + 1 < len(h):
                dc = h[i + 1].nbytes - h[i].nbytes
                if spent + dc <= budget_bytes:
                    gain = (h[i].error - h[i + 1].error) / max(dc, 1)
                    if gain > best_gain:
                        best, best_gain = k, gain
        if best is None:
            break
        i = pick[best]
        spent += hulls[best][i + 1].nbytes - hulls[best][i].nbytes
        pick[best] = i + 1
    return {k: hulls[k][pick[k]] for k in hulls}
