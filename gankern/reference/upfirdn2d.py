"""upfirdn2d specification: StyleGAN2/3's upsample, pad, FIR-filter, downsample of 2-D images.

Along each axis, for an input of length W, factors up and down, pads p0 and p1 and a filter of
length k (all per axis; a 2-D filter is [k_y, k_x]):

    1. upsample: insert up-1 zeros after every sample                 (length W*up)
    2. pad:      p0 zeros before, p1 after; a negative pad crops        (length W*up + p0 + p1)
    3. filter:   true convolution with f (cross-correlation with f when flip_filter)
    4. downsample: keep every down-th sample, starting with the first

    out length = (W*up + p0 + p1 - k) // down + 1

A 1-D filter is separable: it filters along x, then along y (StyleGAN scales each pass by
sqrt(gain); the product, gain, is what counts); a 2-D filter is scaled by gain. This file is the
literal formulation (zero insertion, padding, depthwise conv2d, slicing): slow, obviously right,
differentiable, float64-capable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def output_size(size: int, up: int, down: int, p0: int, p1: int, k: int) -> int:
    """Samples along one axis of the output (the formula above); < 1 means no output."""
    return (size * up + p0 + p1 - k) // down + 1


def correlation_filter(f: Tensor, flip_filter: bool, gain: float) -> Tensor:
    """The 2-D [k_y, k_x] kernel g that step 3 cross-correlates with: y[o] = sum_k g[k] * u[o + k].
    A 1-D filter f gives g = outer(f, f) * gain; it is flipped unless
    flip_filter (a true convolution is a correlation with the flipped filter)."""
    if f.ndim == 1:
        g = torch.outer(f, f) * gain
    else:
        g = f * gain
    return g if flip_filter else g.flip([0, 1])


def _pad_or_crop(x: Tensor, px0: int, px1: int, py0: int, py1: int) -> Tensor:
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    h, w = x.shape[2], x.shape[3]
    return x[:, :, max(-py0, 0): h - max(-py1, 0), max(-px0, 0): w - max(-px1, 0)]


def upfirdn2d(x: Tensor, f: Tensor, upx: int, upy: int, downx: int, downy: int, px0: int, px1: int,
              py0: int, py1: int, flip_filter: bool, gain: float) -> Tensor:
    """x: [N, C, H, W]; f: [k] (separable) or [k_y, k_x]. Arguments fully normalized (the functional
    API fills them in). fp16/bf16 are computed in fp32 and returned in the input dtype."""
    out_dtype = x.dtype
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    N, C, H, W = x.shape
    # 1. zero insertion: each sample followed by up-1 zeros
    x = x.reshape(N, C, H, 1, W, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape(N, C, H * upy, W * upx)
    # 2. padding (negative: cropping)
    x = _pad_or_crop(x, px0, px1, py0, py1)
    # 3. FIR filter, the same on every plane: conv2d over the N*C planes as a batch of one-channel
    #    images (defined for C = 0 too, unlike a depthwise conv with groups=C). conv2d
    #    cross-correlates, so flip for a true convolution.
    f = f.to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    x = x.reshape(N * C, 1, x.shape[2], x.shape[3])
    if f.ndim == 1:
        # gain on the x pass only: the same product as sqrt(gain) per pass, and defined for gain < 0
        x = F.conv2d(x, (f * gain).reshape(1, 1, 1, -1))
        x = F.conv2d(x, f.reshape(1, 1, -1, 1))
    else:
        x = F.conv2d(x, (f * gain)[None, None])
    x = x.reshape(N, C, x.shape[2], x.shape[3])
    # 4. keep every down-th sample
    x = x[:, :, ::downy, ::downx]
    return x.to(out_dtype)
