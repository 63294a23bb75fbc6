"""Hugging Face model directories, read lazily: config.json plus safetensors (one file or an
index of shards), memory-mapped, one tensor at a time. Nothing here loads a whole model."""

from __future__ import annotations

import json
import math
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import DeltapackError

# Tensor names of decoder layers: "model.layers.12.self_attn.q_proj.weight" -> layer 12.
_LAYER_RE = re.compile(r"^(?P<prefix>.*?\blayers)\.(?P<idx>\d+)\.(?P<rest>.+)$")
# safetensors dtype names -> the .dpk fingerprint dtype names
_ST_DTYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16", "I8": "i8", "U8": "u8", "I32": "i32", "I64": "i64", "F64": "f64", "BOOL": "bool"}
ITEMSIZE = {"f32": 4, "f16": 2, "bf16": 2, "i8": 1, "u8": 1, "i32": 4, "i64": 8, "f64": 8, "bool": 1}


class ModelMismatchError(DeltapackError):
    """Base and fine-tune cannot be paired: architecture, tensor names or shapes differ."""


class ModelDir:
    """A Hugging Face model directory. Tensors are read on demand from memory-mapped
    safetensors files (``get``) and may be released at any time."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path} is not a model directory")
        cfg = self.path / "config.json"
        if not cfg.exists():
            raise ModelMismatchError(f"{self.path} has no config.json: not a Hugging Face model directory")
        self.config: dict[str, Any] = json.loads(cfg.read_text())
        index = self.path / "model.safetensors.index.json"
        single = self.path / "model.safetensors"
        if index.exists():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        elif single.exists():
            weight_map = {}
        else:
            found = sorted(p.name for p in self.path.glob("*.safetensors"))
            if not found:
                raise ModelMismatchError(f"{self.path} has no safetensors weights (model.safetensors or an index); .bin checkpoints are not supported")
            weight_map = {}
            single = None  # type: ignore[assignment]
            for name in found:
                with safe_open(self.path / name, framework="pt") as f:
                    weight_map.update({k: name for k in f.keys()})
        if not weight_map:
            with safe_open(single, framework="pt") as f:
                weight_map = {k: "model.safetensors" for k in f.keys()}
        self._file_of: dict[str, str] = weight_map
        self._handles: dict[str, Any] = {}
        self._meta: dict[str, tuple[str, list[int]]] = {}
        for fname in sorted(set(weight_map.values())):
            h = self._handle(fname)
            for k in h.keys():
                if weight_map.get(k) == fname:
                    sl = h.get_slice(k)
                    self._meta[k] = (_ST_DTYPES.get(sl.get_dtype(), sl.get_dtype().lower()), list(sl.get_shape()))
        missing = set(weight_map) - set(self._meta)
        if missing:
            raise ModelMismatchError(f"{self.path}: the index lists tensors no shard contains: {sorted(missing)[:5]}")

    def _handle(self, fname: str) -> Any:
        if fname not in self._handles:
            p = self.path / fname
            if not p.exists():
                raise ModelMismatchError(f"{self.path}: shard {fname} named by the index is missing")
            self._handles[fname] = safe_open(p, framework="pt")
        return self._handles[fname]

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", "?"))

    @property
    def name(self) -> str:
        return str(self.config.get("_name_or_path") or self.path.name)

    def keys(self) -> list[str]:
        return list(self._meta)

    def __contains__(self, name: object) -> bool:
        return name in self._meta

    def shape(self, name: str) -> list[int]:
        return self._meta[name][1]

    def dtype(self, name: str) -> str:
        return self._meta[name][0]

    def nbytes(self, name: str) -> int:
        """Bytes of the tensor as stored."""
        return math.prod(self.shape(name)) * ITEMSIZE.get(self.dtype(name), 4)

    def get(self, name: str) -> torch.Tensor:
        """The tensor as stored (memory-mapped; no copy until modified)."""
        if name not in self._meta:
            raise KeyError(f"{self.path} has no tensor '{name}'")
        return self._handle(self._file_of[name]).get_tensor(name)

    def layer_groups(self) -> tuple[OrderedDict[int, list[str]], list[str]]:
        """Decoder-layer tensors grouped by layer index (in order), and the rest."""
        layers: dict[int, list[str]] = {}
        rest = []
        for k in self._meta:
            m = _LAYER_RE.match(k)
            if m:
                layers.setdefault(int(m["idx"]), []).append(k)
            else:
                rest.append(k)
        return OrderedDict(sorted(layers.items())), rest

    def tied_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False)) and "lm_head.weight" not in self._meta


def layer_index(name: str) -> int | None:
    m = _LAYER_RE.match(name)
    return int(m["idx"]) if m else None


def check_pair(base: ModelDir, ft: ModelDir) -> None:
    """Refuse a base / fine-tune pair that cannot share a delta, before any work starts."""
    if base.model_type != ft.model_type:
        raise ModelMismatchError(f"architectures differ: base is '{base.model_type}', fine-tune is '{ft.model_type}'")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        if base.config.get(key) != ft.config.get(key):
            raise ModelMismatchError(f"config '{key}' differs: base {base.config.get(key)}, fine-tune {ft.config.get(key)}")
    bk, fk = set(base.keys()), set(ft.keys())
    if bk != fk:
        only_b, only_f = sorted(bk - fk), sorted(fk - bk)
        raise ModelMismatchError(f"tensor names differ: only in base {only_b[:5]}{'...' if len(only_b) > 5 else ''}, only in fine-tune {only_f[:5]}{'...' if len(only_f) > 5 else ''}")
    for k in sorted(bk):
        if base.shape(k) != ft.shape(k):
            raise ModelMismatchError(f"'{k}' has shape {base.shape(k)} in the base and {ft.shape(k)} in the fine-tune")
