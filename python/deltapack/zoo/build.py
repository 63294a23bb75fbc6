"""Training: the base LM and full-parameter fine-tunes, saved as Hugging Face model directories.

One code path for every preset (see :mod:`.presets`):

* model: ``LlamaForCausalLM(LlamaConfig(...))`` with ``tie_word_embeddings=False`` (lm_head is
  its own matrix) and GQA (``num_key_value_heads < num_attention_heads``) in every preset;
* optimiser: AdamW (betas 0.9/0.95, weight decay on matrices only), linear warm-up then cosine
  decay to 10% of the peak lr, gradient clipping at 1.0; fp32 master weights, bf16 autocast on
  CUDA;
* base: next-token loss on random windows of ``base_seq`` tokens of the packed base corpus
  (``<s> doc </s>`` per document; window offsets from a seeded ``torch.Generator``);
* fine-tune: starts from the *saved* base weights (so ΔW = W_ft − W_base is exact), trains
  every parameter on ``<s> prompt target </s>`` sequences of the task's train split, with the
  loss on the target tokens and the ``</s>`` only (prompt tokens are masked with -100), batches
  in a seeded order, right padding.

Determinism: on CPU, the same preset, seed and thread count give byte-identical safetensors
(tested). A directory holds a stamp, ``zoo.json``, with the preset, seed, corpus and tokenizer
hashes (and for a fine-tune, the base's stamp hash); a build whose stamp matches is skipped.
Builds go to a temporary sibling directory and are renamed into place, so a directory with a
stamp is always complete.

Measured on the 2-core CPU of the dev machine (preset ``tiny``, 2 threads): see
``deltapack.zoo`` for the numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from .corpus import base_corpus, corpus_hash
from .presets import Preset, get_preset
from .tasks import Example, get_task
from .tokenizer import build_tokenizer

ZOO_VERSION = 2  # 2: task-like pretraining text, gentle fine-tunes, harder tasks
STAMP = "zoo.json"


# ----------------------------------------------------------------------------- helpers

def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_threads() -> int:
    """CPU threads for training: one less than the cores we may use (at most 8), at least 1.

    On the 2-core dev machine that is 1 thread: with 2, any other busy process makes OpenMP's
    threads wait on each other and a tiny-preset step went from 40 ms to 1-2 s (measured), while
    1 thread stays at ~70 ms."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(n - 1, 8))


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n or default_threads())
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _progress(total: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=quiet, leave=False, dynamic_ncols=True)


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def read_stamp(model_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    p = Path(model_dir) / STAMP
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _complete(model_dir: Path, key: dict[str, Any]) -> bool:
    st = read_stamp(model_dir)
    return (
        st is not None
        and st.get("key") == key
        and (model_dir / "model.safetensors").is_file()
        and (model_dir / "tokenizer.json").is_file()
    )


def _check_target(final: Path) -> None:
    """Refuse to clobber a directory that the zoo did not make."""
    if final.exists() and (not final.is_dir() or (any(final.iterdir()) and read_stamp(final) is None)):
        raise FileExistsError(f"{final} exists, is not empty and holds no {STAMP}: not overwriting it")


def _prepare_target(final: Path) -> Path:
    """A fresh temporary sibling of ``final``."""
    _check_target(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _commit(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _lr_lambda(steps: int, warmup: float):
    w = max(1, int(round(warmup * steps)))

    def f(step: int) -> float:
        if step < w:
            return (step + 1) / w
        p = (step - w) / max(1, steps - w)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))

    return f


def _train(model, batches, steps: int, lr: float, p: Preset, device: str, desc: str, quiet: bool) -> tuple[list[float], float]:
    """The shared loop. ``batches(step)`` → (input_ids, labels) on CPU. Returns the losses
    (every 10th step and the last) and the seconds spent in the loop."""
    decay = [q for q in model.parameters() if q.ndim >= 2]
    no_decay = [q for q in model.parameters() if q.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": p.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        foreach=device != "cpu",
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, p.warmup))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()
    losses: list[float] = []
    model.train()
    t0 = time.perf_counter()
    with _progress(steps, desc, quiet) as bar:
        for step in range(steps):
            ids, labels = batches(step)
            ids, labels = ids.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with amp:
                loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            if p.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if step % 10 == 0 or step == steps - 1:
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.update(1)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    model.eval()
    return losses, time.perf_counter() - t0


