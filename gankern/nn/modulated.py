"""StyleGAN2/3 synthesis layers on gankern.modulated_conv2d, state_dict-compatible with the
published layers.

Parameter and buffer names (StyleGAN2 `networks.py`, StyleGAN3 `networks_stylegan3.py`):

    ModulatedConv2d     weight [O, I, k, k]; affine.weight [I, w_dim], affine.bias [I]
    SynthesisLayer      affine.weight [I, w_dim], affine.bias [I] (bias_init 1), weight [O, I, k, k],
    (StyleGAN2)         bias [O], noise_strength [] and buffer noise_const [res, res] (use_noise),
                        buffer resample_filter (setup_filter([1, 3, 3, 1]): 4x4)
    ToRGBLayer          affine.weight, affine.bias, weight [O, I, k, k], bias [O]
    SynthesisLayer3     affine.weight [I, w_dim], affine.bias [I] (bias_init 1), weight [O, I, k, k],
    (StyleGAN3)         bias [O], buffers magnitude_ema [], up_filter, down_filter

The affine layer is StyleGAN's equalized-learning-rate FullyConnectedLayer (gankern.nn.EqualizedLinear,
bias_init 1).

Where StyleGAN2 runs the modulated conv, noise and bias_act as three steps, these layers make one
gankern call: the noise and the bias + activation + gain + clamp are the modulated conv's
epilogue (one pass after the convolution in either strategy).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._tensors import autocast_input
from ..ops.filtered_lrelu import filtered_lrelu
from .equalized import EqualizedLinear
from ..ops.modulated_conv import modulated_conv2d
from ..ops.upfirdn2d import setup_filter
from ..reference.activations import get as get_act


class ModulatedConv2d(nn.Module):
    """A modulated (and demodulated) convolution with its style affine: y = modconv(x, weight,
    affine(w)). Options as gankern.modulated_conv2d; `fused_modconv=None` lets the op choose."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 3, demodulate: bool = True,
                 up: int = 1, down: int = 1, resample_filter=(1, 3, 3, 1)):
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.up, self.down, self.demodulate = up, down, demodulate
        self.padding = kernel_size // 2
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool | None = None) -> torch.Tensor:
        x = autocast_input(x)
        return modulated_conv2d(x, self.weight, self.affine(w), demodulate=self.demodulate, padding=self.padding,
                                up=self.up, down=self.down, resample_filter=self.resample_filter,
                                flip_weight=self.up == 1, fused_modconv=fused_modconv)


class SynthesisLayer(nn.Module):
    """StyleGAN2's SynthesisLayer: affine -> modulated conv (up 1 or 2) -> noise -> bias + lrelu
    (gain sqrt 2) -> clamp, the last three in the conv's epilogue.

    forward(x, w, noise_mode="random"|"const"|"none", fused_modconv=None, gain=1): StyleGAN2's
    arguments (its default fused_modconv=True is replaced by gankern's measured choice; pass a bool
    to force a strategy). "random" draws [N, 1, res, res] noise from torch's generator, as StyleGAN2.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu", resample_filter=(1, 3, 3, 1),
                 conv_clamp: float | None = None, channels_last: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.resolution, self.up, self.use_noise, self.activation = resolution, up, use_noise, activation
        self.conv_clamp, self.channels_last = conv_clamp, channels_last
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.act_gain = get_act(activation).def_gain
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(
            memory_format=fmt))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", fused_modconv: bool | None = None,
                gain: float = 1) -> torch.Tensor:
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        x = autocast_input(x)
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) * self.noise_strength
        if self.use_noise and noise_mode == "const":
            noise = (self.noise_const * self.noise_strength)[None, None]
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return modulated_conv2d(x, self.weight, styles, padding=self.padding, up=self.up,
                                resample_filter=self.resample_filter, noise=noise, fused_modconv=fused_modconv,
                                flip_weight=self.up == 1, bias=self.bias, act=self.activation,
                                gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}, "
                f"resolution={self.resolution}, up={self.up}, activation={self.activation!r}")


class ToRGBLayer(nn.Module):
    """StyleGAN2's ToRGBLayer: styles scaled by 1/sqrt(I*k*k), modulated conv without
    demodulation, bias (linear), clamp; bias and clamp in the conv's epilogue."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None, channels_last: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim, self.conv_clamp = in_channels, out_channels, w_dim, conv_clamp
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(
            memory_format=fmt))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool | None = None) -> torch.Tensor:
        x = autocast_input(x)
        styles = self.affine(w) * self.weight_gain
        return modulated_conv2d(x, self.weight, styles, demodulate=False, padding=self.padding,
                                fused_modconv=fused_modconv, bias=self.bias, clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}"


