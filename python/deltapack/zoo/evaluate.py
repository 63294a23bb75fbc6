"""Exact-match evaluation with greedy decoding."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .build import _threads
from .presets import get_preset
from .tasks import Example, get_task, is_correct


def _difficulty_of(model, task: str, preset, difficulty) -> tuple[dict[str, Any], float]:
    if difficulty is not None:
        return dict(difficulty), 0.2 if preset is None else get_preset(preset).eval_frac
    if preset is not None:
        p = get_preset(preset)
        return dict(p.difficulty.get(task, {})), p.eval_frac
    meta = getattr(getattr(model, "config", None), "deltapack_zoo", None) or {}
    return dict(meta.get("difficulty", {}).get(task, {})), float(meta.get("eval_frac", 0.2))


@torch.no_grad()
def generate(model, tok, prompts: list[str], max_new_tokens: int, batch_size: int = 64) -> list[str]:
    """Greedy completions of ``prompts`` (each fed as ``<s> prompt``, left-padded), decoded
    without special tokens and cut at ``</s>``."""
    dev = next(model.parameters()).device
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        chunk = [[tok.bos_token_id] + tok.encode(pr, add_special_tokens=False) for pr in prompts[i : i + batch_size]]
        L = max(map(len, chunk))
        ids = torch.full((len(chunk), L), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), L), dtype=torch.long)
        for r, c in enumerate(chunk):
            ids[r, L - len(c) :] = torch.tensor(c)
            mask[r, L - len(c) :] = 1
        gen = model.generate(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        for row in gen[:, L:].tolist():
            if tok.eos_token_id in row:
                row = row[: row.index(tok.eos_token_id)]
            out.append(tok.decode(row, skip_special_tokens=True))
    return out


def score(completions: list[str], examples: list[Example]) -> float:
    """Exact-match accuracy of ``completions`` against ``examples``' answers."""
    if len(completions) != len(examples):
        raise ValueError("one completion per example")
    if not examples:
        return 0.0
    return sum(is_correct(c, ex.answer) for c, ex in zip(completions, examples)) / len(examples)


def evaluate(
    model_or_dir: Any,
    task: str = "arith",
    n: int = 100,
    seed: int = 1234,
    split: str = "eval",
    batch_size: int = 100,
    *,
    tokenizer: Any = None,
    preset: Any = None,
    difficulty: dict[str, Any] | None = None,
    max_new_tokens: int | None = None,
    device: str | None = None,
    threads: int | None = None,
    return_details: bool = False,
) -> float | tuple[float, list[tuple[Example, str]]]:
    """Exact-match accuracy of greedy decoding on ``n`` examples of ``task``'s ``split``.

    ``model_or_dir``: a model directory (model and tokenizer are loaded from it) or a loaded
    causal LM (then pass ``tokenizer``, or it is looked up from ``model.name_or_path``). The task
    difficulty comes from ``difficulty``, else ``preset``, else the ``deltapack_zoo`` record in
    the model's config (every zoo model has one), else the task's default (tiny). With
    ``return_details`` also returns the (example, completion) pairs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = get_task(task)
    if isinstance(model_or_dir, (str, os.PathLike)):
        path = Path(model_or_dir)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
        if device:
            model.to(device)
        elif torch.cuda.is_available():
            model.to("cuda")
    else:
        model = model_or_dir
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
    diff, eval_frac = _difficulty_of(model, t.name, preset, difficulty)
    examples = t.examples(n, seed=seed, split=split, eval_frac=eval_frac, **diff)
    if max_new_tokens is None:
        max_new_tokens = max(len(tokenizer.encode(ex.target, add_special_tokens=False)) for ex in examples) + 8
    was_training = model.training
    model.eval()
    try:
        with _threads(threads):
            comps = generate(model, tokenizer, [ex.prompt for ex in examples], max_new_tokens, batch_size)
    finally:
        model.train(was_training)
    acc = score(comps, examples)
    return (acc, list(zip(examples, comps))) if return_details else acc


@torch.no_grad()
def next_token_kl(model, ref, seqs: torch.Tensor | list[torch.Tensor], batch_size: int = 16) -> float:
    """Mean KL(ref ‖ model) of the next-token distributions over every token of ``seqs``
    (a [B, L] tensor, or a list of 1-D sequences of any lengths, right-padded into batches
    with an attention mask), token-weighted. Both models run in their own dtype; the KL is
    computed in fp32."""
    dev = next(model.parameters()).device
    tot, n = 0.0, 0
    for i in range(0, len(seqs), batch_size):
        if isinstance(seqs, torch.Tensor):
            x, mask = seqs[i : i + batch_size].to(dev), None
            valid = torch.ones(x.shape, dtype=torch.bool, device=dev)
        else:
            chunk = seqs[i : i + batch_size]
            L = max(len(s) for s in chunk)
            x = torch.zeros((len(chunk), L), dtype=torch.long)
            mask = torch.zeros((len(chunk), L), dtype=torch.long)
            for r, s in enumerate(chunk):
                x[r, : len(s)] = torch.as_tensor(s)
                mask[r, : len(s)] = 1
            x, mask = x.to(dev), mask.to(dev)
            valid = mask.bool()
        lp_ref = torch.log_softmax(ref(input_ids=x, attention_mask=mask).logits.float(), -1)
        lp = torch.log_softmax(model(input_ids=x, attention_mask=mask).logits.float(), -1)
        kl = (lp_ref.exp() * (lp_ref - lp)).sum(-1)
        tot += float(kl[valid].sum())
        n += int(valid.sum())
    return tot / max(n, 1)