def _save(model, tok, out: Path, dtype: str, zoo_meta: dict[str, Any]) -> None:
    from transformers import GenerationConfig

    model.config.deltapack_zoo = zoo_meta
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
    )
    model.to("cpu", dtype=getattr(torch, dtype))
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _write_stamp(tmp: Path, key: dict[str, Any], losses: list[float], t0: float, train_s: float, device: str, **extra: Any) -> None:
    """The stamp that marks a finished model: its key, hashes of what was written, and how."""
    stamp = {
        "key": key,
        "tokenizer_sha256": _file_sha(tmp / "tokenizer.json"),
        "weights_sha256": _file_sha(tmp / "model.safetensors"),
        "loss_first_last": [losses[0], losses[-1]],
        "seconds": round(time.perf_counter() - t0, 2),
        "train_seconds": round(train_s, 2),
        "device": device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        **extra,
    }
    (tmp / STAMP).write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- base

def llama_config(p: Preset, vocab_size: int, tok):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=p.hidden,
        intermediate_size=p.intermediate,
        num_hidden_layers=p.layers,
        num_attention_heads=p.heads,
        num_key_value_heads=p.kv_heads,
        max_position_embeddings=p.max_len,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        initializer_range=p.init_std,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        attention_bias=False,
        mlp_bias=False,
    )


def base_dir_name(p: Preset, seed: int) -> str:
    return f"base-{p.name}-s{seed}"


def build_base(
    out_dir: str | os.PathLike[str],
    preset: str | Preset = "tiny",
    seed: int = 0,
    *,
    device: str | None = None,
    threads: int | None = None,
    quiet: bool = False,
    force: bool = False,
) -> Path:
    """Pretrain the base LM of ``preset`` and save it to ``out_dir/base-<preset>-s<seed>``.

    Returns that directory. Skips all work if it already holds a complete model with the same
    stamp (preset, seed, corpus and zoo version) unless ``force``."""
    from transformers import LlamaForCausalLM

    p = get_preset(preset)
    device = device or default_device()
    final = Path(out_dir) / base_dir_name(p, seed)
    t0 = time.perf_counter()
    docs = base_corpus(
        p.corpus_chars,
        p.synth_frac,
        digits=p.difficulty.get("arith", {}).get("digits", 2),
        max_file_chars=p.max_file_chars,
        task_frac=p.task_frac,
        task_exact=p.task_exact,
        difficulty=p.pretrain_tasks(),
        eval_frac=p.eval_frac,
    )
    key = {"zoo_version": ZOO_VERSION, "kind": "base", "preset": p.to_dict(), "seed": seed, "corpus": corpus_hash(docs)}
    if not force and _complete(final, key):
        return final
    _check_target(final)

    with _threads(threads):
        torch.manual_seed(seed)
        tok = build_tokenizer(p.vocab, docs)
        enc = tok(docs, add_special_tokens=False)["input_ids"]
        bos, eos = tok.bos_token_id, tok.eos_token_id
        stream = torch.cat([torch.tensor([bos, *ids, eos], dtype=torch.long) for ids in enc])
        del enc
        n_windows = stream.numel() - p.base_seq
        if n_windows <= 0:
            raise ValueError("base corpus shorter than one training window")
        g = torch.Generator().manual_seed(seed)
        offsets = torch.randint(0, n_windows, (p.base_steps, p.base_batch), generator=g)
        ar = torch.arange(p.base_seq)

        def batches(step: int):
            x = stream[offsets[step, :, None] + ar]
            return x, x

        cfg = llama_config(p, len(tok), tok)
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg).to(device)
        losses, train_s = _train(model, batches, p.base_steps, p.base_lr, p, device, f"base[{p.name}]", quiet)

        tmp = _prepare_target(final)
        meta = {"role": "base", "preset": p.name, "seed": seed, "difficulty": p.to_dict()["difficulty"], "eval_frac": p.eval_frac}
        _save(model, tok, tmp, p.dtype, meta)
        _write_stamp(
            tmp,
            key,
            losses,
            t0,
            train_s,
            device,
            n_params=sum(q.numel() for q in model.parameters()),
            train_tokens=p.base_steps * p.base_batch * p.base_seq,
            corpus_tokens=int(stream.numel()),
        )
        _commit(tmp, final)
    return final


