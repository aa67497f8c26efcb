"""Upsample2d / Downsample2d: StyleGAN's FIR resampling layers (upfirdn2d with a fixed filter).

The filter is a buffer named `resample_filter`, as in StyleGAN2/3's layers, so their state_dicts
carry over. Under torch.autocast the input is cast to the autocast dtype and the kernel runs in it
(the filter stays fp32; sums are fp32 on every backend), as torch's own autocast-listed layers do."""
from __future__ import annotations

import torch
from torch import nn

from .._tensors import autocast_input
from ..ops.upfirdn2d import downsample2d, setup_filter, upsample2d


class Upsample2d(nn.Module):
    """x -> upsample2d(x, resample_filter, up, padding): size * up, centred, mean preserved."""

    def __init__(self, up=2, resample_filter=(1, 3, 3, 1), padding=0):
        super().__init__()
        self.up, self.padding = up, padding
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample2d(autocast_input(x), self.resample_filter, up=self.up, padding=self.padding)

    def extra_repr(self) -> str:
        return f"up={self.up}, filter={tuple(self.resample_filter.shape)}, padding={self.padding}"


class Downsample2d(nn.Module):
    """x -> downsample2d(x, resample_filter, down, padding): size / down, centred."""

    def __init__(self, down=2, resample_filter=(1, 3, 3, 1), padding=0):
        super().__init__()
        self.down, self.padding = down, padding
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return downsample2d(autocast_input(x), self.resample_filter, down=self.down, padding=self.padding)

    def extra_repr(self) -> str:
        return f"down={self.down}, filter={tuple(self.resample_filter.shape)}, padding={self.padding}"
