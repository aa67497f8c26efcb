"""filtered_lrelu benchmark cases: StyleGAN3-T's shape (16, 512, 36, 36), up 2, down 2, 12-tap
separable filters, bias and clamp, against StyleGAN3's reference formulation run eagerly (bias,
upfirdn2d by zero insertion + pad + two 1-D depthwise convs, lrelu * gain, clamp, upfirdn2d down;
gankern/reference/filtered_lrelu.py is exactly that) and torch.compile of it.

Floor: read x (21 MiB), write y (21 MiB) and the 1-byte mask of the 82x82 intermediate (55 MiB of
the 4-byte intermediate avoided). Work per plane with separable polyphase passes: up pass
82 rows x (6 + 6 taps) x 82 ≈ 81 kMAC, down pass 36 x (12 + 12) x 82/2 ≈ 35 kMAC: ~1 GFLOP per call,
so on 2 CPU cores it is compute-bound (~10-20 ms at AVX2 peak), not memory-bound."""
from __future__ import annotations

import math

import torch

from ..ops.filtered_lrelu import filtered_lrelu
from ..ops.upfirdn2d import setup_filter
from ..reference.filtered_lrelu import filtered_lrelu as ref_filtered_lrelu
from .case import Case

PAD = [11, 10, 11, 10]  # 36 -> 82 intermediate -> 36 out with 12-tap filters
CLAMP = 256.0


def _setup(shape, dtype, device, grad):
    def make():
        x = torch.randn(shape, device=device, dtype=dtype).requires_grad_(grad)
        b = torch.randn(shape[1], device=device, dtype=dtype).requires_grad_(grad)
        f = setup_filter(torch.hann_window(12, periodic=False, dtype=torch.float64).float() + 0.05, device=device)
        return x, b, f
    return make


def _gankern(a):
    x, b, f = a
    return filtered_lrelu(x, f, f, b, up=2, down=2, padding=PAD, clamp=CLAMP)


def _eager(a):
    x, b, f = a
    return ref_filtered_lrelu(x, f, f, b, 2, 2, 2, 2, *PAD, math.sqrt(2), 0.2, CLAMP, False)


def _fwd_bwd(fn):
    def run(a):
        y = fn(a)
        return torch.autograd.grad(y, [a[0], a[1]], torch.ones_like(y))
    return run


def cases(device: torch.device) -> list[Case]:
    out = []
    # CPU: fp32 and bf16 (half the bytes: the bf16 target is >= 1.6x gankern's own fp32 time)
    dtypes = [torch.float32, torch.bfloat16] if device.type == "cpu" else [torch.float16, torch.float32]
    shape = (16, 512, 36, 36)
    n = math.prod(shape)
    for dtype in dtypes:
        es = torch.tensor([], dtype=dtype).element_size()
        out.append(Case("filtered_lrelu", "up2 down2 12-tap fwd", shape, dtype, _setup(shape, dtype, device, False),
                        _gankern, _eager, bytes=2 * n * es + 16 * 512 * 82 * 82, quick=dtype == dtypes[0]))
        out.append(Case("filtered_lrelu", "up2 down2 12-tap fwd+bwd", shape, dtype, _setup(shape, dtype, device, True),
                        _fwd_bwd(_gankern), _fwd_bwd(_eager), bytes=4 * n * es + 2 * 16 * 512 * 82 * 82))
    return out
