"""Fine-tuning tasks with exact-match answers: ``arith``, ``code`` and ``format``.

Each task turns a seeded :class:`random.Random` and difficulty knobs into :class:`Example`\\ s:
a prompt, the target completion the model is trained to emit (a short chain of thought, then
``#### <answer>``, GSM8K style), and the final answer. Scoring is exact match on the text after
the first ``####`` of the generated completion, up to the end of that line.

Splits are a pure function of the prompt text (a SHA-1 bucket), so the train and eval splits can
never share a problem, whatever seeds or sizes are asked for.

Examples (tiny difficulty)::

    arith   "Q: 7+2-4=? A:"               -> " 7+2=9; 9-4=5. #### 5"
    code    "a=6\\nb=a+3\\nprint(b)\\n"     -> "# a=6, b=9\\n#### 9"
    format  "reverse: sun cat map\\n"      -> "#### map cat sun"
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Example:
    prompt: str
    target: str  # completion trained on: chain of thought + "#### answer"
    answer: str  # what exact match compares against


def extract_answer(completion: str) -> str | None:
    """The text after the first ``####`` up to the end of its line, stripped; None if absent."""
    i = completion.find("####")
    if i < 0:
        return None
    return completion[i + 4 :].split("\n", 1)[0].strip()


def is_correct(completion: str, answer: str) -> bool:
    """Exact match of the extracted final answer (an absent ``####`` is wrong)."""
    got = extract_answer(completion)
    return got is not None and got == answer.strip()


def split_of(prompt: str, eval_frac: float = 0.2) -> str:
    """``"eval"`` or ``"train"``: a deterministic hash bucket of the prompt."""
    h = int.from_bytes(hashlib.sha1(prompt.encode()).digest()[:4], "big")
    return "eval" if h < eval_frac * 2**32 else "train"


# ----------------------------------------------------------------------------- generators

def _num(rng: random.Random, digits: int) -> int:
    return rng.randint(0, 10**digits - 1)


def gen_arith(rng: random.Random, n_ops: int = 2, digits: int = 1, ops: str = "+-") -> Example:
    """Left-to-right multi-step arithmetic; intermediate values stay non-negative.
    ``*`` multiplies by one digit (2..9); the prompt is parenthesised where precedence needs it."""
    cur = _num(rng, digits)
    expr, steps, prev_op = str(cur), [], None
    for _ in range(n_ops):
        op = rng.choice(ops)
        if op == "+":
            b = _num(rng, digits)
            r = cur + b
        elif op == "-":
            b = rng.randint(0, min(cur, 10**digits - 1))
            r = cur - b
        elif op == "*":
            b = rng.randint(2, 9)
            r = cur * b
            if prev_op in ("+", "-"):
                expr = f"({expr})"
        else:
            raise ValueError(f"unknown op {op!r}")
        steps.append(f"{cur}{op}{b}={r}")
        expr += f"{op}{b}"
        cur, prev_op = r, op
    return Example(f"Q: {expr}=? A:", " " + "; ".join(steps) + f". #### {cur}", str(cur))


_VARS = "abcdxyz"


def gen_code(rng: random.Random, n_lines: int = 2, max_const: int = 9, ops: str = "+-") -> Example:
    """A straight-line program of ``n_lines`` assignments then ``print(v)``. Each assignment
    combines an existing variable with a constant or another variable; values stay in
    [0, 999]. The target traces every assignment, then gives the printed value."""
    names = rng.sample(_VARS, min(n_lines, len(_VARS)))
    env: dict[str, int] = {}
    lines, trace = [], []
    for i in range(n_lines):
        v = names[i] if i < len(names) else rng.choice(names)
        if not env:
            val = rng.randint(0, max_const)
            src = str(val)
        else:
            a = rng.choice(sorted(env))
            op = rng.choice(ops)
            use_var = len(env) > 1 and rng.random() < 0.3
            if op == "-":
                cands = [k for k in sorted(env) if k != a and env[k] <= env[a]] if use_var else []
                if cands:
                    bs = rng.choice(cands)
                    b = env[bs]
                else:
                    b = rng.randint(0, min(env[a], max_const))
                    bs = str(b)
                val = env[a] - b
            elif op == "*":
                b = rng.randint(2, 3 if max_const < 10 else 5)
                bs = str(b)
                val = env[a] * b
                if val > 999:
                    op, val = "-", env[a] - 0
                    b, bs = 0, "0"
            else:  # "+"
                cands = [k for k in sorted(env) if k != a] if use_var else []
                if cands:
                    bs = rng.choice(cands)
                    b = env[bs]
                else:
                    b = rng.randint(0, max_const)
                    bs = str(b)
                val = env[a] + b
                if val > 999:
                    op, val, b, bs = "-", env[a], 0, "0"
            src = f"{a}{op}{bs}"
        env[v] = val
        lines.append(f"{v}={src}")
        trace.append(f"{v}={val}")
    out = lines[-1].split("=", 1)[0]
    prompt = "\n".join(lines) + f"\nprint({out})\n"
    return Example(prompt, "# " + ", ".join(trace) + f"\n#### {env[out]}", str(env[out]))


