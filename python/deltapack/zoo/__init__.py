"""A deterministic zoo of real tiny Llama models that the project trains itself.

A base LM pretrained on Python standard-library sources, synthetic number / word / copying text
and worked problems of the tasks, and full-parameter fine-tunes of it on tasks with
exact-match answers (``arith``: GSM8K-like chains of thought; ``code``: predict a program's
output; ``format``: follow an instruction), saved as Hugging Face model directories that ``AutoModelForCausalLM`` and
``AutoTokenizer`` load offline. The ``deltapack demo`` command, the CPU tests and the GPU
quality benchmark build their models here::

    from deltapack.zoo import build_base, build_finetune, evaluate, TASKS, PRESETS
    base_dir = build_base(out_dir, preset="tiny", seed=0)
    ft_dir = build_finetune(base_dir, out_dir, task="arith", preset="tiny", seed=0)
    acc = evaluate(ft_dir, task="arith", n=100)

or ``python -m deltapack.zoo --preset tiny --out DIR --tasks arith,code,format``, or, with a
JSON / markdown report and the fine-tunes built in parallel, ``python bench/zoo/build.py``.

How the zoo is made realistic (zoo version 2)
---------------------------------------------
The first zoo pretrained the base on stdlib code and number facts only and fine-tuned it on
tasks it had never seen, at a high learning rate: the fine-tunes rewrote their weights
(‖ΔW‖/‖W‖ 0.3-0.4 in ``tiny``, 0.15-0.21 in ``gpu``; real 7B fine-tunes: ~0.01-0.05), and no
compressor kept any accuracy at 1 bit. Now the base corpus also holds worked problems of
every task (mostly in other surface forms, a share in the exact format; in ``gpu`` and
``small`` shorter ones than the fine-tunes'), so the base is partly there, and each fine-tune
is short and gentle. See :mod:`.presets` and :mod:`.corpus`.

Measured (2026-11-22)
---------------------
``tiny`` on the dev machine's 2-core CPU (1 training thread): base 26 s (1600 steps of
8 × 128 characters, 23 s in the loop), each fine-tune 5-6 s (300 steps of 32); base + one
fine-tune ~33 s. ``python bench/zoo/build.py --preset tiny`` with all three and n=200 evals:
45 s. Models are 0.11 M params, 448 KB of fp32 safetensors each. Exact match, n=200 held-out
problems, seed 0 (``bench/results/tiny_cpu/zoo_tiny.md``)::

    =========  =======  =======  =======
    model      arith    code     format
    =========  =======  =======  =======
    base       31.5     33.0     0.0
    ft:arith   95.0     5.0      0.0
    ft:code    10.5     100.0    0.0
    ft:format  4.5      4.0      56.5
    =========  =======  =======  =======

‖ΔW‖/‖W_base‖: arith q 0.061, k 0.052, v 0.061, o 0.079, gate 0.087, up 0.086, down 0.094,
embed_tokens 0.023, lm_head 0.21; code about the same; format 0.10-0.12 on the projections
(copying words is the skill the 2-layer base has least of). Every entry of every matrix
changed. Fine-tunes forget the other tasks (ft:arith on code: 5%, the base 33%).

``gpu`` (zoo version 2) on one H100 (2026-11-22, ``bench/results/quality_gpu/zoo_gpu_*.md``):
base 239-249 s (218-220 s in the loop, 55 ms per step of 64 × 512 tokens; loss 9.20 → 0.70),
fine-tunes 25-30 s in the loop each; base + one fine-tune with n=200 evaluations ~5 min.
Exact match, n=200, seed 0 (two builds: arith in one call, code and format in the next on the
same base)::

    =========  =======  =======  =======
    model      arith    code     format
    =========  =======  =======  =======
    base       39.0     13.0     5.0
    ft:arith   98.0     —        —
    ft:code    —        28.0     4.0
    ft:format  —        4.5      96.5
    =========  =======  =======  =======

The code fine-tune is too weak (loss 3.86 → 0.15, not 20 points above its base): it needs more
steps or an easier program task. ‖ΔW‖/‖W_base‖: projections 0.041-0.049 (arith), 0.051-0.066
(code), 0.048-0.054 (format); embed_tokens 0.004-0.010; lm_head 0.026-0.105. The deltas are
far from noise: the top 1% of singular values hold 15-45% of a projection delta's energy
(2-4% for a Gaussian matrix) and 77-91% of lm_head's.

Version 1 measured on one H100 (stdlib-only base, 800 steps at lr
5e-4): ft:arith 98.5, ft:code 35.0, ft:format 99.5, base 0 on each.
"""

from __future__ import annotations

from .build import build_base, build_finetune, read_stamp
from .evaluate import evaluate, generate, next_token_kl, score
from .presets import PRESETS, Preset, get_preset
from .stats import delta_stats
from .tasks import TASKS, Example, Task, extract_answer, is_correct, parse_task_list, split_of

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
    "parse_task_list",
    "split_of",
]
