"""A deterministic zoo of real tiny Llama models that the project trains itself.

A base LM pretrained on Python standard-library sources plus synthetic arithmetic/word text, and
full-parameter fine-tunes of it on tasks with exact-match answers (``arith``, ``code``,
``format``), saved as Hugging Face model directories that ``AutoModelForCausalLM`` and
``AutoTokenizer`` load offline. The ``deltapack demo`` command, the CPU tests and the GPU
quality benchmark build their models here::

    from deltapack.zoo import build_base, build_finetune, evaluate, TASKS, PRESETS
    base_dir = build_base(out_dir, preset="tiny", seed=0)
    ft_dir = build_finetune(base_dir, out_dir, task="arith", preset="tiny", seed=0)
    acc = evaluate(ft_dir, task="arith", n=100)

or ``python -m deltapack.zoo --preset tiny --out DIR --tasks arith,code,format``.

MEASURED_PLACEHOLDER
"""

from __future__ import annotations

from .build import build_base, build_finetune, read_stamp
from .evaluate import evaluate, generate, score
from .presets import PRESETS, Preset, get_preset
from .stats import delta_stats
from .tasks import TASKS, Example, Task, extract_answer, is_correct, split_of

__all__ = [
    "build_base",
    "build_finetune",
    "evaluate",
    "generate",
    "score",
    "delta_stats",
    "read_stamp",
    "TASKS",
    "PRESETS",
    "Preset",
    "Task",
    "Example",
    "get_preset",
    "extract_answer",
    "is_correct",
    "split_of",
]
