"""bench/zoo/build.py and bench/quality.py end to end on the session's tiny pair (reduced
settings; ~30 s on 2 CPU cores): the report files, rows that make sense, skips with reasons."""

from __future__ import annotations

import csv
import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from bench.quality import BITS, METHODS, main, method_floor  # noqa: E402
from bench.zoo.build import build_zoo, markdown  # noqa: E402


@pytest.fixture(scope="module")
def quality_run(zoo_pair, tmp_path_factory):
    base, _ = zoo_pair
    out = tmp_path_factory.mktemp("quality")
    argv = [
        "--preset", "tiny", "--zoo-dir", str(base.parent), "--tasks", "arith", "--methods", "delta-come,bitdelta,lowrank",
        "--bits", "1,0.25", "--n-eval", "24", "--n-kl", "8", "--calib-samples", "8", "--calib-len", "64",
        "--jobs", "1", "--work", str(out / "work"), "--out", str(out / "res"), "--quiet",
    ]
    assert main(argv) == 0
    return out / "res"


def test_quality_writes_every_report(quality_run):
    assert sorted(p.name for p in quality_run.iterdir()) == ["quality.csv", "quality.json", "quality.md", "quality.png"]
    assert quality_run.joinpath("quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = quality_run.joinpath("quality.md").read_text()
    assert "## arith: fine-tune" in md and "| delta-come 8+3+2 |" in md and "Goals" in md and "commit" in md


def test_quality_rows(quality_run):
    rows = list(csv.DictReader(open(quality_run / "quality.csv")))
    by = {(r["method"], r["bits"]): r for r in rows}
    ft, base = by[("fine-tune", "16.0")], by[("base", "0.0")]
    assert float(ft["kept"]) == 1.0 and float(ft["kl"]) == 0.0 and float(ft["accuracy"]) > float(base["accuracy"])
    assert float(base["kl"]) > 0
    for m in ("delta-come", "lowrank"):
        for b in ("1.0", "0.25"):
            r = by[(m, b)]
            assert not r["skipped"] and float(r["bits_per_param"]) <= float(b) + 1e-9
            assert 0 <= float(r["accuracy"]) <= 1 and 0 <= float(r["agree"]) <= 1
    for m, b in (("delta-come", "1.0"), ("delta-come", "0.25"), ("lowrank", "1.0"), ("bitdelta", "1.0")):
        assert float(by[(m, b)]["kl"]) < float(base["kl"]), (m, b, by[(m, b)]["kl"], base["kl"])  # closer to the fine-tune than the base is
    assert float(by[("delta-come", "1.0")]["kl"]) < float(by[("delta-come", "0.25")]["kl"])
    # BitDelta cannot go below ~1 bit: 0.25 is skipped with the reason, 1.0 runs (a few matrices without delta)
    assert "needs" in by[("bitdelta", "0.25")]["skipped"]
    bd = by[("bitdelta", "1.0")]
    assert not bd["skipped"] and 0.5 <= float(bd["delta_share"]) <= 1.0
    meta = json.loads((quality_run / "quality.json").read_text())["meta"]
    assert meta["preset"] == "tiny" and meta["device_kind"] == ("cuda" if torch.cuda.is_available() else "cpu")  # the default device


def test_merge_refuses_a_task_twice_and_rebuilds_the_report(quality_run, tmp_path):
    j = quality_run / "quality.json"
    with pytest.raises(SystemExit, match="arith"):
        main(["--merge", str(j), str(j), "--out", str(tmp_path / "m1")])
    assert main(["--merge", str(j), "--out", str(tmp_path / "m2")]) == 0
    assert (tmp_path / "m2" / "quality.csv").read_text() == (quality_run / "quality.csv").read_text()


def test_method_floors(zoo_pair):
    base, ft = zoo_pair
    assert method_floor(base, ft, METHODS["delta-come"][1]) == 0.0
    bd = method_floor(base, ft, METHODS["bitdelta"][1])
    rtn = method_floor(base, ft, METHODS["rtn"][1])
    dz = method_floor(base, ft, METHODS["deltazip"][1])
    assert 1.0 < bd < rtn < dz < 3.0, (bd, rtn, dz)
    assert set(BITS) == {1.0, 0.5, 0.25, 0.125}


def test_zoo_report(zoo_pair):
    base, _ = zoo_pair
    rep = build_zoo("tiny", base.parent, ["arith"], n_eval=16, jobs=1)
    assert rep["finetunes"]["arith"]["accuracy"]["arith"] > rep["base"]["accuracy"]["arith"]
    assert set(rep["beats_base"]) == {"arith"}
    assert 0 < rep["finetunes"]["arith"]["delta"]["q_proj"]["rel"] < 0.15
    md = markdown(rep)
    assert "| ft:arith |" in md and "‖ΔW‖" in md


def test_kernel_check_is_none_without_kernels(zoo_pair, tmp_path):
    """On the CPU ``deltapack.load`` builds reference modules, so there is nothing to check;
    on a GPU every quality cell compares the kernels with the reference path first."""
    import deltapack
    from bench.quality import kernel_check
    from deltapack.compress.pipeline import compress

    base, ft = zoo_pair
    compress(base, ft, tmp_path / "d.dpk", method="lowrank", bits_per_param=1.0, progress=False)
    assert kernel_check(deltapack.load(base, tmp_path / "d.dpk")) is None


def test_distill_methods_are_extra_and_reported(tmp_path):
    """delta-come-distill / delta-come-kl-distill run only when named, and the report (tables,
    plot, CSV with the distillation summary) handles their rows."""
    from bench.quality import ALL_METHODS, EXTRA_METHODS, write_results
    from deltapack.compress.pipeline import CompressConfig

    for m in ("delta-come-distill", "delta-come-kl-distill", "delta-come-kl-distill-scales"):
        assert m in EXTRA_METHODS and m not in METHODS and ALL_METHODS[m][1]["distill"] is True
    assert EXTRA_METHODS["delta-come-kl-distill"][1]["sensitivity"] == "kl"
    kw = EXTRA_METHODS["delta-come-kl-distill-scales"][1]
    assert kw["distill_scales"] is True and {k: v for k, v in kw.items() if k != "distill_scales"} == EXTRA_METHODS["delta-come-kl-distill"][1]
    CompressConfig(**kw).validate()
    kc = EXTRA_METHODS["delta-come-kl-distill-codes"][1]
    assert kc["distill_codes"] is True and {k: v for k, v in kc.items() if k != "distill_codes"} == kw
    CompressConfig(**kc).validate()
    rows = [
        {"task": "code", "method": "fine-tune", "label": "fine-tune", "bits": 16.0, "accuracy": 0.6, "kept": 1.0, "kl": 0.0},
        {"task": "code", "method": "base", "label": "base", "bits": 0.0, "accuracy": 0.1, "kept": 1 / 6, "kl": 3.0},
    ]
    for i, m in enumerate(("delta-come", "delta-come-distill", "delta-come-kl", "delta-come-kl-distill")):
        for b in (1.0, 0.25):
            rows.append({"task": "code", "method": m, "label": ALL_METHODS[m][0], "bits": b, "bits_per_param": b, "accuracy": 0.5 + 0.01 * i, "kept": (0.5 + 0.01 * i) / 0.6,
                         "kl": 0.1 * b, "distill": "kl 0.2→0.1 kept, 5.0 s" if m.endswith("distill") else ""})
    meta = {"preset": "gpu", "device": "test", "device_kind": "cuda", "dtype": "bfloat16", "commit": "x", "date": "d", "n_eval": 200, "n_kl": 64,
            "calib_samples": 64, "calib_len": 256, "distill_steps": 200, "distill_loss": "kl"}
    md = write_results(rows, meta, tmp_path)
    assert "| delta-come 8+3+2 + distill |" in md and "| delta-come auto, KL-weighted + distill |" in md and "loss kl" in md
    assert (tmp_path / "quality.png").read_bytes()[:4] == b"\x89PNG"
    got = {(r["method"], r["bits"]): r for r in csv.DictReader(open(tmp_path / "quality.csv"))}
    assert got[("delta-come-kl-distill", "0.25")]["distill"].startswith("kl 0.2→0.1 kept")
