"""conv2d_resample specification: StyleGAN2's convolution with FIR up/downsampling, the naive order.

    1. upfirdn2d(x, f if up > 1 else identity, up=up, padding=p, gain=up^2)  (zero insertion, pad, filter)
    2. conv2d(., w, groups)                        (valid; cross-correlation when flip_weight)
    3. upfirdn2d(., f, down=down)                  (filter, keep every down-th sample) when down > 1

The padding p is the user's padding plus the amounts that keep the image centred through the
resampling filter (`centring_padding`). All padding happens once, before the convolution. This file
is the literal order (convolution at the full upsampled resolution): slow, differentiable, float64.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .upfirdn2d import upfirdn2d


def centring_padding(pad: tuple[int, int, int, int], filter_wh: tuple[int, int], up: int,
                     down: int) -> tuple[int, int, int, int]:
    """(x0, x1, y0, y1) padding of step 1: the user's padding plus, per axis with a filter of k taps,
    (k + up - 1) // 2 before and (k - up) // 2 after for up > 1 (upsample2d's centring) and
    (k - down + 1) // 2 before and (k - down) // 2 after for down > 1 (downsample2d's)."""
    x0, x1, y0, y1 = pad
    fw, fh = filter_wh
    if up > 1:
        x0, x1 = x0 + (fw + up - 1) // 2, x1 + (fw - up) // 2
        y0, y1 = y0 + (fh + up - 1) // 2, y1 + (fh - up) // 2
    if down > 1:
        x0, x1 = x0 + (fw - down + 1) // 2, x1 + (fw - down) // 2
        y0, y1 = y0 + (fh - down + 1) // 2, y1 + (fh - down) // 2
    return x0, x1, y0, y1


def conv2d_resample(x: Tensor, w: Tensor, f: Tensor, up: int, down: int, pad: tuple[int, int, int, int],
                    groups: int, flip_weight: bool, flip_filter: bool) -> Tensor:
    """x [N, C_in, H, W], w [C_out, C_in // groups, kh, kw], f the resampling filter ([[1]] for none);
    pad already includes the centring terms (`centring_padding`)."""
    x = upfirdn2d(x, f if up > 1 else f.new_ones([1, 1]), up, up, 1, 1, *pad, flip_filter, float(up * up))
    x = F.conv2d(x, w.to(x.dtype) if flip_weight else w.to(x.dtype).flip([2, 3]), groups=groups)
    if down > 1:
        x = upfirdn2d(x, f, 1, 1, down, down, 0, 0, 0, 0, flip_filter, 1.0)
    return x
