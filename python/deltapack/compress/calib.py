"""Calibration: token sequences (from a file, or sampled from the fine-tuned model itself when
no file is given — no network needed) and a streamed runner that pushes them through the
decoder one layer at a time, capturing every linear layer's input Hessian H = 2/n Σ x xᵀ.
Only one layer's weights and the hidden states live in memory at a time."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .gptq import HessianAccumulator
from .hf import ModelDir


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:  # noqa: BLE001 - transformers raises many types here
        raise ValueError(f"{model_dir}: no usable tokenizer ({e}); calibration needs the fine-tune's tokenizer files") from e


def read_calib_text(path: str | Path) -> list[str]:
    """Documents from a .txt (blank-line separated) or .jsonl (a 'text' field, else the first
    string field of each object) file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"calibration file {p} does not exist")
    if p.suffix == ".jsonl":
        docs = []
        for i, line in enumerate(p.read_text().splitlines()):
            if not line.strip():
                continue
            obj = json.loads(line)
            text = obj.get("text") if isinstance(obj, dict) else None
            if text is None and isinstance(obj, dict):
                text = next((v for v in obj.values() if isinstance(v, str)), None)
            if text is None:
                raise ValueError(f"{p}:{i + 1}: no text field")
            docs.append(text)
    else:
        docs = [d for d in p.read_text().split("\n\n") if d.strip()]
    if not docs:
        raise ValueError(f"calibration file {p} holds no text")
    return docs


def tokens_from_text(tokenizer, docs: list[str], n_samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``n_samples`` random windows of ``seq_len`` tokens from the concatenated documents."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for d in docs:
        ids.extend(tokenizer(d, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    stream = torch.tensor(ids, dtype=torch.long)
    if len(stream) < seq_len:
        reps = -(-seq_len // max(len(stream), 1))
        stream = stream.repeat(reps + 1)
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - seq_len + 1, (n_samples,), generator=g)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])


@torch.no_grad()
def sample_tokens(ft_dir: str | Path, n_samples: int, seq_len: int, seed: int = 0, device: str | torch.device = "cpu", batch_size: int = 16) -> torch.Tensor:
    """Sequences sampled from the fine-tuned model (temperature 1), starting from BOS: the
    default calibration set when no file is given. Loads the fine-tune whole, once."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(ft_dir)
    model = AutoModelForCausalLM.from_pretrained(str(ft_dir), dtype=torch.float32 if str(device) == "cpu" else torch.bfloat16).to(device).eval()
    start = tok.bos_token_id if tok.bos_token_id is not None else (tok.eos_token_id or 0)
    torch.manual_seed(seed)
    out = []
    for i in range(0, n_samples, batch_size):
        b = min(batch_size, n_samples - i)
        prompt = torch.full((b, 1), start, dtype=torch.long, device=device)
        gen = model.generate(prompt, do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_length=seq_len, min_length=seq_len, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else start)
        out.append(gen[:, :seq_len].cpu())
    del model
    return torch.cat(out)


class LayerStream:
    """Pushes calibration hidden states through decoder layers built one at a time from a
    weights function, recording each linear's input Hessian."""

    def __init__(self, model: ModelDir, tokens: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None, batch_size: int = 8):
        # Forwards in bf16 on a GPU (as GPTQ implementations run fp16 models); Hessians are
        # always accumulated in fp32. fp32 on the CPU, where bf16 matmuls are slow.
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        from transformers import AutoConfig, AutoModelForCausalLM

        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self.config = AutoConfig.from_pretrained(str(model.path))
        with torch.device("meta"):
            self.skeleton = AutoModelForCausalLM.from_config(self.config)
        body = getattr(self.skeleton, "model", None)
        if body is None or not hasattr(body, "layers") or not hasattr(body, "rotary_emb"):
            raise ValueError(f"architecture '{self.config.model_type}' is not a Llama-style decoder (model.layers + rotary_emb); calibration is not supported for it")
        self.prefix = "model.layers"
        self.rotary = type(body.rotary_emb)(config=self.config).to(device)
        embed = model.get("model.embed_tokens.weight").to(device=device, dtype=dtype)
        self.hidden = [embed[tokens[i : i + batch_size].to(device)] for i in range(0, len(tokens), batch_size)]
        del embed
        self.seq_len = tokens.shape[1]
        pos = torch.arange(self.seq_len, device=device).unsqueeze(0)
        self.position_ids = pos
        self.position_embeddings = self.rotary(self.hidden[0], position_ids=pos)
        import inspect

        from transformers.masking_utils import create_causal_mask

        # the no-cache argument was renamed (past_key_values → cache, transformers 5.2x); the
        # device machine's older transformers knows only the first
        no_cache = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
        self.mask = create_causal_mask(config=self.config, inputs_embeds=self.hidden[0], attention_mask=None, position_ids=pos, **{no_cache: None})

    def build_layer(self, index: int, weights: Callable[[str], torch.Tensor]) -> nn.Module:
        """Decoder layer ``index`` with parameters from ``weights(full tensor name)``."""
        import copy

        layer = copy.deepcopy(self.skeleton.model.layers[index]).to_empty(device=self.device)
        state = {k: weights(f"{self.prefix}.{index}.{k}").to(device=self.device, dtype=self.dtype) for k in layer.state_dict()}
        layer.load_state_dict(state)
        return layer.to(self.dtype).eval()

    def _run(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        out = layer(hidden, attention_mask=self.mask if self.mask is None else self.mask[: hidden.shape[0]], position_ids=self.position_ids, position_embeddings=self.position_embeddings)
        return out[0] if isinstance(out, tuple) else out

    @torch.no_grad()
    def hessians(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        """Input Hessian of every nn.Linear in ``layer`` (by module path, e.g. 'self_attn.q_proj')."""
        acc: dict[str, HessianAccumulator] = {}
        owner: dict[str, str] = {}  # linear -> the linear whose accumulator it shares
        # (data_ptr, shape) of an input seen in this batch -> (first linear, the tensor). The
        # reference keeps the tensor alive for the batch, so its memory cannot be reused by a
        # later, different input (say o_proj's) with the same address and shape.
        seen: dict[tuple[int, tuple[int, ...]], tuple[str, torch.Tensor]] = {}

        def hook(_m, args, n):
            x = args[0]
            first, _ = seen.setdefault((x.data_ptr(), tuple(x.shape)), (n, x))
            # q/k/v (and gate/up) read the very same tensor: accumulate its Hessian once
            if first != n:
                owner[n] = first
                return
            acc.setdefault(n, HessianAccumulator(x.shape[-1], device=self.device, tf32=True)).add(x.float())

        hooks = [mod.register_forward_pre_hook(lambda m, args, n=name: hook(m, args, n)) for name, mod in layer.named_modules() if isinstance(mod, nn.Linear)]
        try:
            for h in self.hidden:
                seen.clear()
                self._run(layer, h)
        finally:
            for hk in hooks:
                hk.remove()
        out = {k: a.H for k, a in acc.items()}
        out.update({n: out[o] for n, o in owner.items()})
        return out

    @torch.no_grad()
    def advance(self, layer: nn.Module) -> None:
        """Replace the hidden states by this layer's outputs."""
        self.hidden = [self._run(layer, h) for h in self.hidden]
