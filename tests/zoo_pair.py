"""One real trained tiny base / fine-tune pair per test session (deltapack.zoo, ~30 s on a
CPU), shared by the compression and nn tests."""

from __future__ import annotations

from pathlib import Path

_CACHE: dict[str, tuple[Path, Path]] = {}


def tiny_pair(root: Path) -> tuple[Path, Path]:
    if "pair" not in _CACHE:
        from deltapack.zoo import build_base, build_finetune

        base = build_base(root, "tiny", seed=0, quiet=True)
        ft = build_finetune(base, root, "arith", "tiny", seed=0, quiet=True)
        _CACHE["pair"] = (base, ft)
    return _CACHE["pair"]
