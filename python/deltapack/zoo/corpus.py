"""Base pretraining text, generated offline and deterministically.

Two sources, interleaved document by document:

* Python standard library sources (code, comments, docstrings) under
  ``sysconfig.get_paths()["stdlib"]``: every ``*.py`` outside ``site-packages``, test and idle
  folders, ordered by the SHA-1 of its relative path (a fixed shuffle), tabs expanded, non-ASCII
  dropped, at most ``max_file_chars`` per file, until ``corpus_chars`` are taken. The text differs
  between Python versions, which is why a model's stamp records the corpus hash.
* synthetic text that gives the base number and word sense without the fine-tune formats:
  lines of single arithmetic facts (``"17+5=22"``), lists of the format task's words and their
  capitals, variable assignments. The base never sees ``Q: ... A:``, ``print(...)`` traces,
  ``reverse:/sort:`` instructions or ``####``, so it scores ~0 on every task.
"""

from __future__ import annotations

import hashlib
import random
import re
import sysconfig
from pathlib import Path

from .tasks import WORDS

_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__", "turtledemo"}


_NOT_PRINTABLE = re.compile(r"[^\n -~]+")


def _clean(text: str) -> str:
    text = text.expandtabs(4).replace("\r\n", "\n").replace("\r", "\n")
    return _NOT_PRINTABLE.sub("", text)


def stdlib_docs(corpus_chars: int, max_file_chars: int = 12_000) -> list[str]:
    """Deterministic subset of the stdlib's ``.py`` sources, about ``corpus_chars`` long."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if _SKIP_DIRS.intersection(rel.parts[:-1]):
            continue
        files.append((hashlib.sha1(rel.as_posix().encode()).hexdigest(), p))
    files.sort()
    docs, total = [], 0
    for _, p in files:
        if total >= corpus_chars:
            break
        try:
            text = _clean(p.read_text(encoding="utf-8", errors="ignore"))[:max_file_chars]
        except OSError:
            continue
        text = text[: corpus_chars - total]
        if len(text) < 200:
            continue
        docs.append(text)
        total += len(text)
    return docs


def synthetic_docs(chars: int, seed: int = 0, digits: int = 2) -> list[str]:
    """Arithmetic facts, word lists and assignments in formats unlike the tasks'."""
    rng = random.Random(f"deltapack.zoo:synthetic:{seed}")
    docs, total = [], 0
    hi = 10**digits - 1
    while total < chars:
        kind = rng.randrange(4)
        lines = []
        for _ in range(rng.randint(4, 12)):
            if kind == 0:  # the first operand sometimes one digit longer, as in multi-step sums
                a, b = rng.randint(0, hi if rng.random() < 0.5 else 10 * hi + 9), rng.randint(0, hi)
                op = rng.choice("+-*")
                if op == "+":
                    lines.append(f"{a}+{b}={a + b}")
                elif op == "-":
                    a, b = max(a, b), min(a, b)
                    lines.append(f"{a}-{b}={a - b}")
                else:
                    b = rng.randint(2, 9)
                    lines.append(f"{a}*{b}={a * b}")
            elif kind == 1:
                ws = rng.sample(WORDS, rng.randint(2, 6))
                if rng.random() < 0.5:
                    ws = [w.upper() for w in ws]
                lines.append(" ".join(ws))
            elif kind == 2:
                v = rng.choice("abcdxyz")
                lines.append(f"{v} = {rng.randint(0, hi)}")
            else:  # copying: a list of words and numbers, then the same list again
                items = [rng.choice(WORDS) if rng.random() < 0.6 else str(rng.randint(0, hi)) for _ in range(rng.randint(2, 5))]
                lines.append(" ".join(items) + " | " + " ".join(items))
        doc = "\n".join(lines) + "\n"
        docs.append(doc)
        total += len(doc)
    return docs


def base_corpus(corpus_chars: int, synth_frac: float, digits: int = 2, max_file_chars: int = 12_000) -> list[str]:
    """The base model's documents: stdlib text plus ``synth_frac`` synthetic text (numbers of
    up to ``digits`` digits, the preset's arithmetic range), interleaved deterministically. The
    corpus does not depend on the model seed."""
    real = stdlib_docs(corpus_chars, max_file_chars)
    n_real = sum(map(len, real))
    synth = synthetic_docs(int(n_real * synth_frac / max(1e-9, 1 - synth_frac)), seed=0, digits=digits)
    docs = real + synth
    random.Random("deltapack.zoo:interleave").shuffle(docs)
    return docs


def corpus_hash(docs: list[str]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(d.encode())
        h.update(b"\0")
    return h.hexdigest()
