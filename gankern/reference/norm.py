"""group_norm_act and batch_norm_act specification.

GroupNorm with fused extras (x: (N, C, *spatial); per-(N, C) tensors broadcast over the spatial dims):

    z = x + temb                                  (temb: time-embedding bias, optional)
    mean, var = moments of z over each (sample, group of C/G channels, spatial)   (biased var)
    h = (z - mean) / sqrt(var + eps) * weight + bias
    h = h * (1 + scale) + shift                   (scale-shift norm, optional)
    y = act(h) + residual                         (residual optional)

BatchNorm: mean/var over (N, spatial) per channel in training mode, the running statistics in
eval mode; y = act((x - mean) / sqrt(var + eps) * weight + bias).

Fully argument-normalized signatures (the functional API fills in defaults). Math in the input
dtype for fp32/fp64 and in fp32 for fp16/bf16, like the kernels; statistics are returned in fp32
(fp64 for fp64 input). The backward of the reference is autograd of this forward.

inf/NaN rules (the kernels follow them): the per-(n, c) coefficients are folded before they meet x,
h = (z - mean) * a + b with a = rstd * weight * (1 + scale), b = bias * (1 + scale) + shift, so an
infinite weight/bias/scale/shift propagates as that formula does (inf * x + inf may be NaN where
the unfolded chain would give inf); the batch statistics of a set holding inf or NaN are NaN, the
mean included (its variance is NaN; torch's mean would be inf), which the running mean then takes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .activations import get


def _upcast(t: Tensor | None) -> Tensor | None:
    if t is not None and t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    return t


def _nc(t: Tensor, x: Tensor) -> Tensor:
    """A (C,) or (N, C) tensor shaped to broadcast against x (N, C, *spatial)."""
    extra = [1] * (x.ndim - 2)
    if t.ndim == 1:
        return t.to(x.dtype).reshape(1, t.shape[0], *extra)
    return t.to(x.dtype).reshape(t.shape[0], t.shape[1], *extra)


def _finish(h: Tensor, act: str, alpha: float, residual: Tensor | None) -> Tensor:
    y = get(act).fn(h, alpha)
    if residual is not None:
        y = y + _upcast(residual).to(y.dtype)
    return y


def _per_channel(t: Tensor | None, N: int, C: int, fill: float, like: Tensor) -> Tensor:
    """A (C,) or (N, C) tensor, or None (= fill), as (N, C) in like's dtype and device."""
    if t is None:
        return torch.full((N, C), fill, dtype=like.dtype, device=like.device)
    if t.dtype != like.dtype:
        t = t.to(like.dtype)
    return t.reshape(1, C).expand(N, C) if t.ndim == 1 else t.reshape(N, C)


def _times(t: Tensor, factor: Tensor | None) -> Tensor:
    """t * factor, an absent factor (None) being 1: left out, as t * 1 is exactly t (NaN, inf and
    signed zeros included). Absent terms are not left out of sums the same way (-0 + 0 is +0),
    nor absent factors of 0 (0 * inf is NaN). The kernel backends' tables come from here, and each
    torch call is host work and, on a GPU, a kernel launch."""
    return t if factor is None else t * factor


