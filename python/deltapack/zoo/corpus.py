"""Base pretraining text, generated offline and deterministically.

Three sources, interleaved document by document:

* Python standard library sources (code, comments, docstrings) under
  ``sysconfig.get_paths()["stdlib"]``: every ``*.py`` outside ``site-packages``, test and idle
  folders, ordered by the SHA-1 of its relative path (a fixed shuffle), tabs expanded, non-ASCII
  dropped, at most ``max_file_chars`` per file, until ``corpus_chars`` are taken. The text differs
  between Python versions, which is why a model's stamp records the corpus hash.
* synthetic text that gives the base number and word sense: lines of single arithmetic facts
  (``"17+5=22"``), lists of the format task's words and their capitals, variable assignments,
  copies.
* task-like text (``task_frac`` of the corpus, split evenly between the tasks): train-split
  problems of each task at the preset's difficulty, worked out in full, mostly in another
  surface form than the fine-tune's (``Example.alt``: ``"Compute 7+2-4: 7+2=9, then 9-4=5,
  so ..."``; a program annotated with its values; a word list with each intermediate result)
  and a ``task_exact`` share in the fine-tune's own format (``prompt + target``), as a web
  corpus holds some GSM8K-style text. So the base has the skills and has seen the format, but
  is unreliable at it: the fine-tune sharpens what is there (small ‖ΔW‖, as for real
  fine-tunes) rather than teaching a task from scratch. Eval-split problems never appear.
"""

from __future__ import annotations

import hashlib
import random
import re
import sysconfig
from pathlib import Path

from typing import Any

from .tasks import WORDS, get_task

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
        kind = rng.choices(range(4), weights=(3, 2, 1, 4))[0]  # copying weighs most: it grows the attention heads the format task needs
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


def task_docs(chars: int, difficulty: dict[str, dict[str, Any]], exact: float, eval_frac: float = 0.2, seed: int = 0) -> list[str]:
    """About ``chars`` characters of worked train-split problems, the same share for each task
    in ``difficulty`` (task -> knobs): documents of 2..8 problems separated by blank lines,
    each in the task's exact format (``prompt + target``) with probability ``exact``, else its
    ``alt`` form."""
    if not difficulty or chars <= 0:
        return []
    rng = random.Random(f"deltapack.zoo:taskdocs:{seed}")
    docs: list[str] = []
    per_task = chars / len(difficulty)
    for name in sorted(difficulty):
        task = get_task(name)
        knobs = difficulty[name]
        probe = task.examples(64, seed=seed, split="train", eval_frac=eval_frac, unique=False, stream="pretrain-probe", **knobs)
        mean_len = sum(len(e.alt) for e in probe) / len(probe)
        n = int(per_task / max(mean_len, 1.0) * 1.1) + 8
        exs = task.examples(n, seed=seed, split="train", eval_frac=eval_frac, unique=False, stream="pretrain", **knobs)
        total, i = 0, 0
        while total < per_task and i < len(exs):
            k = rng.randint(2, 8)
            parts = [e.prompt + e.target + "\n" if rng.random() < exact else e.alt for e in exs[i : i + k]]
            i += k
            doc = "\n".join(parts)
            docs.append(doc)
            total += len(doc)
    return docs


def base_corpus(
    corpus_chars: int,
    synth_frac: float,
    digits: int = 2,
    max_file_chars: int = 12_000,
    task_frac: float = 0.0,
    task_exact: float = 0.0,
    difficulty: dict[str, dict[str, Any]] | None = None,
    eval_frac: float = 0.2,
) -> list[str]:
    """The base model's documents: stdlib text, ``synth_frac`` synthetic text (numbers of up to
    ``digits`` digits, the preset's arithmetic range) and ``task_frac`` task-like text (see
    :func:`task_docs`; fractions of the whole corpus), interleaved deterministically. The
    corpus does not depend on the model seed."""
    if synth_frac < 0 or task_frac < 0 or synth_frac + task_frac >= 1:
        raise ValueError(f"synth_frac + task_frac must lie in [0, 1), got {synth_frac} + {task_frac}")
    real = stdlib_docs(corpus_chars, max_file_chars)
    n_real = sum(map(len, real))
    total = n_real / (1 - synth_frac - task_frac)
    synth = synthetic_docs(int(total * synth_frac), seed=0, digits=digits)
    tasks = task_docs(int(total * task_frac), difficulty or {}, task_exact, eval_frac) if task_frac else []
    docs = real + synth + tasks
    random.Random("deltapack.zoo:interleave").shuffle(docs)
    return docs


def corpus_hash(docs: list[str]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(d.encode())
        h.update(b"\0")
    return h.hexdigest()
