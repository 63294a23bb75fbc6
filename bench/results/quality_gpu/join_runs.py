"""How bench/results/quality.{csv,json,md,png} of 2026-11-22 (second run) were made (a record;
the device outputs lay in /tmp/r/c1 and /tmp/r/c2). Join the side-by-side quality runs of the
two H100 calls into one quality.json per call
(A: code, from call 1's part CSVs at 1 and 0.5 bit + call 2's code runs at 0.25 and 0.125 bit;
B: arith and format, call 2's two method groups). Reference rows (fine-tune, base) are measured
by every run; they must agree, one copy is kept."""
import json, sys
from pathlib import Path
sys.path[:0] = ["/work/main/python", "/work/main"]
from bench.quality import _read_part, write_results, ALL_METHODS, MIN_SHARE

R = Path("/tmp/r")

def load_json(p):
    d = json.loads(Path(p).read_text())
    return d["meta"], d["rows"]

def join(sources, meta, out, derive_skips=None):
    rows, refs = [], {}
    for name, rs in sources:
        for r in rs:
            if r["method"] in ("fine-tune", "base"):
                key = (r["task"], r["method"])
                if key in refs:
                    a, b = refs[key], r
                    assert abs(float(a["accuracy"]) - float(b["accuracy"])) < 1e-9 and abs(float(a["kl"]) - float(b["kl"])) < 1e-6, (name, key, a, b)
                    continue
                refs[key] = r
            rows.append(r)
    cells = {(r["task"], r["method"], float(r["bits"])) for r in rows}
    assert len(cells) == len(rows), "a cell measured twice"
    added = []
    for task, method, bits in derive_skips or []:
        floor = next(float(r["floor"]) for r in rows if r["task"] == task and r["method"] == method and r.get("floor") not in ("", None))
        assert bits < MIN_SHARE * floor and (task, method, bits) not in cells
        added.append({"task": task, "method": method, "label": ALL_METHODS[method][0], "bits": bits, "floor": floor,
                      "skipped": f"a delta for every matrix needs {floor:.3f} bits/param"})
    rows += added
    print(out, len(rows), "rows,", len(added), "skip rows derived from the recorded floors")
    write_results(rows, meta, out)

# A: code
ma = json.loads((R / "c1/a/quality-meta.json").read_text())
m3, r3 = load_json(R / "c2/q/c1/quality.json")
m4, r4 = load_json(R / "c2/q/c2/quality.json")
meta_a = {**ma, "seconds": m3["seconds"],
          "merged_from": ["call 1 (cut off at its 600 s limit): quality-part-code.csv of the two runs side by side, 1 and 0.5 bit",
                          "call 2: the two code runs side by side, 0.25 and 0.125 bit (delta-come-kl, delta-come-auto / delta-come, lowrank)"],
          "note": "code at 1 and 0.5 bit: call 1 (cut off by its 600 s limit; its part CSVs); code at 0.25 and 0.125 bit, arith and format: call 2; the same base and fine-tunes (call 2 reused the zoo of call 1); joined by bench/results/quality_gpu/join_runs.py. bitdelta, bitdelta-distill, deltazip and rtn at 0.25 and 0.125 bit on code: skip rows derived from the floors call 1 recorded (the same rule quality.py applies), not re-run"}
join([("c1a", _read_part(R / "c1/a/quality-part-code.csv")), ("c1b", _read_part(R / "c1/b/quality-part-code.csv")), ("c2c1", r3), ("c2c2", r4)],
     meta_a, R / "A",
     derive_skips=[("code", m, b) for b in (0.25, 0.125) for m in ("bitdelta", "bitdelta-distill", "deltazip", "rtn")])

# B: arith, format
m5, r5 = load_json(R / "c2/q/af1/quality.json")
m6, r6 = load_json(R / "c2/q/af2/quality.json")
meta_b = {**m5, "seconds": max(m5["seconds"], m6["seconds"]),
          "merged_from": ["call 2: arith,format, delta-come-kl / delta-come-auto / delta-come", "call 2: arith,format, bitdelta / bitdelta-distill / deltazip / lowrank / rtn (side by side)"]}
join([("af1", r5), ("af2", r6)], meta_b, R / "B")
