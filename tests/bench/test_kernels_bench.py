"""bench/kernels.py's reporting (CPU): the summary table, the decode-step ratios and --merge of a
sweep split over several device calls."""

from __future__ import annotations

import json

from bench import kernels


def _run(commit: str, shape: str, with_base: bool) -> dict:
    meta = {"gpu": "NVIDIA H100 80GB HBM3", "commit": commit, "date": "2026-11-23", "torch": "2.11", "triton": "3.6", "dtype": "bfloat16", "backend": "cuda", "copy_GBps": 3000.0}
    rows = [{"shape": shape, "method": "bitdelta@1", "B": 32, "D": 32, "base_ms": 0.02, "ours_ms": 0.06, "delta_ms": 0.04, "floor_ms": 0.03, "torch_deq_ms": 0.6, "dense_ms": 0.12}]
    steps = [{"method": "bitdelta@1", "layers": 2, "B": 1, "D": 1, "fused": True, "ms": 0.4}]
    if with_base:
        steps.insert(0, {"method": "base", "layers": 2, "B": 1, "D": 0, "fused": False, "ms": 0.32})
    return {"meta": meta, "layers": rows, "decode": steps}


def test_summary_ratios(tmp_path):
    r = _run("abc", "4096x4096", True)
    kernels.write_results(tmp_path, r["meta"], r["layers"], r["decode"])
    md = (tmp_path / "kernels_h100.md").read_text()
    # best/floor 2.00, best/base 3.00, torch_deq/best 10.00, dense/best 2.00
    assert "| 4096x4096 | bitdelta@1 | 32 | 32 | 20.0 | 60.0 | – | 40.0 | 30.0 | 2.00 | 3.00 | 10.00 | 2.00 |" in md
    assert "| bitdelta@1 | 2 | 1 | 1 | yes | 400.0 | 1.250 |" in md
    assert (tmp_path / "kernels_h100.csv").read_text().count("\n") == 2


def test_merge(tmp_path):
    paths = []
    for i, (commit, shape) in enumerate((("abc", "4096x4096"), ("abc", "14336x4096"))):
        p = tmp_path / f"run{i}.json"
        p.write_text(json.dumps(_run(commit, shape, with_base=i == 0)))
        paths.append(str(p))
    kernels.main(["--merge", *paths, "--out", str(tmp_path / "all")])
    res = json.loads((tmp_path / "all" / "kernels_h100.json").read_text())
    assert [r["shape"] for r in res["layers"]] == ["4096x4096", "14336x4096"]
    assert res["meta"]["commit"] == "abc" and res["meta"]["runs"] == 2
    md = (tmp_path / "all" / "kernels_h100.md").read_text()
    # the second run's step (same method, layers, B, D, fused) replaces the first's; against the one base-only step
    assert md.count("| bitdelta@1 | 2 | 1 | 1 | yes | 400.0 | 1.250 |") == 1
    assert [st["commit"] for st in res["decode"] if st["D"]] == ["abc"] and len(res["decode"]) == 2
    # a later run re-measuring a row replaces it
    again = _run("def", "4096x4096", with_base=False)
    again["layers"][0]["ours_ms"] = 0.05
    p = tmp_path / "run2.json"
    p.write_text(json.dumps(again))
    kernels.main(["--merge", *paths, str(p), "--out", str(tmp_path / "all")])
    res = json.loads((tmp_path / "all" / "kernels_h100.json").read_text())
    assert [(r["shape"], r["ours_ms"], r["commit"]) for r in res["layers"]] == [("14336x4096", 0.06, "abc"), ("4096x4096", 0.05, "def")]
    assert res["meta"]["commit"] == "abc / def"


def test_fused_base_step_is_reported_not_the_reference(tmp_path):
    """The fused kernel's own base GEMV (D = 0, fused) is listed beside cuBLAS's base-only step;
    ratios stay against cuBLAS, and the goal line adds the fused step against the kernel's own base."""
    r = _run("abc", "4096x4096", True)
    r["decode"].append({"method": "base", "layers": 2, "B": 1, "D": 0, "fused": True, "ms": 0.36})
    kernels.write_results(tmp_path, r["meta"], r["layers"], r["decode"])
    md = (tmp_path / "kernels_h100.md").read_text()
    assert "| base | 2 | 1 | 0 | yes | 360.0 | 1.125 |" in md
    assert "| bitdelta@1 | 2 | 1 | 1 | yes | 400.0 | 1.250 |" in md
    assert "against base only (cuBLAS; goal ≤ 1.15): bitdelta@1 1.25×" in md
    assert "own base GEMV (no delta; the delta's own cost): bitdelta@1 1.11×" in md
