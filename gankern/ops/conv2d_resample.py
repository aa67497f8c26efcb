"""conv2d_resample: a 2-D convolution with FIR upsampling/downsampling (StyleGAN2's semantics).

The specification is gankern.reference.conv2d_resample: upsample + pad + filter (upfirdn2d), a valid
convolution at the upsampled resolution, then filter + downsample. Computed that way, the
convolution runs on up^2 times more pixels than needed. This module computes the same result in the
cheap order, using that the convolution and the FIR filter are both linear shift-invariant maps on
the upsampled grid (so they commute) and a 1x1 convolution commutes with every spatial op:

    1x1 weights, down only:  downsample (upfirdn2d) -> 1x1 conv        (conv on 1/down^2 the pixels)
    1x1 weights, up only:    1x1 conv -> upsample (upfirdn2d)          (conv before the pixels grow)
    down > 1 (no up):        filter + pad (upfirdn2d) -> conv with stride `down`
    up > 1:                  transposed conv with stride `up` -> filter (upfirdn2d) [-> downsample]
    no resampling:           conv2d (its own padding when symmetric and >= 0, else upfirdn2d pads)

No custom op: the pieces (torch convolutions, gankern.upfirdn2d) are differentiable to any order,
so autograd gives the gradients R1 and path-length regularization need.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..reference.conv2d_resample import centring_padding
from . import _validate as V
from . import upfirdn2d as U


def _scale_factor(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int >= 1, got {v!r}")
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    return v


def _check_weight(x: Tensor, w, groups) -> Tensor:
    V.tensor(w, "w")
    V.same_device(x, "x", w=w)
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"groups must be an int >= 1, got {groups!r}")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if w.ndim != 4:
        raise ValueError(f"w must be a 4-D [C_out, C_in // groups, kh, kw] tensor, got shape {tuple(w.shape)}")
    if w.shape[1] * groups != x.shape[1] or w.shape[0] % groups != 0:
        raise ValueError(f"w of shape {tuple(w.shape)} with groups={groups} does not fit x with {x.shape[1]} "
                         f"channels: need w.shape[1] * groups == C_in and groups dividing w.shape[0]")
    return w


def _check_output_size(x: Tensor, k_hw, f_hw, up: int, down: int, pad, padding) -> None:
    """The naive order's sizes per axis: pad/upsample/filter, valid conv, filter/downsample; each
    must leave at least one sample (torch's convolutions would fail with a less clear error)."""
    H, W = x.shape[2], x.shape[3]
    if H < 1 or W < 1:
        raise ValueError(f"x must have at least one row and column, got shape {tuple(x.shape)}")
    for size, k, f, p0, p1 in ((H, k_hw[0], f_hw[0], pad[2], pad[3]), (W, k_hw[1], f_hw[1], pad[0], pad[1])):
        n = size * up + p0 + p1 - (f if up > 1 else 1) + 1  # after upsampling, padding and filtering
        n = n - k + 1                                        # after the valid convolution
        if down > 1:
            n = (n - f) // down + 1 if n >= f else 0         # after the down filter
        if n < 1:
            raise ValueError(f"conv2d_resample of a {H}x{W} image with a {k_hw[0]}x{k_hw[1]} kernel, up={up}, "
                             f"down={down}, padding={padding} leaves no output; pad more or crop less")


def _conv(x: Tensor, w: Tensor, flip_weight: bool, groups: int, stride: int = 1, padding=0) -> Tensor:
    """torch's conv2d cross-correlates: flip the weight for a true convolution."""
    return F.conv2d(x, w if flip_weight else w.flip([2, 3]), stride=stride, padding=padding, groups=groups)


def _conv_transpose(x: Tensor, w: Tensor, flip_weight: bool, groups: int, stride: int, padding) -> Tensor:
    """Zero insertion by `stride` then a full convolution, cropped by `padding` on each side.

    conv_transpose2d takes its weight as [C_in, C_out // groups, kh, kw] and convolves (not
    correlates): so the per-group [C_out/g, C_in/g] blocks are transposed, and the taps flipped when
    the caller wants a cross-correlation (flip_weight=True)."""
    co, ci_g, kh, kw = w.shape
    wt = w.reshape(groups, co // groups, ci_g, kh, kw).transpose(1, 2).reshape(groups * ci_g, co // groups, kh, kw)
    if flip_weight:
        wt = wt.flip([2, 3])
    return F.conv_transpose2d(x, wt, stride=stride, padding=padding, groups=groups)


def conv2d_resample(x: Tensor, w: Tensor, f: Tensor | None = None, up: int = 1, down: int = 1, padding=0,
                    groups: int = 1, flip_weight: bool = True, flip_filter: bool = False) -> Tensor:
    """2-D convolution with optional FIR upsampling and downsampling (StyleGAN2's conv2d_resample).

    Args:
        x: [N, C_in, H, W] floating point (NCHW or channels_last).
        w: [C_out, C_in // groups, kh, kw]; cast to x's dtype.
        f: the resampling filter (from `setup_filter`: 1-D separable or 2-D); None = identity. It
            is used only when up > 1 or down > 1.
        up, down: ints >= 1.
        padding: int, [x, y] or [x0, x1, y0, y1] (negative crops), applied once, before the
            convolution, at the upsampled resolution; centring terms for the filter are added.
        groups: grouped convolution, as torch.nn.functional.conv2d.
        flip_weight: True: cross-correlation (= torch conv2d); False: true convolution.
        flip_filter: False: the filter convolves; True: it cross-correlates.
    Result equals gankern.reference.conv2d_resample (upsample, pad, filter, conv, filter, downsample).
    """
    x = U._x(x)
    w = _check_weight(x, w, groups).to(x.dtype)
    fw, fh = U.filter_size(f)
    f = U._filter(f, x)
    up, down = _scale_factor(up, "up"), _scale_factor(down, "down")
    for name, v in (("flip_weight", flip_weight), ("flip_filter", flip_filter)):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    x0, x1, y0, y1 = centring_padding(U._padding(padding), (fw, fh), up, down)
    kh, kw = w.shape[2], w.shape[3]
    pad = [x0, x1, y0, y1]
    _check_output_size(x, (kh, kw), (fh, fw), up, down, pad, padding)

    if kh == 1 and kw == 1 and up == 1 and down > 1:
        x = U.upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter)
        return _conv(x, w, flip_weight, groups)
    if kh == 1 and kw == 1 and up > 1 and down == 1:
        x = _conv(x, w, flip_weight, groups)
        return U.upfirdn2d(x, f, up=up, padding=pad, flip_filter=flip_filter, gain=up * up)
    if up == 1 and down > 1:
        x = U.upfirdn2d(x, f, padding=pad, flip_filter=flip_filter)
        return _conv(x, w, flip_weight, groups, stride=down)
    if up > 1 and x.shape[1] == 0:  # conv_transpose2d refuses a weight with no input channels
        x = U.upfirdn2d(x, f, up=up, padding=pad, flip_filter=flip_filter, gain=up * up)
        x = _conv(x, w, flip_weight, groups)
        return U.upfirdn2d(x, f, down=down, flip_filter=flip_filter) if down > 1 else x
    if up > 1:
        # The transposed conv's full output starts kw-1 (kh-1) samples before the naive order's
        # valid conv and ends kw-up (kh-up) after it: shift the filter's padding by those amounts.
        # Crop what both sides give up inside the transposed conv (its `padding`), not after it.
        x0, x1, y0, y1 = x0 - (kw - 1), x1 - (kw - up), y0 - (kh - 1), y1 - (kh - up)
        tx, ty = max(min(-x0, -x1), 0), max(min(-y0, -y1), 0)
        x = _conv_transpose(x, w, flip_weight, groups, stride=up, padding=[ty, tx])
        x = U.upfirdn2d(x, f, padding=[x0 + tx, x1 + tx, y0 + ty, y1 + ty], flip_filter=flip_filter, gain=up * up)
        if down > 1:
            x = U.upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x
    if x0 == x1 and y0 == y1 and x0 >= 0 and y0 >= 0:
        return _conv(x, w, flip_weight, groups, padding=[y0, x0])
    return _conv(U.upfirdn2d(x, None, padding=pad), w, flip_weight, groups)
