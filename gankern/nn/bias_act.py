"""BiasAct: a learnable bias followed by StyleGAN2's fused activation, gain and clamp."""
from __future__ import annotations

import torch
from torch import nn

from .._tensors import autocast_input
from ..ops.bias_act import bias_act
from ..reference.activations import get as get_act


class BiasAct(nn.Module):
    """y = clamp(act(x + bias) * gain, -clamp, clamp), bias along `dim` (channels by default).

    `num_features=None` makes a bias-free layer. `lr_multiplier` scales the bias as StyleGAN2's
    equalized learning rate does (the stored parameter is bias / lr_multiplier). Under
    torch.autocast the input is cast to the autocast dtype and the kernel runs in it (the bias
    stays fp32; the math is fp32 on every backend).
    """

    def __init__(self, num_features: int | None = None, act: str = "linear", dim: int = 1,
                 alpha: float | None = None, gain: float | None = None, clamp: float | None = None,
                 bias_init: float = 0.0, lr_multiplier: float = 1.0):
        super().__init__()
        get_act(act)  # validate early
        self.act, self.dim, self.alpha, self.gain, self.clamp = act, dim, alpha, gain, clamp
        self.lr_multiplier = lr_multiplier
        if num_features is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.full([num_features], float(bias_init) / lr_multiplier))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = autocast_input(x)
        b = self.bias
        if b is not None and self.lr_multiplier != 1:
            b = b * self.lr_multiplier
        return bias_act(x, b, dim=self.dim, act=self.act, alpha=self.alpha, gain=self.gain, clamp=self.clamp)

    def extra_repr(self) -> str:
        n = None if self.bias is None else self.bias.shape[0]
        return f"{n}, act={self.act!r}, dim={self.dim}, gain={self.gain}, clamp={self.clamp}"
