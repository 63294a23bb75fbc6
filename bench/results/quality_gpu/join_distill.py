"""How bench/results/quality_gpu/distill/quality.{csv,json,md,png} (session 6, Delta-CoMe scale
distillation, 2026-11-22) were made (a record; the two H100 calls' archives were unpacked to
/tmp/g1 and /tmp/g2). Every quality.py process of both calls measured one slice of the cells on
the same zoo (call 2 reused call 1's /tmp/zoo); their reference rows (fine-tune, base) must
agree and one copy is kept. The runs with --distill-loss mse (c_mse) are shown as their own
methods ('… + distill (MSE)'), the others use the default loss (KL)."""
import json
import sys
from pathlib import Path

sys.path[:0] = ["/work/main/python", "/work/main"]
from bench import quality  # noqa: E402

RUNS = [("/tmp/g1", ("c1_dc", "c25_dc", "c1_kl", "c25_kl")), ("/tmp/g2", ("c_dc", "c_kl", "c_mse", "c_bd", "af_dc", "af_kl"))]
MSE = {"delta-come-distill": "delta-come-distill-mse", "delta-come-kl-distill": "delta-come-kl-distill-mse"}
for m, new in MSE.items():  # labels for the report only
    quality.ALL_METHODS[new] = (quality.ALL_METHODS[m][0] + " (MSE)", {**quality.ALL_METHODS[m][1], "distill_loss": "mse"})
quality.ALL_METHODS["bitdelta-distill"] = ("bitdelta + distill (KL)", quality.ALL_METHODS["bitdelta-distill"][1])

rows, refs, metas = [], {}, []
for root, names in RUNS:
    for name in names:
        d = json.loads((Path(root) / name / "quality.json").read_text())
        metas.append(d["meta"])
        for r in d["rows"]:
            if r["method"] in ("fine-tune", "base"):
                key = (r["task"], r["method"])
                if key in refs:
                    a = refs[key]
                    assert abs(a["accuracy"] - r["accuracy"]) < 1e-9 and abs(a["kl"] - r["kl"]) < 1e-6, (name, key)
                    continue
                refs[key] = r
            elif name == "c_mse":
                r = {**r, "method": MSE[r["method"]], "label": quality.ALL_METHODS[MSE[r["method"]]][0]}
            rows.append(r)
cells = [(r["task"], r["method"], float(r["bits"])) for r in rows]
assert len(set(cells)) == len(cells), "a cell measured twice"
meta = {**metas[0], "distill_loss": "kl (default; the '(MSE)' rows: --distill-loss mse)", "seconds": sum(m["seconds"] for m in metas),
        "merged_from": [f"{root}/{n}" for root, names in RUNS for n in names],
        "note": "two H100 calls on one machine (call 2 reused call 1's zoo); 10 quality.py processes side by side, joined by bench/results/quality_gpu/join_distill.py"}
out = Path("/work/main/bench/results/quality_gpu/distill")
print(quality.write_results(rows, meta, out))
