"""Pictures of a .dpk: per-layer error of every delta, and singular-value spectra."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .format import DeltaFile
from .nn.delta import LowRankDelta, read_delta


def plot_file(f: DeltaFile, out: str | Path, max_spectra: int = 8) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'deltapack[plot]'") from e
    deltas = [e for e in f.manifest["deltas"] if e.get("op", "add") == "add"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    series: dict[str, list[tuple[int, float]]] = {}
    for e in deltas:
        m = re.search(r"layers\.(\d+)\.(.+?)\.weight$", e["target"])
        err = e.get("stats", {}).get("rel_error")
        if m and err is not None:
            series.setdefault(m.group(2).rsplit(".", 1)[-1], []).append((int(m.group(1)), err))
    for name, pts in sorted(series.items()):
        pts.sort()
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=name)
    ax1.set(xlabel="layer", ylabel="relative error ‖Δ̂−Δ‖/‖Δ‖", title=f"{f.manifest['method']['name']}: error per layer")
    ax1.grid(alpha=0.3)
    if series:
        ax1.legend(fontsize=8)
    picked = [e for e in deltas if ".layers.0." in e["target"]][:max_spectra] or deltas[:max_spectra]
    for e in picked:
        d = read_delta(f, e)
        s = d.s.abs().sort(descending=True).values if isinstance(d, LowRankDelta) else torch.linalg.svdvals(d.dense().float())
        ax2.semilogy(s.cpu().numpy(), label=e["target"].split(".layers.")[-1].removesuffix(".weight"))
    ax2.set(xlabel="index", ylabel="singular value", title="spectra of the stored deltas (layer 0)")
    ax2.grid(alpha=0.3)
    if picked:
        ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)