class SynthesisLayer3(nn.Module):
    """A StyleGAN3 synthesis layer: affine -> modulated conv (input gain from the magnitude EMA) ->
    filtered_lrelu (bias, upsample with up_filter, lrelu gain sqrt 2, clamp, downsample with
    down_filter).

    Simplified StyleGAN3-T form (what is left out): the filters are given (taps, or loaded from a
    checkpoint with the same tap counts) instead of designed from sampling rates, cutoffs and
    half-widths (StyleGAN3's Kaiser-windowed design), and up/down/padding are given instead of
    derived from the input and output sizes; no per-layer fp16 switch (use autocast or the input's
    dtype) and no `force_fp32`. What matches: the state_dict names and shapes, the magnitude EMA
    (`update_emas`), the pre-normalization-free demodulation (the rms pre-normalization StyleGAN3
    applies before demodulation cancels in it), input_gain = magnitude_ema^-1/2 applied to the
    demodulated weights, and the ToRGB variant (`is_torgb`: styles scaled by 1/sqrt(I*k*k), no
    demodulation, linear activation with gain 1).
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, up_filter=None, down_filter=None, up: int = 2,
                 down: int = 2, padding=0, conv_kernel: int = 3, conv_clamp: float | None = 256,
                 is_torgb: bool = False, magnitude_ema_beta: float = 0.999):
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.is_torgb, self.conv_kernel, self.conv_clamp = is_torgb, conv_kernel, conv_clamp
        self.up_factor, self.down_factor, self.padding = up, down, padding
        self.magnitude_ema_beta = magnitude_ema_beta
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, conv_kernel, conv_kernel]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("magnitude_ema", torch.ones([]))
        self.register_buffer("up_filter", None if up_filter is None else setup_filter(up_filter, separable=True))
        self.register_buffer("down_filter", None if down_filter is None else setup_filter(down_filter, separable=True))

    def forward(self, x: torch.Tensor, w: torch.Tensor, update_emas: bool = False,
                fused_modconv: bool | None = None) -> torch.Tensor:
        x = autocast_input(x)
        if update_emas:
            with torch.no_grad():
                self.magnitude_ema.copy_(x.detach().float().square().mean().lerp(self.magnitude_ema,
                                                                                 self.magnitude_ema_beta))
        input_gain = self.magnitude_ema.rsqrt()
        styles = self.affine(w)
        if self.is_torgb:
            styles = styles * (1 / math.sqrt(self.in_channels * self.conv_kernel ** 2))
        x = modulated_conv2d(x, self.weight, styles, demodulate=not self.is_torgb, padding=self.conv_kernel - 1,
                             fused_modconv=fused_modconv, input_gain=input_gain)
        gain, slope = (1.0, 1.0) if self.is_torgb else (math.sqrt(2), 0.2)
        return filtered_lrelu(x, self.up_filter, self.down_filter, self.bias.to(x.dtype), up=self.up_factor,
                              down=self.down_factor, padding=self.padding, gain=gain, slope=slope,
                              clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}, "
                f"up={self.up_factor}, down={self.down_factor}, is_torgb={self.is_torgb}")
