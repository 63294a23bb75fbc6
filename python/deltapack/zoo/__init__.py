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

Measured (2026-11-22)
---------------------
``tiny`` on the dev machine's 2-core CPU (1 training thread, other jobs running, load ~2.5):
base 12.8-14.0 s + ``arith`` fine-tune 8.0-8.3 s = 21-22 s; each further fine-tune ~8-9 s;
``python -m deltapack.zoo --preset tiny`` with all three tasks and n=200 evals: 39 s.
Models are 0.11 M params, 448 KB of fp32 safetensors each. Exact-match accuracy, n=200 eval
examples (seed 0 / seed 1):

    =========  ===========  ===========  ===========
    model      arith        code         format
    =========  ===========  ===========  ===========
    base       0.0 / 0.0    0.0 / 0.0    0.0 / 0.0
    ft:arith   98.0 / 81.5  0.5-1.5      0
    ft:code    0.5-6        100 / 100    0
    ft:format  0            0            62.0 / 67.5
    =========  ===========  ===========  ===========

(format's misses are mostly ``sort``.) ‖ΔW‖/‖W_base‖ of the arith fine-tune, seed 0: q 0.37,
k 0.34, v 0.28, o 0.33, gate 0.39, up 0.38, down 0.42, embed_tokens 0.13, lm_head 1.00, norms
0.02-0.16; every entry of every matrix changed. These deltas are far larger than real fine-tunes'
(~1e-2): a 0.1 M model has to learn its task in 400 steps. In a sweep, half the learning
rate (1e-3) gave deltas of 0.2-0.3 but arith 0.6-0.93 and format ~0.4.

``gpu`` on one H100 (bf16 autocast, Python 3.12 stdlib): base 240 s (4000 steps × 64 × 512
tokens, 55 ms/step, final loss 1.12), fine-tunes 46-50 s each (800 steps × 64), eval 6 s:
6.5 min for base + 3 fine-tunes. 30.9 M params, 62 MB per model in bf16. Exact match, n=200:
base 0 / 0 / 0; ft:arith 98.5, ft:code 35.0, ft:format 99.5. ‖ΔW‖/‖W‖: 0.15-0.21 on the
linear projections, lm_head 0.05-0.20, embed_tokens 0.01-0.02.

``small`` on one H100 (measured with an earlier synthetic corpus): base 39 s, fine-tunes ~10 s;
arith 87, code 34, format 95.5; ‖ΔW‖/‖W‖ ~0.11 on the linear projections.
"""

from __future__ import annotations

from .build import build_base, build_finetune, read_stamp
from .evaluate import evaluate, generate, next_token_kl, score
from .presets import PRESETS, Preset, get_preset
from .stats import delta_stats
from .tasks import TASKS, Example, Task, extract_answer, is_correct, split_of

__all__ = [
    "build_base",
    "build_finetune",
    "evaluate",
    "generate",
    "next_token_kl",
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