WORDS = (
    "ant bag bed box bus cap car cat cow cup day dog ear egg fan fig fox gum hat hen ice ink "
    "jam jar key kid leg lip map mud net nut owl pan pen pig pot rat red rug sea sky sun tap "
    "tea toe top toy van web wig yak zip"
).split()


def gen_format(rng: random.Random, n_words: int = 3, ops: tuple[str, ...] = ("reverse", "upper", "sort")) -> Example:
    """An instruction applied to a list of distinct words: ``reverse`` their order, ``upper``
    -case them, or ``sort`` them alphabetically."""
    op = rng.choice(list(ops))
    ws = rng.sample(WORDS, n_words)
    if op == "reverse":
        out = ws[::-1]
    elif op == "upper":
        out = [w.upper() for w in ws]
    elif op == "sort":
        out = sorted(ws)
    else:
        raise ValueError(f"unknown op {op!r}")
    ans = " ".join(out)
    return Example(f"{op}: {' '.join(ws)}\n", f"#### {ans}", ans)


# ----------------------------------------------------------------------------- task objects

@dataclass(frozen=True)
class Task:
    """A named generator plus its default (tiny) difficulty."""

    name: str
    generator: Callable[..., Example]
    defaults: dict[str, Any]

    def sample(self, rng: random.Random, **difficulty: Any) -> Example:
        return self.generator(rng, **{**self.defaults, **difficulty})

    def examples(
        self,
        n: int,
        seed: int = 0,
        split: str = "train",
        eval_frac: float = 0.2,
        unique: bool = True,
        **difficulty: Any,
    ) -> list[Example]:
        """``n`` examples of ``split`` (``"train"`` or ``"eval"``), deterministic in
        (task, difficulty, seed, split). With ``unique``, no prompt repeats until the split's
        problem space runs out (then it cycles through what it found)."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
        rng = random.Random(f"deltapack.zoo:{self.name}:{split}:{seed}")
        out: list[Example] = []
        seen: set[str] = set()
        misses = 0  # consecutive draws that gave nothing new: the split's space is exhausted
        while len(out) < n and misses < 1000 + len(out):
            ex = self.sample(rng, **difficulty)
            if split_of(ex.prompt, eval_frac) != split or (unique and ex.prompt in seen):
                misses += 1
                continue
            misses = 0
            seen.add(ex.prompt)
            out.append(ex)
        if not out:
            raise RuntimeError(f"task {self.name}: no {split} examples found for {difficulty}")
        if len(out) < n:  # the split's problem space is smaller than n: cycle
            out = [out[i % len(out)] for i in range(n)]
        return out


TASKS: dict[str, Task] = {
    "arith": Task("arith", gen_arith, {"n_ops": 2, "digits": 1, "ops": "+-"}),
    "code": Task("code", gen_code, {"n_lines": 2, "max_const": 9, "ops": "+-"}),
    "format": Task("format", gen_format, {"n_words": 3, "ops": ("reverse", "upper", "sort")}),
}


def get_task(task: str | Task) -> Task:
    if isinstance(task, Task):
        return task
    try:
        return TASKS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}") from None
