"""Fine-tuning tasks with exact-match answers: ``arith``, ``code`` and ``format``.

Each task turns a seeded :class:`random.Random` and difficulty knobs into :class:`Example`\\ s:
a prompt, the target completion the model is trained to emit, the final answer, and ``alt``:
the same problem worked out in another surface form. Targets put the final answer after
``####`` (GSM8K style); scoring is exact match on the text after the first ``####`` of the
generated completion, up to the end of that line.

* ``arith`` (GSM8K-like): a chain of ``n_ops`` operations (``min_ops``..``n_ops`` when
  ``min_ops`` is set) on ``digits``-digit numbers, asked as an expression or, with ``words``, as
  a short story; the target works the chain step by step (chain of thought), then answers.
* ``code``: predict what a small Python program prints: ``n_lines`` statements (assignments;
  with ``p_if`` / ``p_loop`` also ``if`` blocks and ``for`` loops); the target traces every
  value, then answers.
* ``format``: follow an instruction on a list of words: ``n_steps`` operations from ``ops``
  (reverse, sort, upper, title, drop the first / last word, commas), named tersely or, with
  ``phrasing="long"``, in one of several English paraphrases; the answer comes directly.

The base model's pretraining text (:mod:`.corpus`) holds ``alt`` renderings of train-split
problems and a share in the exact task format, so the base has the skills but is unreliable at
the fine-tune's format and difficulty: the fine-tune sharpens rather than teaches from scratch.

Splits are a pure function of the problem (:attr:`Example.key`: a SHA-1 bucket of the prompt,
or of the underlying expression for word problems, so no eval problem is ever trained on in
another wording), so the train and eval splits can never share a problem, whatever seeds or
sizes are asked for.

Examples (tiny difficulty)::

    arith   "Q: 7+2-4=? A:"               -> " 7+2=9; 9-4=5. #### 5"
    code    "a=6\\nb=a+3\\nprint(b)\\n"     -> "# a=6, b=9\\n#### 9"
    format  "reverse: sun cat map\\n"      -> "#### map cat sun"

and harder settings (``gpu`` preset)::

    arith   "Q: Ann has 23 pens. She buys 45 more. She sells 17. Then she has 3 times as many.
             How many pens does she have? A:"  -> " 23+45=68; 68-17=51; 51*3=153. #### 153"
    code    "a=7\\nb=a*3\\nfor i in range(2):\\n    a=a+b\\nif a>50:\\n    b=b-4\\nprint(b)\\n"
            -> "# a=7, b=21, a=28, a=49, a>50? no\\n#### 21"
    format  "Instruction: sort the words alphabetically, then write every word in capitals.
             \\nInput: sun cat map\\n"  -> "#### CAT MAP SUN"
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Example:
    prompt: str
    target: str  # completion trained on: chain of thought + "#### answer"
    answer: str  # what exact match compares against
    alt: str = field(default="", repr=False, compare=False)  # the worked problem in another surface form
    problem: str = field(default="", repr=False, compare=False)  # the problem's identity, if not the prompt

    @property
    def key(self) -> str:
        """What the split and de-duplication hash: the underlying problem."""
        return self.problem or self.prompt


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


def split_of(key: str, eval_frac: float = 0.2) -> str:
    """``"eval"`` or ``"train"``: a deterministic hash bucket of a problem's key (its prompt
    unless the task says otherwise, see :attr:`Example.key`)."""
    h = int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "big")
    return "eval" if h < eval_frac * 2**32 else "train"


# ----------------------------------------------------------------------------- arith

def _num(rng: random.Random, digits: int) -> int:
    return rng.randint(0, 10**digits - 1)


PEOPLE = (
    ("Ann", "She", "she"), ("Bob", "He", "he"), ("Cal", "He", "he"), ("Dee", "She", "she"),
    ("Eve", "She", "she"), ("Gus", "He", "he"), ("Ivy", "She", "she"), ("Max", "He", "he"),
    ("Ned", "He", "he"), ("Pam", "She", "she"), ("Sam", "He", "he"), ("Zoe", "She", "she"),
)
ITEMS = ("apples", "beads", "books", "cards", "coins", "eggs", "marbles", "pens", "shells", "stamps")
_STORY = {
    "+": ("{P} buys {b} more.", "{P} finds {b} more.", "{P} gets {b} more."),
    "-": ("{P} gives away {b}.", "{P} loses {b}.", "{P} sells {b}."),
    "*": ("Then {p} has {b} times as many.", "{P} ends up with {b} times as many."),
}


def gen_arith(
    rng: random.Random,
    n_ops: int = 2,
    digits: int = 1,
    ops: str = "+-",
    min_ops: int | None = None,
    words: bool = False,
) -> Example:
    """Left-to-right multi-step arithmetic; intermediate values stay non-negative. ``*``
    multiplies by one digit (2..9); the expression is parenthesised where precedence needs it.
    With ``words`` the prompt is a story (a person, a kind of item, one sentence per step)."""
    k = rng.randint(min_ops or n_ops, n_ops)
    cur = _num(rng, digits)
    expr, steps, prev_op = str(cur), [], None
    if words:
        name, P, p = rng.choice(PEOPLE)
        item = rng.choice(ITEMS)
        story = [f"{name} has {cur} {item}."]
    for _ in range(k):
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
        if words:
            story.append(rng.choice(_STORY[op]).format(P=P, p=p, b=b))
        cur, prev_op = r, op
    ans = str(cur)
    target = " " + "; ".join(steps) + f". #### {ans}"
    if words:
        story.append(f"How many {item} does {p} have?")
        text = " ".join(story)
        alt = f"Problem: {text}\nSolution: {', then '.join(steps)}. The answer is {ans}.\n"
        return Example(f"Q: {text} A:", target, ans, alt, problem=expr)
    alt = f"Compute {expr}: {', then '.join(steps)}, so {expr}={ans}.\n"
    return Example(f"Q: {expr}=? A:", target, ans, alt)


# ----------------------------------------------------------------------------- code

_VARS = "abcdxyz"
_MAX_VALUE = 999


def _operand(rng: random.Random, env: dict[str, int], a: str, ops: str, max_const: int) -> tuple[str, int]:
    """``a <op> b`` for an existing variable ``a``: the source text and its value, kept in
    [0, 999] (an op that would leave the range falls back to ``a-0``)."""
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
        return f"{a}-{bs}", env[a] - b
    if op == "*":
        b = rng.randint(2, 3 if max_const < 10 else 5)
        if env[a] * b > _MAX_VALUE:
            return f"{a}-0", env[a]
        return f"{a}*{b}", env[a] * b
    if op == "+":
        cands = [k for k in sorted(env) if k != a] if use_var else []
        if cands:
            bs = rng.choice(cands)
            b = env[bs]
        else:
            b = rng.randint(0, max_const)
            bs = str(b)
        if env[a] + b > _MAX_VALUE:
            return f"{a}-0", env[a]
        return f"{a}+{bs}", env[a] + b
    raise ValueError(f"unknown op {op!r}")


def gen_code(
    rng: random.Random,
    n_lines: int = 2,
    max_const: int = 9,
    ops: str = "+-",
    p_if: float = 0.0,
    p_loop: float = 0.0,
    max_iter: int = 3,
) -> Example:
    """A program of ``n_lines`` statements, then ``print(v)`` of the last variable written.

    The first statement assigns a constant; each later one is, with probability ``p_loop``, a
    ``for`` loop of 2..``max_iter`` iterations adding a constant or another variable to a
    variable; with ``p_if``, an ``if`` comparing a variable with a constant or another variable
    that guards one assignment; otherwise an assignment (to a new variable while names last)
    that combines a variable with a constant or another variable. Values stay in [0, 999]. The
    target traces every value written (and every condition), then gives the printed value."""
    names = list(rng.sample(_VARS, min(n_lines, len(_VARS))))
    env: dict[str, int] = {}
    stmts: list[tuple[list[str], list[str]]] = []  # (source lines, trace items) per statement
    last = names[0]
    for i in range(n_lines):
        if not env:
            val = rng.randint(0, max_const)
            env[names[0]] = val
            stmts.append(([f"{names[0]}={val}"], [f"{names[0]}={val}"]))
            continue
        fresh = [v for v in names if v not in env]
        r = rng.random()
        if r < p_loop:
            v = rng.choice(sorted(env))
            n_it = rng.randint(2, max_iter)
            others = [k for k in sorted(env) if k != v]
            if others and rng.random() < 0.4:
                bs = rng.choice(others)
                b = env[bs]
            else:
                b = rng.randint(1, max_const)
                bs = str(b)
            if env[v] + n_it * b <= _MAX_VALUE:
                vals = [env[v] + (j + 1) * b for j in range(n_it)]
                env[v] = vals[-1]
                stmts.append(([f"for i in range({n_it}):", f"    {v}={v}+{bs}"], [f"{v}={x}" for x in vals]))
                last = v
                continue
        elif r < p_loop + p_if:
            a = rng.choice(sorted(env))
            others = [k for k in sorted(env) if k != a]
            cmp = rng.choice("<>")
            if others and rng.random() < 0.4:
                cs = rng.choice(others)
                c = env[cs]
            else:  # a constant near the value, so both outcomes are common
                c = max(0, env[a] + rng.randint(-max_const, max_const))
                cs = str(c)
            cond = env[a] < c if cmp == "<" else env[a] > c
            v = rng.choice(sorted(env))
            src, val = _operand(rng, env, v, ops, max_const)
            trace = [f"{a}{cmp}{cs}? {'yes' if cond else 'no'}"]
            if cond:
                env[v] = val
                trace.append(f"{v}={val}")
            stmts.append(([f"if {a}{cmp}{cs}:", f"    {v}={src}"], trace))
            last = v
            continue
        v = fresh[0] if fresh else rng.choice(names)
        src, val = _operand(rng, env, rng.choice(sorted(env)), ops, max_const)
        env[v] = val
        stmts.append(([f"{v}={src}"], [f"{v}={val}"]))
        last = v
    ans = str(env[last])
    prompt = "".join(line + "\n" for lines, _ in stmts for line in lines) + f"print({last})\n"
    target = "# " + ", ".join(t for _, tr in stmts for t in tr) + f"\n#### {ans}"
    # alt: the program annotated in place, each statement's values after its last line
    alt_lines = []
    for lines, tr in stmts:
        alt_lines += lines[:-1] + [f"{lines[-1]}  # {', '.join(tr)}"]
    alt = "\n".join(alt_lines) + f"\nprint({last})  # prints {ans}\n"
    return Example(prompt, target, ans, alt)


# ----------------------------------------------------------------------------- format

WORDS = (
    "ant bag bed box bus cap car cat cow cup day dog ear egg fan fig fox gum hat hen ice ink "
    "jam jar key kid leg lip map mud net nut owl pan pen pig pot rat red rug sea sky sun tap "
    "tea toe top toy van web wig yak zip"
).split()

# op -> (list transform, terse name, English paraphrases)
FORMAT_OPS: dict[str, tuple[Callable[[list[str]], list[str]], str, tuple[str, ...]]] = {
    "reverse": (lambda ws: ws[::-1], "reverse", ("reverse the order of the words", "write the words in reverse order", "list the words backwards")),
    "sort": (sorted, "sort", ("sort the words alphabetically", "put the words in alphabetical order", "order the words from a to z")),
    "upper": (lambda ws: [w.upper() for w in ws], "upper", ("write every word in capitals", "make the words upper case", "capitalise every letter")),
    "title": (lambda ws: [w[:1].upper() + w[1:].lower() for w in ws], "title", ("capitalise the first letter of each word", "start each word with a capital")),
    "drop_first": (lambda ws: ws[1:], "drop first", ("remove the first word", "leave out the first word", "delete the first word")),
    "drop_last": (lambda ws: ws[:-1], "drop last", ("remove the last word", "leave out the last word", "delete the last word")),
    "commas": (lambda ws: ws, "commas", ("separate the words with commas", "put a comma between the words")),
}


def _apply_format(ops: list[str], ws: list[str]) -> tuple[str, list[str]]:
    """The answer of ``ops`` applied in order to ``ws``, and the text after each step."""
    steps, sep = [], " "
    for op in ops:
        ws = FORMAT_OPS[op][0](ws)
        if op == "commas":
            sep = ", "
        steps.append(sep.join(ws))
    return sep.join(ws), steps


def gen_format(
    rng: random.Random,
    n_words: int = 3,
    ops: tuple[str, ...] = ("reverse", "upper", "sort"),
    n_steps: int = 1,
    phrasing: str = "short",
) -> Example:
    """An instruction of ``n_steps`` distinct operations, applied in order to a list of
    distinct words. ``phrasing="short"`` names them tersely (``"sort, upper: ..."``);
    ``"long"`` picks an English paraphrase of each (``"Instruction: ... then ...\\nInput:"``).
    ``commas`` (a separator, not a reordering) only ever comes last."""
    for op in ops:
        if op not in FORMAT_OPS:
            raise ValueError(f"unknown op {op!r}")
    if phrasing not in ("short", "long"):
        raise ValueError(f"phrasing must be 'short' or 'long', not {phrasing!r}")
    reorder = [o for o in ops if o != "commas"]
    if "commas" in ops and (not reorder or rng.random() < (1 / len(ops) if n_steps == 1 else 0.25)):
        chosen = rng.sample(reorder, min(n_steps - 1, len(reorder))) + ["commas"]
    else:
        chosen = rng.sample(reorder, min(n_steps, len(reorder)))
    ws = rng.sample(WORDS, n_words)
    ans, steps = _apply_format(chosen, ws)
    if phrasing == "short":
        prompt = f"{', '.join(FORMAT_OPS[o][1] for o in chosen)}: {' '.join(ws)}\n"
    else:
        phrases = [rng.choice(FORMAT_OPS[o][2]) for o in chosen]
        instr = ", then ".join(phrases)
        prompt = f"Instruction: {instr[:1].upper() + instr[1:]}.\nInput: {' '.join(ws)}\n"
    # alt: every intermediate result, named by a paraphrase (or the op name)
    alt = " ".join(ws) + "".join(f" | {rng.choice(FORMAT_OPS[o][2])}: {s}" for o, s in zip(chosen, steps)) + "\n"
    return Example(prompt, f"#### {ans}", ans, alt)


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
        stream: str = "",
        **difficulty: Any,
    ) -> list[Example]:
        """``n`` examples of ``split`` (``"train"`` or ``"eval"``), deterministic in
        (task, difficulty, seed, split, stream). With ``unique``, no problem repeats until the
        split's problem space runs out (then it cycles through what it found). ``stream``
        names an independent sequence (the base corpus uses its own, so the fine-tune's data
        is not just the pretraining text again)."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
        rng = random.Random(f"deltapack.zoo:{self.name}:{split}:{seed}" + (f":{stream}" if stream else ""))
        out: list[Example] = []
        seen: set[str] = set()
        misses = 0  # consecutive draws that gave nothing new: the split's space is exhausted
        while len(out) < n and misses < 1000 + len(out):
            ex = self.sample(rng, **difficulty)
            if split_of(ex.key, eval_frac) != split or (unique and ex.key in seen):
                misses += 1
                continue
            misses = 0
            if unique:
                seen.add(ex.key)
            out.append(ex)
        if not out:
            raise RuntimeError(f"task {self.name}: no {split} examples found for {difficulty}")
        if len(out) < n:  # the split's problem space is smaller than n: cycle
            out = [out[i % len(out)] for i in range(n)]
        return out


TASKS: dict[str, Task] = {
    "arith": Task("arith", gen_arith, {"n_ops": 2, "digits": 1, "ops": "+-"}),
    "code": Task("code", gen_code, {"n_lines": 2, "max_const": 9, "ops": "+-"}),
    "format": Task("format", gen_format, {"n_words": 3, "ops": ("upper", "title", "reverse")}),
}


def parse_task_list(spec: str) -> list[str]:
    """Task names from a comma-separated command-line value; ValueError names an unknown one."""
    tasks = [t.strip() for t in spec.split(",") if t.strip()]
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r}; choose from {', '.join(TASKS)}")
    return tasks


def get_task(task: str | Task) -> Task:
    if isinstance(task, Task):
        return task
    try:
        return TASKS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}") from None
