"""The fused Triton GPTQ block kernel against the torch loop (the reference), run on the CPU
under TRITON_INTERPRET=1 in a subprocess (the variable must be set before triton loads)."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    r"""
    import torch
    from deltapack.compress.gptq import gptq_quantize
    g = torch.Generator().manual_seed(0)
    for rows, cols, bits in [(20, 64, 2), (7, 96, 3), (33, 64, [2, 3, 8] * 11)]:
        X = torch.randn(512, cols, generator=g) @ torch.randn(cols, cols, generator=g)
        H = 2 * X.T @ X / 512
        W = torch.randn(rows, cols, generator=g)
        for act in (False, True):
            a = gptq_quantize(W, H, bits, 32, block_size=32, act_order=act, backend="torch")
            b = gptq_quantize(W, H, bits, 32, block_size=32, act_order=act, backend="triton")
            same = (a.codes == b.codes).float().mean().item()
            assert torch.equal(a.scales, b.scales[:, : a.scales.shape[1]]) or same > 0.999, "scales differ"
            assert same >= 0.999, (rows, cols, bits, act, same)
            ea = ((a.dequantize() - W) @ X.T).norm(); eb = ((b.dequantize() - W) @ X.T).norm()
            assert abs(float(ea - eb)) <= 1e-3 * float(ea), (float(ea), float(eb))
    print("ok")
    """
)


def test_triton_block_kernel_matches_torch_loop():
    env = {"TRITON_INTERPRET": "1", "PATH": "/usr/bin:/bin"}
    import os

    env = {**os.environ, **env}
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
