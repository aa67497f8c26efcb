"""minibatch_std specification: StyleGAN2's minibatch standard deviation layer.

x [N, C, H, W] with group size G (dividing N) and F statistics channels (dividing C):

    y = x.reshape(G, N/G, F, C/F, H, W)       sample i is member i // (N/G) of group i % (N/G)
    s = sqrt(var over the G members + eps)    population variance, per (group, channel, pixel)
    s = mean of s over (C/F channels, H, W)   [N/G, F]
    out = cat([x, s[i % (N/G)] broadcast over H, W], dim=1)       [N, C + F, H, W]

The literal formulation (reshape, mean, cat) and the closed-form gradient the kernels compute:
slow, obviously right, differentiable to any order, float64-capable. fp16/bf16 compute in fp32.
"""
from __future__ import annotations

import torch
from torch import Tensor

EPSILON = 1e-8  # StyleGAN2's: keeps sqrt differentiable at zero variance


def _upcast(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def minibatch_std(x: Tensor, G: int, F: int, eps: float = EPSILON) -> Tensor:
    out_dtype = x.dtype
    x = _upcast(x)
    N, C, H, W = x.shape
    y = x.reshape(G, N // G, F, C // F, H, W)
    y = y - y.mean(dim=0)
    y = (y.square().mean(dim=0) + eps).sqrt()
    y = y.mean(dim=[2, 3, 4])                     # [N/G, F]
    y = y.reshape(N // G, F, 1, 1).repeat(G, 1, H, W)  # [N, F, H, W]: row i is group i % (N/G)
    return torch.cat([x, y], dim=1).to(out_dtype)


def minibatch_std_backward(dout: Tensor, x: Tensor, G: int, F: int, eps: float = EPSILON) -> Tensor:
    """dL/dx from dL/dout, in closed form (csrc/minibatch_std/minibatch_std.h):
    dx = dout[:, :C] + ds[group, slice] * (x - mu) / (G * sd), ds = the statistic channels' gradient
    summed over the group and the pixels, / (C/F * H * W)."""
    out_dtype = x.dtype
    dout, x = _upcast(dout), _upcast(x)
    N, C, H, W = x.shape
    c = C // F
    ds = dout[:, C:].reshape(G, N // G, F, H * W).sum(dim=[0, 3]) / (c * H * W)  # [N/G, F]
    y = x.reshape(G, N // G, F, c, H, W)
    mu = y.mean(dim=0)
    sd = (((y - mu).square()).mean(dim=0) + eps).sqrt()
    dx = ds.reshape(1, N // G, F, 1, 1, 1) * (y - mu) / (G * sd)
    return (dout[:, :C] + dx.reshape(N, C, H, W)).to(out_dtype)
