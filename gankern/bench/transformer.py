"""Transformer-block elementwise cases (SD 1.5's UNet2DConditionModel, 64x64 latents, batch 2
with classifier-free guidance): GEGLU of the feed-forward and the residual add + LayerNorm, forward
and forward+backward, against diffusers' own formulation run eagerly and compiled."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.geglu import geglu
from ..ops.layer_norm import add_layer_norm
from .case import Case

# (tokens, dim) of SD 1.5's transformer levels at 64x64 latents, batch 2: 64^2, 32^2, 16^2 tokens.
LEVELS = [(2 * 4096, 320), (2 * 1024, 640), (2 * 256, 1280)]


def _eager_geglu(x):
    hidden, gate = x.chunk(2, dim=-1)
    return hidden * F.gelu(gate)


def _eager_add_ln(a, h, w, b):
    h = a + h
    return F.layer_norm(h, h.shape[-1:], w, b), h


def _geglu_setup(rows, D, dtype, device, grad):
    def make():
        x = torch.randn(rows, 8 * D, device=device, dtype=dtype).requires_grad_(grad)
        return x, torch.randn(rows, 4 * D, device=device, dtype=dtype)
    return make


def _ln_setup(rows, D, dtype, device, grad):
    def make():
        a = torch.randn(rows, D, device=device, dtype=dtype).requires_grad_(grad)
        h = torch.randn(rows, D, device=device, dtype=dtype).requires_grad_(grad)
        # a half model on the GPU holds half weights (torch's CUDA layer_norm takes no others)
        wdtype = dtype if torch.device(device).type == "cuda" else torch.float32
        w = torch.rand(D, device=device, dtype=wdtype).requires_grad_(grad)
        b = torch.randn(D, device=device, dtype=wdtype).requires_grad_(grad)
        return a, h, w, b, torch.randn(rows, D, device=device, dtype=dtype)
    return make


def _geglu_bwd(f):
    return lambda a: torch.autograd.grad(f(a[0]), [a[0]], a[1])


def _ln_bwd(f):
    def run(a):
        y, h = f(*a[:4])
        return torch.autograd.grad((y * a[4]).sum() + (h * a[4]).sum(), list(a[:4]))
    return run


def cases(device: torch.device) -> list[Case]:
    out = []
    # CPU: fp32 and bf16 (half the bytes: the bf16 target is >= 1.6x gankern's own fp32 time)
    dtypes = [torch.float32, torch.bfloat16] if device.type == "cpu" else [torch.float16, torch.float32]
    for dtype in dtypes:
        es = torch.tensor([], dtype=dtype).element_size()
        for i, (rows, D) in enumerate(LEVELS):
            q = i == 0 and dtype == dtypes[0]
            n = rows * 4 * D  # GEGLU output elements (inner dim 4 D)
            out.append(Case("transformer", "geglu fwd", (rows, 8 * D), dtype, _geglu_setup(rows, D, dtype, device, False),
                            lambda a: geglu(a[0]), lambda a: _eager_geglu(a[0]), bytes=3 * n * es, quick=q,
                            kernel="geglu"))
            out.append(Case("transformer", "geglu fwd+bwd", (rows, 8 * D), dtype,
                            _geglu_setup(rows, D, dtype, device, True), _geglu_bwd(geglu), _geglu_bwd(_eager_geglu),
                            bytes=8 * n * es, kernel="geglu", notes="bwd: read dy, x; write dx"))
            m = rows * D
            out.append(Case("transformer", "add+layer_norm fwd", (rows, D), dtype,
                            _ln_setup(rows, D, dtype, device, False), lambda a: add_layer_norm(*a[:4]),
                            lambda a: _eager_add_ln(*a[:4]), bytes=4 * m * es, quick=q, kernel="layer_norm"))
            out.append(Case("transformer", "add+layer_norm fwd+bwd", (rows, D), dtype,
                            _ln_setup(rows, D, dtype, device, True), _ln_bwd(add_layer_norm), _ln_bwd(_eager_add_ln),
                            bytes=8 * m * es, kernel="layer_norm"))
    return out
