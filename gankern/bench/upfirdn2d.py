"""upfirdn2d benchmark cases: StyleGAN2's 2x up/down resampling with the [1,3,3,1] filter at
synthesis-network shapes, against the formulation users run eagerly (StyleGAN's own reference
style: zero insertion by reshape + pad, pad, depthwise conv2d, strided slice; written here from the
published semantics) and torch.compile of it.

Floor: the work must read x once and write y once; the polyphase sum is ceil(k/up)^2 = 4 MACs per
output for up=2 (k^2 = 16 for down=2 per output, over 4x fewer outputs): memory-bound on every
device (a 4-byte store per 4 FMAs)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..ops.upfirdn2d import setup_filter, upfirdn2d
from .case import Case


def eager_upfirdn2d(x, f, up, down, pad):
    """What a StyleGAN user runs without the CUDA plugin: insert zeros, pad, depthwise conv, slice."""
    N, C, H, W = x.shape
    if up > 1:
        x = F.pad(x.reshape(N, C, H, 1, W, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(N, C, H * up, W * up)
    x = F.pad(x, pad)
    w = f.flip([0, 1])[None, None].repeat(C, 1, 1, 1).to(x.dtype)
    x = F.conv2d(x, w, groups=C)
    return x[:, :, ::down, ::down] if down > 1 else x


def _setup(shape, dtype, device, grad, channels_last=False):
    def make():
        x = torch.randn(shape, device=device, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.requires_grad_(grad), setup_filter([1, 3, 3, 1], device=device)
    return make


def cases(device: torch.device) -> list[Case]:
    out = []
    # CPU: fp32 and bf16 (half the bytes: the bf16 target is >= 1.6x gankern's own fp32 time)
    dtypes = [torch.float32, torch.bfloat16] if device.type == "cpu" else [torch.float16, torch.float32]
    for dtype in dtypes:
        es = torch.tensor([], dtype=dtype).element_size()
        for shape, quick in [((16, 512, 32, 32), True), ((16, 256, 64, 64), False)]:
            n = math.prod(shape)
            for kind, up, down, pad, nout in [("up=2", 2, 1, [2, 1, 2, 1], 4 * n),
                                              ("down=2", 1, 2, [1, 1, 1, 1], n // 4)]:
                gk = (lambda a, up=up, down=down, pad=pad: upfirdn2d(a[0], a[1], up=up, down=down, padding=pad,
                                                                      gain=up * up))
                eg = (lambda a, up=up, down=down, pad=pad: eager_upfirdn2d(a[0], a[1] * (up * up), up, down, pad))
                for layout in ("NCHW", "NHWC") if device.type == "cpu" else ("NCHW",):
                    cl = layout == "NHWC"
                    out.append(Case("upfirdn2d", f"{kind} 4-tap fwd {layout}", shape, dtype,
                                    _setup(shape, dtype, device, False, cl), gk, eg, bytes=(n + nout) * es,
                                    quick=quick and not cl and dtype == dtypes[0]))
    return out
