"""One line per measured row of the quality runs under a results folder (every
``<run>/quality*.csv``, partial files of cut runs included), for a device call's log:

    python3 bench/device/quality_summary.py /tmp/cells
"""

import csv
import glob
import sys


def main(root: str) -> None:
    for p in sorted(glob.glob(root + "/*/quality*.csv")):
        for r in csv.DictReader(open(p)):
            def f(k: str, n: int = 4) -> str:
                return f"{float(r[k]):.{n}f}" if r.get(k) not in ("", None) else "-"

            print(p.split("/")[-2], r["task"], r["method"], r["bits"], "acc", f("accuracy"), "kept", f("kept"), "kl", f("kl"), "agree", f("agree", 3),
                  "bpp", f("bits_per_param"), "cs", f("compress_s", 1), "es", f("eval_s", 1), r.get("distill", ""), r.get("skipped", ""), r.get("error", ""))


if __name__ == "__main__":
    main(sys.argv[1])
