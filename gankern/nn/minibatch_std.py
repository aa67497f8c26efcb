"""MinibatchStdDev: StyleGAN2's minibatch standard deviation layer (no parameters, no buffers)."""
from __future__ import annotations

import torch
from torch import nn

from .._tensors import autocast_input
from ..ops.minibatch_std import minibatch_std


class MinibatchStdDev(nn.Module):
    """x [N, C, H, W] -> [N, C + num_channels, H, W]: appends each sample group's standard deviation
    (groups of G = min(group_size, N) samples; gankern.ops.minibatch_std). StyleGAN2's
    MinibatchStdLayer, as one fused op with a fused backward."""

    def __init__(self, group_size: int | None = 4, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return minibatch_std(autocast_input(x), self.group_size, self.num_channels)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"
