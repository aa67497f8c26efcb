"""filtered_lrelu specification: StyleGAN3's alias-free leaky ReLU, in this order:

    1. z = x + b                         (b per channel; none if b is None)
    2. t = upfirdn2d(z, fu, up=up, padding=padding, gain=up_x * up_y)
    3-5. v = clamp(lrelu(t, slope) * gain, -clamp, clamp)   (the gain commutes with lrelu for gain >= 0)
    6-7. y = upfirdn2d(v, fd, down=down)

`flip_filter` applies to both filters. This file composes the upfirdn2d reference with torch ops:
slow, readable, float64-capable and differentiable (autograd gives every gradient).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .upfirdn2d import upfirdn2d


def intermediate_size(size: int, up: int, p0: int, p1: int, k: int) -> int:
    """Samples along one axis after the upsampling filter (step 2)."""
    return size * up + p0 + p1 - k + 1


def activation(t: Tensor, gain: float, slope: float, clamp: float | None) -> Tensor:
    v = F.leaky_relu(t, slope) * gain
    return v.clamp(-clamp, clamp) if clamp is not None else v


def filtered_lrelu(x: Tensor, fu: Tensor, fd: Tensor, b: Tensor | None, upx: int, upy: int, downx: int, downy: int,
                   px0: int, px1: int, py0: int, py1: int, gain: float, slope: float, clamp: float | None,
                   flip_filter: bool) -> Tensor:
    out_dtype = x.dtype
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if b is not None:
        x = x + b.to(x.dtype).reshape(1, -1, 1, 1)
    t = upfirdn2d(x, fu, upx, upy, 1, 1, px0, px1, py0, py1, flip_filter, float(upx * upy))
    v = activation(t, gain, slope, clamp)
    return upfirdn2d(v, fd, 1, 1, downx, downy, 0, 0, 0, 0, flip_filter, 1.0).to(out_dtype)


# ---- the pieces the kernels' autograd is built from -----------------------------------------------

def mask_codes(t: Tensor, gain: float, slope: float, clamp: float | None) -> Tensor:
    """uint8 code per intermediate sample: 1 where t > 0 (derivative gain), 0 where t <= 0
    (slope * gain), 2 where the clamp cuts (torch.clamp passes the gradient inclusively) or t is NaN."""
    code = (t > 0).to(torch.uint8)
    v = activation(t, gain, slope, None)
    cut = torch.isnan(v) if clamp is None else ~((v >= -clamp) & (v <= clamp))
    return torch.where(cut, torch.full_like(code, 2), code)


def mask_factor(mask: Tensor, gain: float, slope: float, dtype: torch.dtype) -> Tensor:
    table = torch.tensor([gain * slope, gain, 0.0, 0.0], dtype=dtype, device=mask.device)
    return table[mask.long()]


def forward_with_mask(x: Tensor, fu: Tensor, fd: Tensor, b: Tensor | None, up, down, pad, gain: float, slope: float,
                      clamp: float | None, flip_filter: bool) -> tuple[Tensor, Tensor]:
    """(y, mask): the output and the mask codes of its intermediate samples."""
    out_dtype = x.dtype
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if b is not None:
        x = x + b.to(x.dtype).reshape(1, -1, 1, 1)
    t = upfirdn2d(x, fu.to(x.dtype), up[0], up[1], 1, 1, *pad, flip_filter, float(up[0] * up[1]))
    v = activation(t, gain, slope, clamp)
    y = upfirdn2d(v, fd.to(x.dtype), 1, 1, down[0], down[1], 0, 0, 0, 0, flip_filter, 1.0)
    return y.to(out_dtype), mask_codes(t, gain, slope, clamp)


def masked(x: Tensor, mask: Tensor, fa: Tensor, fb: Tensor, up_a, pad_a, flip_a: bool, gain_a: float, down_b, pad_b,
           flip_b: bool, gain_b: float, gain: float, slope: float) -> Tensor:
    """upfirdn(x; fa, up_a, pad_a) * factor[mask], then upfirdn(.; fb, down_b, pad_b): linear in x.
    dL/dx of filtered_lrelu is this with the two passes transposed, and so is its own gradient."""
    out_dtype = x.dtype
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    t = upfirdn2d(x, fa.to(x.dtype), up_a[0], up_a[1], 1, 1, *pad_a, flip_a, gain_a)
    v = t * mask_factor(mask, gain, slope, x.dtype)
    return upfirdn2d(v, fb.to(x.dtype), 1, 1, down_b[0], down_b[1], *pad_b, flip_b, gain_b).to(out_dtype)
