"""bias_act benchmark cases: StyleGAN2 feature maps, lrelu + clamp (the synthesis network's
default) forward and forward+backward.

Baselines: "eager" is StyleGAN2's reference formulation as torch ops (what its `bias_act` runs
with `impl='ref'`: add the reshaped bias, the activation, multiply by the gain, clamp; written here
from that documented semantics), and torch.compile of the same function. gankern's own reference
specification is timed as the extra "spec" column only.
"""
from __future__ import annotations

import math

import torch

from ..ops.bias_act import bias_act
from ..reference.bias_act import bias_act as ref_bias_act
from .case import Case

GAIN = math.sqrt(2)
CLAMP = 256.0


def _setup(shape, dtype, device, grad, channels_last=False):
    def make():
        x = torch.randn(shape, device=device, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        b = torch.randn(shape[1], device=device, dtype=dtype)
        dy = torch.randn_like(x)
        return x.requires_grad_(grad), b.requires_grad_(grad), dy
    return make


def _fwd(f):
    return lambda a: f(a[0], a[1])


def _fwd_bwd(f):
    def run(a):
        x, b, dy = a
        return torch.autograd.grad(f(x, b), [x, b], dy)
    return run


def _gankern(x, b):
    return bias_act(x, b, act="lrelu", clamp=CLAMP)


def stylegan_bias_act(x, b, alpha=0.2, gain=GAIN, clamp=CLAMP):
    """StyleGAN2's reference path for act='lrelu': four torch ops, four passes over memory."""
    x = x + b.reshape([1, -1] + [1] * (x.ndim - 2))
    x = torch.nn.functional.leaky_relu(x, alpha)
    x = x * gain
    return x.clamp(-clamp, clamp)


def _spec(x, b):
    return ref_bias_act(x, b, 1, "lrelu", 0.2, GAIN, CLAMP)


def cases(device: torch.device) -> list[Case]:
    out = []
    # CPU: fp32 and bf16 (half the bytes: the bf16 target is >= 1.6x gankern's own fp32 time)
    dtypes = [torch.float32, torch.bfloat16] if device.type == "cpu" else [torch.float16, torch.float32]
    shapes = [((64, 512, 32, 32), True), ((16, 512, 128, 128), False)]
    for dtype in dtypes:
        es = torch.tensor([], dtype=dtype).element_size()
        for shape, quick in shapes:
            n = math.prod(shape)
            for layout in ("NCHW", "NHWC"):
                cl = layout == "NHWC"
                q = quick and not cl
                out.append(Case("bias_act", f"lrelu+clamp fwd {layout}", shape, dtype,
                                _setup(shape, dtype, device, False, cl), _fwd(_gankern), _fwd(stylegan_bias_act),
                                bytes=2 * n * es, quick=q, spec=_fwd(_spec)))
            out.append(Case("bias_act", "lrelu+clamp fwd+bwd NCHW", shape, dtype,
                            _setup(shape, dtype, device, True), _fwd_bwd(_gankern), _fwd_bwd(stylegan_bias_act),
                            bytes=5 * n * es, spec=_fwd_bwd(_spec),
                            notes="fwd: read x, write y; bwd: read dy, x, write dx"))
    return out
