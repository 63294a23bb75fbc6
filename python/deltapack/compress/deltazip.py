"""DeltaZip (arXiv 2312.05215): the delta pruned to 2:4 structured sparsity and quantized
(symmetric, one scale per row) in one SparseGPT pass with calibration inputs."""

from __future__ import annotations

import torch

from .core import CompressedDelta, SparsePart
from .sparsegpt import sparsegpt_24_quantize


def compress_deltazip(delta: torch.Tensor, H: torch.Tensor | None, bits: int = 2, damp: float = 0.01) -> CompressedDelta:
    out, inp = delta.shape
    if H is None:  # no calibration: an identity Hessian (plain magnitude pruning + RTN)
        H = torch.eye(inp, device=delta.device)
    r = sparsegpt_24_quantize(delta.float(), H, bits, damp=damp)
    part = SparsePart(codes=r.codes.cpu(), indices=r.indices.cpu(), bits=bits, scales=r.scales.cpu(), zero_point=r.zero_point, shape=(out, inp))
    return CompressedDelta(form="dense", parts={"delta": part}, approx=r.dequantize(), info={"bits": bits})
