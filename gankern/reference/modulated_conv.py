"""modulated_conv2d specification: StyleGAN2's modulated (and demodulated) convolution.

For a batch x [N, I, H, W], a shared weight [O, I, kh, kw] and per-sample styles [N, I]:

    w'[n, o, i, ky, kx] = weight[o, i, ky, kx] * styles[n, i]                 (modulation)
    d[n, o]             = rsqrt(sum_{i, ky, kx} w'[n, o, i, ky, kx]^2 + 1e-8)  (demodulation coefficient)
    w''                 = w' * d[n, o]                                          (when demodulate)
    y[n]                = conv2d_resample(x[n], w''[n], f, up, down, padding)
    out                 = y (+ noise, broadcast over y)

The convolution is linear, so the same y comes from scaling the activations instead of the weight:

    y[n] = conv2d_resample(x[n] * styles[n, :, None, None], weight) * d[n, :, None, None]

StyleGAN2 calls the first form "fused" (one grouped convolution with N groups over per-sample
weights) and the second "non-fused" (one shared convolution, scaling before and after); both are
here, and they are equal up to rounding. gankern adds an optional epilogue to both:
`act(out + bias) * gain`, clipped to [-clamp, clamp] (bias_act's definition), so a synthesis
layer's modconv, noise and bias_act are one call.

conv2d_resample is StyleGAN2's: up > 1: upsample by zero insertion and FIR filter f (gain up^2);
pad; convolve (a cross-correlation when flip_weight, else a true convolution); down > 1: FIR
filter f and keep every down-th sample. Padding is applied once, before the convolution, and the
filter's own padding keeps the image centred (`resample_padding`).

fp16 pre-normalization (StyleGAN2, against overflow in the fp16 convolution): when x is float16
and demodulate is on, weight is first divided by sqrt(I * kh * kw) * max|weight[o]| per output
channel and styles by max|styles[n]| per sample. Demodulation cancels both scalings exactly (up
to the 1e-8), so the result is the same function; this file applies it where StyleGAN2 does,
before modulation (`prenormalize`).

This file is the literal formulation in torch ops (float64-capable, differentiable to any order).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .._tables import real
from . import bias_act as ref_bias_act
from . import conv2d_resample as ref_cr

DEMOD_EPS = real("DEMOD_EPS")


def prenormalize(weight: Tensor, styles: Tensor) -> tuple[Tensor, Tensor]:
    """StyleGAN2's fp16 overflow guard (see the module docstring); a no-op for the result."""
    O, I, kh, kw = weight.shape
    weight = weight * (1 / math.sqrt(I * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
    styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    return weight, styles


def modulate(weight: Tensor, styles: Tensor, demodulate: bool) -> Tensor:
    """The per-sample weights w'' [N, O, I, kh, kw] (w' without demodulation)."""
    w = weight[None] * styles[:, None, :, None, None]
    if demodulate:
        w = w * demod_coefs(weight, styles)[:, :, None, None, None]
    return w


def demod_coefs(weight: Tensor, styles: Tensor) -> Tensor:
    """d [N, O] = rsqrt(sum over (i, ky, kx) of (weight * styles)^2 + 1e-8)."""
    w = weight[None] * styles[:, None, :, None, None]
    return (w.square().sum(dim=[2, 3, 4]) + DEMOD_EPS).rsqrt()


def epilogue(y: Tensor, scale: Tensor | None, noise: Tensor | None, bias: Tensor | None, act: str, alpha: float,
             gain: float, clamp: float | None) -> Tensor:
    """clamp(act(y * scale[n, c] + noise + bias[c]) * gain): the pass after (and, with scale =
    styles and nothing else, before) the shared convolution. noise broadcasts to y's shape."""
    out_dtype = y.dtype
    z = y.float() if y.dtype in (torch.float16, torch.bfloat16) else y
    if scale is not None:
        z = z * scale.to(z.dtype)[:, :, None, None]
    if noise is not None:
        z = z + noise.to(z.dtype)
    return ref_bias_act.bias_act(z, bias, 1, act, alpha, gain, clamp).to(out_dtype)


def resample_padding(f: Tensor | None, up: int, down: int, padding: tuple[int, int, int, int]):
    """conv2d_resample's padding [x0, x1, y0, y1]: the user's, plus what keeps the image centred
    through the up/down filter f (reference/conv2d_resample.py: centring_padding)."""
    return ref_cr.centring_padding(padding, (1, 1) if f is None else (f.shape[-1], f.shape[0]), up, down)


def conv2d_resample(x: Tensor, w: Tensor, f: Tensor | None, up: int, down: int,
                    padding: tuple[int, int, int, int], groups: int, flip_weight: bool, flip_filter: bool) -> Tensor:
    """StyleGAN2's resampling convolution in its literal order (reference/conv2d_resample.py)."""
    f = x.new_ones([1, 1]) if f is None else f.to(x.dtype)
    return ref_cr.conv2d_resample(x, w, f, up, down, resample_padding(f, up, down, padding), groups, flip_weight,
                                  flip_filter)


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool, padding, up: int, down: int,
                     f: Tensor | None, noise: Tensor | None, fused: bool, flip_weight: bool, flip_filter: bool,
                     bias: Tensor | None = None, act: str = "linear", alpha: float = 0.2, gain: float = 1.0,
                     clamp: float | None = None, input_gain: Tensor | None = None) -> Tensor:
    """The whole op, arguments normalized (padding: (x0, x1, y0, y1)); `fused` picks the form.
    input_gain (StyleGAN3, one value) multiplies the demodulated weights, i.e. y."""
    out_dtype = x.dtype
    if x.dtype == torch.float16 and demodulate:
        weight, styles = prenormalize(weight.float(), styles.float())
    if x.dtype in (torch.float16, torch.bfloat16):
        x, weight, styles = x.float(), weight.float(), styles.float()
    weight, styles = weight.to(x.dtype), styles.to(x.dtype)
    N, I, H, W = x.shape
    O = weight.shape[0]
    if fused:
        w = modulate(weight, styles, demodulate).reshape(N * O, I, *weight.shape[2:])
        y = conv2d_resample(x.reshape(1, N * I, H, W), w, f, up, down, padding, N, flip_weight, flip_filter)
        y = y.reshape(N, O, y.shape[2], y.shape[3])
        scale = None
    else:
        y = conv2d_resample(x * styles[:, :, None, None], weight, f, up, down, padding, 1, flip_weight, flip_filter)
        scale = demod_coefs(weight, styles) if demodulate else None
    if input_gain is not None:
        y = y * input_gain.to(y.dtype).reshape(())
    return epilogue(y, scale, noise, bias, act, alpha, gain, clamp).to(out_dtype)
