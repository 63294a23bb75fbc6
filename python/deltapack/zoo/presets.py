"""Size / schedule / difficulty presets of the model zoo: one code path, several scales.

A :class:`Preset` fixes everything that determines the bytes of a built model (architecture,
tokenizer, corpus mix, optimiser schedule, task difficulty, saved dtype), so a directory's
stamp is just the preset plus the seed. Make a variant with :func:`dataclasses.replace`, e.g.
``replace(PRESETS["tiny"], name="tiny-fast", base_steps=4, ft_steps=4)``.

The recipe, at every scale: the base is pretrained on a mix of stdlib code, synthetic number /
word / copying text and worked problems of every task (``task_frac`` of the corpus, mostly in
other surface forms, ``task_exact`` of them in the fine-tunes' exact format), so it has the
skills but is unreliable at the fine-tune's format and difficulty; each fine-tune is short and
gentle (a low ``ft_lr``) — it sharpens, like a real fine-tune of a pretrained LLM, and moves
the linear projections by ‖ΔW‖/‖W‖ ≈ 0.05–0.1 instead of rewriting them.

Presets
-------
``tiny``   CPU demo and tests: 0.11 M params (hidden 64, 2 layers, 4 heads / 2 KV heads,
           MLP 192, char-level vocab of 100), fp32 on disk (448 KB per model). Easy tasks
           (1-digit, 2-op arithmetic; 2-line programs; 3-word lists, upper / title /
           reverse). Base 1600 steps of 8 × 128 characters, fine-tunes 300 steps of 32.
``small``  In between, for a GPU (about a minute and a half on an H100, estimated from the
           ``gpu`` timings): 3.9 M params (hidden 256, 4 layers, 8 / 2 heads, MLP 704), BPE
           vocab 2048; ``gpu``-like tasks, a notch easier.
``gpu``    Quality benchmark: 30.9 M params (hidden 512, 8 layers, 8 heads / 2 KV heads, MLP
           1408, BPE vocab 8192), bf16 on disk. GSM8K-like word problems (2-4 steps on
           2-digit numbers with ``*``), 5-statement programs with ``if`` blocks and ``for``
           loops, two-step instructions in English paraphrases on 5-word lists. Base 4000 steps
           of 64 × 512 tokens (55 ms/step on an H100: 220 s + ~25 s of corpus and tokenizer),
           fine-tunes 600 steps of 64 (25-30 s each; ``bench/zoo/build.py --jobs 3`` runs them
           side by side): ~5 min for base + fine-tunes with evaluation, measured.

Every matrix dimension of ``small`` and ``gpu`` is a multiple of 64 (of 128 for ``gpu``); in
``tiny`` the widths are 32 (k/v outputs), 64 and 192: narrower than a quantizer's usual group
of 128. The measured accuracies and delta sizes are in :mod:`deltapack.zoo`'s docstring.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def _tiny_difficulty() -> dict[str, dict[str, Any]]:
    return {
        "arith": {"n_ops": 2, "digits": 1, "ops": "+-"},
        "code": {"n_lines": 2, "max_const": 9, "ops": "+-"},
        # no sort at this size: the 2-layer model learns to copy words in or against their order
        "format": {"n_words": 3, "ops": ("upper", "title", "reverse")},
    }


@dataclass(frozen=True)
class Preset:
    """Everything that determines a zoo model, except the seed."""

    name: str
    # --- architecture (LlamaConfig) ---
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 192
    max_len: int = 256
    init_std: float = 0.08  # LlamaConfig.initializer_range (~0.6/sqrt(hidden): trained-weight scale)
    # --- tokenizer: "char" (printable ASCII + \n, 100 ids) or a BPE vocabulary size ---
    vocab: str | int = "char"
    # --- base pretraining ---
    corpus_chars: int = 300_000  # characters of Python stdlib source taken (before synthetic/task text)
    max_file_chars: int = 12_000  # at most this much of each stdlib file (spreads the sample)
    synth_frac: float = 0.1  # fraction of the base corpus that is synthetic arithmetic/word/copy text
    task_frac: float = 0.8  # fraction that is worked task problems (train split, mostly other formats)
    task_exact: float = 0.3  # share of those problems in the fine-tune's exact format
    base_steps: int = 1600
    base_batch: int = 8
    base_seq: int = 128
    base_lr: float = 3e-3
    # --- fine-tuning (full parameter) ---
    ft_steps: int = 300
    ft_batch: int = 32
    ft_lr: float = 5e-4
    # per-task overrides of ft_steps / ft_batch / ft_lr (a task that learns slower gets more steps)
    ft_task: dict[str, dict[str, Any]] = field(default_factory=dict)
    # --- shared optimiser settings ---
    warmup: float = 0.05  # fraction of steps with linear warm-up; then cosine to 10% of lr
    weight_decay: float = 0.01  # AdamW decay, matrices only (not norms)
    grad_clip: float = 1.0
    # --- output ---
    dtype: str = "float32"  # saved dtype: "float32" or "bfloat16"
    # --- tasks ---
    difficulty: dict[str, dict[str, Any]] = field(default_factory=_tiny_difficulty)
    # knobs overridden for the base corpus's worked problems (e.g. shorter chains than the
    # fine-tune's: the base has the steps, the fine-tune teaches the longer task)
    pretrain_difficulty: dict[str, dict[str, Any]] = field(default_factory=dict)
    eval_frac: float = 0.2  # share of each task's problem space held out as the eval split

    def pretrain_tasks(self) -> dict[str, dict[str, Any]]:
        """Task -> knobs of the worked problems in the base corpus."""
        return {t: {**knobs, **self.pretrain_difficulty.get(t, {})} for t, knobs in self.difficulty.items()}

    def ft_settings(self, task: str) -> tuple[int, int, float]:
        """(steps, batch, lr) of the fine-tune on ``task``: the preset's, with the task's overrides."""
        o = self.ft_task.get(task, {})
        unknown = set(o) - {"ft_steps", "ft_batch", "ft_lr"}
        if unknown:
            raise ValueError(f"preset {self.name!r}: unknown fine-tune override(s) for {task!r}: {sorted(unknown)}")
        return int(o.get("ft_steps", self.ft_steps)), int(o.get("ft_batch", self.ft_batch)), float(o.get("ft_lr", self.ft_lr))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("difficulty", "pretrain_difficulty"):
            d[key] = {t: {k: list(v) if isinstance(v, tuple) else v for k, v in p.items()} for t, p in getattr(self, key).items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preset":
        d = dict(d)
        for key in ("difficulty", "pretrain_difficulty"):
            d[key] = {t: {k: tuple(v) if isinstance(v, list) else v for k, v in p.items()} for t, p in d.get(key, {}).items()}
        return cls(**d)

    @property
    def n_params(self) -> int:
        """Parameter count of the Llama model this preset builds."""
        v = 100 if self.vocab == "char" else int(self.vocab)
        hd = self.hidden // self.heads
        attn = 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_heads * hd
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attn + mlp + 2 * self.hidden) + 2 * v * self.hidden + self.hidden


PRESETS: dict[str, Preset] = {
    "tiny": Preset(name="tiny"),
    "small": Preset(
        name="small",
        hidden=256,
        layers=4,
        heads=8,
        kv_heads=2,
        intermediate=704,
        init_std=0.04,
        max_len=512,
        vocab=2048,
        corpus_chars=4_000_000,
        synth_frac=0.15,
        task_frac=0.5,
        task_exact=0.1,
        base_steps=1500,
        base_batch=32,
        base_seq=256,
        base_lr=2e-3,
        ft_steps=400,
        ft_batch=32,
        ft_lr=2e-4,
        difficulty={
            "arith": {"n_ops": 3, "min_ops": 2, "digits": 2, "ops": "+-*", "words": True},
            "code": {"n_lines": 4, "max_const": 20, "ops": "+-*", "p_if": 0.2, "p_loop": 0.15},
            "format": {"n_words": 4, "ops": ("reverse", "sort", "upper", "title", "drop_first", "drop_last"), "n_steps": 2, "phrasing": "long"},
        },
        pretrain_difficulty={"arith": {"n_ops": 2, "min_ops": 1}, "code": {"n_lines": 3}, "format": {"n_steps": 1}},
    ),
    "gpu": Preset(
        name="gpu",
        hidden=512,
        layers=8,
        heads=8,
        kv_heads=2,
        intermediate=1408,
        init_std=0.025,
        max_len=1024,
        vocab=8192,
        corpus_chars=40_000_000,  # more than there is: the whole stdlib (~11 M chars on 3.11/3.12)
        max_file_chars=10**9,
        synth_frac=0.15,
        task_frac=0.5,  # with the whole stdlib: ~32 M characters of corpus, ~16 M of worked problems
        task_exact=0.1,
        base_steps=4000,
        base_batch=64,
        base_seq=512,
        base_lr=1e-3,
        ft_steps=600,
        ft_batch=64,
        ft_lr=1.5e-4,
        # code: at 600 steps its loss was still 0.15 per target token and the fine-tune only 15.5
        # points ahead of the base (arithmetic slips inside the traces); 3x the steps
        ft_task={"code": {"ft_steps": 1800}},
        dtype="bfloat16",
        difficulty={
            "arith": {"n_ops": 4, "min_ops": 2, "digits": 2, "ops": "+-*", "words": True},
            "code": {"n_lines": 5, "max_const": 20, "ops": "+-*", "p_if": 0.25, "p_loop": 0.2},
            "format": {"n_words": 5, "ops": ("reverse", "sort", "upper", "title", "drop_first", "drop_last", "commas"), "n_steps": 2, "phrasing": "long"},
        },
        pretrain_difficulty={"arith": {"n_ops": 2, "min_ops": 1}, "code": {"n_lines": 3}, "format": {"n_steps": 1}},
    ),
}


def get_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}") from None