# ----------------------------------------------------------------------------- fine-tune

def encode_example(tok, ex: Example) -> tuple[list[int], int]:
    """``<s> prompt target </s>`` ids and the number of leading (unscored) prompt ids."""
    prompt = [tok.bos_token_id] + tok.encode(ex.prompt, add_special_tokens=False)
    target = tok.encode(ex.target, add_special_tokens=False) + [tok.eos_token_id]
    return prompt + target, len(prompt)


def finetune_dir_name(task: str, p: Preset, seed: int) -> str:
    return f"{task}-{p.name}-s{seed}"


def build_finetune(
    base_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    task: str = "arith",
    preset: str | Preset = "tiny",
    seed: int = 0,
    *,
    device: str | None = None,
    threads: int | None = None,
    quiet: bool = False,
    force: bool = False,
) -> Path:
    """Full-parameter fine-tune of the model in ``base_dir`` on ``task``'s train split, saved to
    ``out_dir/<task>-<preset>-s<seed>``. Returns that directory; skips the work if a complete
    model with the same stamp (which includes the base's stamp) is already there."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    p = get_preset(preset)
    t = get_task(task)
    device = device or default_device()
    base_dir = Path(base_dir)
    base_stamp = read_stamp(base_dir)
    if base_stamp is None:
        raise FileNotFoundError(f"{base_dir} is not a zoo base model (no {STAMP})")
    arch = ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "init_std")
    bp = base_stamp["key"]["preset"]
    if any(bp.get(k) != getattr(p, k) for k in arch):
        raise ValueError(f"{base_dir} was built with preset {bp.get('name')!r}, whose architecture differs from {p.name!r}'s")
    final = Path(out_dir) / finetune_dir_name(t.name, p, seed)
    t0 = time.perf_counter()
    key = {
        "zoo_version": ZOO_VERSION,
        "kind": "finetune",
        "task": t.name,
        "preset": p.to_dict(),
        "seed": seed,
        "base": _sha(base_stamp["key"]),
        "base_weights": base_stamp.get("weights_sha256"),
    }
    if not force and _complete(final, key):
        return final
    _check_target(final)

    with _threads(threads):
        tok = AutoTokenizer.from_pretrained(base_dir)
        model = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32).to(device)
        steps, batch, lr = p.ft_settings(t.name)
        n = steps * batch
        train = t.examples(n, seed=seed, split="train", eval_frac=p.eval_frac, **p.difficulty.get(t.name, {}))
        encoded = [encode_example(tok, ex) for ex in train]
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=g).view(steps, batch)
        pad = tok.pad_token_id

        def batches(step: int):
            rows = [encoded[i] for i in order[step].tolist()]
            L = max(len(ids) for ids, _ in rows)
            x = torch.full((len(rows), L), pad, dtype=torch.long)
            y = torch.full((len(rows), L), -100, dtype=torch.long)
            for r, (ids, n_prompt) in enumerate(rows):
                x[r, : len(ids)] = torch.tensor(ids)
                y[r, n_prompt : len(ids)] = x[r, n_prompt : len(ids)]
            return x, y

        torch.manual_seed(seed)
        losses, train_s = _train(model, batches, steps, lr, p, device, f"{t.name}[{p.name}]", quiet)

        tmp = _prepare_target(final)
        meta = {
            "role": "finetune",
            "task": t.name,
            "preset": p.name,
            "seed": seed,
            "difficulty": p.to_dict()["difficulty"],
            "eval_frac": p.eval_frac,
        }
        _save(model, tok, tmp, p.dtype, meta)
        _write_stamp(tmp, key, losses, t0, train_s, device, base_dir=str(base_dir), train_examples=n, unique_train_prompts=len({ex.prompt for ex in train}))
        _commit(tmp, final)
    return final
