"""EqualizedLinear / EqualizedConv2d: StyleGAN2's equalized-learning-rate layers.

The parameters are stored unit-scaled and multiplied at run time by a constant gain (He's constant,
1/sqrt(fan_in), times lr_multiplier), so every layer learns at the same rate under Adam. State_dict
names and layouts are those of StyleGAN2/3's FullyConnectedLayer and Conv2dLayer, so their
checkpoints load directly:

    EqualizedLinear:  weight [out, in], bias [out]               (FullyConnectedLayer)
    EqualizedConv2d:  weight [out, in, k, k], bias [out],
                      resample_filter (buffer, setup_filter)     (Conv2dLayer)

The weight gain is never a separate multiply over the weight tensor:
  - linear: one torch.addmm(bias * bias_gain, x, weight.t(), alpha=weight_gain) (BLAS scales the
    product and adds the bias in the same pass), then bias_act for the activation if it is not linear;
  - conv: conv(x, g * w) = g * conv(x, w), and for the positively homogeneous activations (linear,
    relu, lrelu; act(g*z) = g*act(z) for g > 0) act(g*c + b) * a = act(c + b/g) * (a*g): the gain
    moves into bias_act's output gain and the bias (a [C_out] vector) is divided by it. bias_act's
    clamp acts on the final value, which is unchanged, so conv_clamp keeps its meaning. For other
    activations (tanh, sigmoid, ...) the weight is scaled (documented exception: those are not
    homogeneous, so the gain cannot leave the activation's argument).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._tensors import autocast_input
from ..ops.bias_act import bias_act
from ..ops.conv2d_resample import conv2d_resample
from ..ops.upfirdn2d import setup_filter
from ..reference.activations import get as get_act

# Activations with act(g * z) = g * act(z) for every g > 0: the conv's weight gain can move to the
# output gain of bias_act.
HOMOGENEOUS_ACTIVATIONS = frozenset({"linear", "relu", "lrelu"})


def _param(t: torch.Tensor, trainable: bool):
    return nn.Parameter(t) if trainable else t


class EqualizedLinear(nn.Module):
    """y = act(x @ (weight * weight_gain).T + bias * bias_gain), StyleGAN2's FullyConnectedLayer.

    weight_gain = lr_multiplier / sqrt(in_features), bias_gain = lr_multiplier. The stored weight is
    randn / lr_multiplier and the stored bias bias_init / lr_multiplier (StyleGAN3's convention: the
    effective initial bias is bias_init). x: [batch, in_features].
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        get_act(activation)  # validate early
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.lr_multiplier = float(lr_multiplier)
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / self.lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init) / self.lr_multiplier)) if bias else None
        self.weight_gain = self.lr_multiplier / math.sqrt(in_features)
        self.bias_gain = self.lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = autocast_input(x)
        w = self.weight.to(x.dtype)
        if self.bias is not None:
            b = self.bias.to(x.dtype)
            b = b * self.bias_gain if self.bias_gain != 1 else b
        else:
            b = x.new_zeros(())  # addmm with a 0-d input: broadcast, nothing added
        y = torch.addmm(b, x, w.t(), alpha=self.weight_gain)
        return y if self.activation == "linear" else bias_act(y, None, act=self.activation)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"activation={self.activation!r}, lr_multiplier={self.lr_multiplier}")


class EqualizedConv2d(nn.Module):
    """y = clamp(act(conv2d_resample(x, weight * weight_gain) + bias) * act_gain * gain, ±conv_clamp * gain),
    StyleGAN2's Conv2dLayer (padding kernel_size // 2; up/down with the FIR resample_filter).

    weight_gain = 1 / sqrt(in_channels * kernel_size^2); act_gain = the activation's default gain
    (sqrt(2) for (l)relu). As StyleGAN2, the weight is used as a true convolution when up > 1 (the
    transposed convolution needs no flip) and as a cross-correlation otherwise. channels_last stores
    the weight in that layout (convolutions then run channels_last). trainable=False keeps weight and
    bias as buffers (same state_dict keys).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1, resample_filter=(1, 3, 3, 1),
                 conv_clamp: float | None = None, channels_last: bool = False, trainable: bool = True):
        super().__init__()
        get_act(activation)
        self.in_channels, self.out_channels, self.activation = in_channels, out_channels, activation
        self.up, self.down, self.conv_clamp = up, down, conv_clamp
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = get_act(activation).def_gain
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=fmt)
        b = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(b) if b is not None else None
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", b)

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        x = autocast_input(x)
        w, b = self.weight.to(x.dtype), self.bias
        act_gain = self.act_gain * gain
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        fold = self.activation in HOMOGENEOUS_ACTIVATIONS
        if not fold:
            w = w * self.weight_gain
        y = conv2d_resample(x, w, self.resample_filter, up=self.up, down=self.down, padding=self.padding,
                            flip_weight=(self.up == 1))
        if fold:  # act(g*c + b) * a == act(c + b/g) * (a*g) for g > 0
            b = b / self.weight_gain if b is not None else None
            act_gain = act_gain * self.weight_gain
        if b is not None:
            b = b.to(y.dtype)
        return bias_act(y, b, act=self.activation, gain=act_gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"activation={self.activation!r}, up={self.up}, down={self.down}")