def group_coefficients(mean: Tensor, rstd: Tensor, C: int, weight: Tensor | None, bias: Tensor | None,
                       temb: Tensor | None, scale: Tensor | None,
                       shift: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """GroupNorm folded per (n, c): h = ((x + temb - mean) * rstd * weight + bias) * (1 + scale) + shift
    = (x - M) * A + B. mean, rstd: (N, G) of z = x + temb; returns M, A, B as (N, C) in mean's dtype.

    The one Python copy of this arithmetic: the reference forward (A, B) and the torch-side tables of
    the kernel backends (gankern/ops/norm.py) use it; C++ has csrc/norm/norm.h group_coefficients
    (the CPU kernels), Triton triton/norm.py _group_coefficients (its finalize kernel)."""
    N, G = mean.shape
    rs = rstd.repeat_interleave(C // G, dim=1) if C else rstd.new_zeros((N, 0))
    mu = mean.repeat_interleave(C // G, dim=1) if C else mean.new_zeros((N, 0))
    sc1 = None if scale is None else 1 + _per_channel(scale, N, C, 0.0, rs)
    A = _times(_times(rs, None if weight is None else _per_channel(weight, N, C, 1.0, rs)), sc1)
    if bias is None and sc1 is None and shift is None:
        B = torch.zeros_like(rs)  # 0 * 1 + 0
    else:  # (bias or 0) * (1 + scale) + (shift or 0), the zeros kept where they are not exact to drop
        B = _times(_per_channel(bias, N, C, 0.0, rs), sc1)
        B = B + (0.0 if shift is None else _per_channel(shift, N, C, 0.0, rs))
    return mu if temb is None else mu - _per_channel(temb, N, C, 0.0, rs), A, B  # (x - 0 is x)


def group_gradients(Sg: Tensor, Sgxh: Tensor, Sxh: Tensor, HW: int, rstd: Tensor, weight: Tensor | None,
                    bias: Tensor | None, scale: Tensor | None) -> dict[str, Tensor]:
    """GroupNorm backward from the per-(n, c) sums over positions of g = dy * act'(h) (Sg), g * xhat
    (Sgxh) and xhat (Sxh), xhat = (x - M) * rstd. rstd: (N, G). Returns (N, C) tensors: the
    coefficients of dx = g * A2 + (x - M) * B2 + C2, and the per-sample gradients dweight, dbias
    (to be summed over n), dtemb, dscale, dshift.

    The one Python copy (the closed-form backward of the reference, Triton, CUDA and the CPU shapes
    its fused C++ backward does not take); C++: csrc/norm/norm.h group_gradients."""
    N, C = Sg.shape
    G = rstd.shape[1]
    Cg = C // G
    rs = (rstd if rstd.dtype == Sg.dtype else rstd.to(Sg.dtype)).repeat_interleave(Cg, dim=1)
    # absent weight and scale: factors of 1, left out (_times)
    wt = None if weight is None else _per_channel(weight, N, C, 1.0, Sg)
    sc1 = None if scale is None else 1 + _per_channel(scale, N, C, 0.0, Sg)
    cnt = max(Cg * HW, 1)
    gw = sc1 if wt is None else _times(wt, sc1)  # csrc/norm/norm.h group_gradient_weight
    c1 = _times(Sg, gw).reshape(N, G, Cg).sum(-1).repeat_interleave(Cg, dim=1) / cnt
    c2 = _times(Sgxh, gw).reshape(N, G, Cg).sum(-1).repeat_interleave(Cg, dim=1) / cnt
    A2 = _times(_times(rs, wt), sc1)
    bsg = Sg * 0.0 if bias is None else _per_channel(bias, N, C, 0.0, Sg) * Sg  # (0 * Sg is not always 0)
    return dict(A2=A2, B2=-rs * c2 * rs, C2=-rs * c1, dweight=_times(Sgxh, sc1), dbias=_times(Sg, sc1),
                dtemb=A2 * Sg - rs * c2 * Sxh - rs * c1 * HW, dscale=_times(Sgxh, wt) + bsg, dshift=Sg.clone())


def group_norm_act(x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float, act: str,
                   alpha: float, temb: Tensor | None, scale: Tensor | None, shift: Tensor | None,
                   residual: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (y, mean, rstd) with mean/rstd of shape (N, num_groups)."""
    out_dtype = x.dtype
    xf = _upcast(x)
    N, C = xf.shape[:2]
    z = xf if temb is None else xf + _nc(temb, xf)
    zg = z.reshape(N, num_groups, z[0].numel() // num_groups if N else 0)  # explicit: size-0 dims
    mean = zg.mean(-1)
    var = zg.var(-1, unbiased=False)
    rstd = torch.rsqrt(var + eps)
    # the per-(n, c) coefficients folded first, as the kernels do: h = (z - mean) * a + b
    _, a, b = group_coefficients(mean, rstd, C, weight, bias, None, scale, shift)
    h = (zg - mean[..., None]).reshape(xf.shape) * _nc(a, xf) + _nc(b, xf)
    y = _finish(h, act, alpha, residual)
    stat_dtype = torch.float64 if xf.dtype == torch.float64 else torch.float32
    return y.to(out_dtype), mean.to(stat_dtype), rstd.to(stat_dtype)


def batch_norm_act(x: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
                   running_var: Tensor | None, training: bool, eps: float, act: str, alpha: float,
                   residual: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (y, mean, var): the statistics used, per channel; var is the biased batch variance in
    training mode (the caller derives the unbiased one for the running estimate)."""
    out_dtype = x.dtype
    xf = _upcast(x)
    dims = [0] + list(range(2, xf.ndim))
    if training:
        var = xf.var(dims, unbiased=False)
        mean = torch.where(torch.isnan(var), var, xf.mean(dims))  # see the module docstring
    else:
        mean = running_mean.to(xf.dtype, copy=True)  # outputs must not alias the inputs
        var = running_var.to(xf.dtype, copy=True)
    h = (xf - _nc(mean, xf)) * _nc(torch.rsqrt(var + eps), xf)
    if weight is not None:
        h = h * _nc(weight, xf)
    if bias is not None:
        h = h + _nc(bias, xf)
    y = _finish(h, act, alpha, residual)
    stat_dtype = torch.float64 if xf.dtype == torch.float64 else torch.float32
    return y.to(out_dtype), mean.to(stat_dtype), var.to(stat_dtype)
