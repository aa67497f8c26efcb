"""bias_act specification: StyleGAN2's fused bias + activation + gain + clamp.

    y = clamp(act(x + b) * gain, -clamp, clamp)     (b broadcast along `dim`; clamp=None: no clamp)

Fully argument-normalized signature (the functional API fills in defaults). Computation happens
in the input dtype for fp32/fp64 and in fp32 for fp16/bf16, like the kernels.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .activations import get


def _upcast(t: Tensor | None) -> Tensor | None:
    if t is not None and t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    return t


def _z(x: Tensor, b: Tensor | None, dim: int) -> Tensor:
    if b is None:
        return x
    shape = [1] * x.ndim
    shape[dim] = -1
    return x + b.to(x.dtype).reshape(shape)


def bias_act(x: Tensor, b: Tensor | None, dim: int, act: str, alpha: float, gain: float,
             clamp: float | None) -> Tensor:
    out_dtype = x.dtype
    x, b = _upcast(x), _upcast(b)
    y = get(act).fn(_z(x, b, dim), alpha)
    if gain != 1:
        y = y * gain
    if clamp is not None:
        y = y.clamp(-clamp, clamp)
    return y.to(out_dtype)


def bias_act_backward(dy: Tensor, x: Tensor, b: Tensor | None, dim: int, act: str, alpha: float,
                      gain: float, clamp: float | None) -> Tensor:
    """dL/dx from dL/dy, in closed form (differentiable again: the kernels' second order uses it)."""
    out_dtype = x.dtype
    dy, x, b = _upcast(dy), _upcast(x), _upcast(b)
    a = get(act)
    z = _z(x, b, dim)
    dx = dy * a.grad(z, alpha) * gain
    if clamp is not None:
        v = a.fn(z, alpha) * gain
        dx = dx * ((v >= -clamp) & (v <= clamp)).to(dx.dtype)  # torch.clamp's inclusive mask
    return dx.to(out_dtype)
