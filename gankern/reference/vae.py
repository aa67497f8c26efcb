"""VAE sampling specification: reparameterization with counter-based noise, and the KL term.

    eps = gankern.randn(mu.shape, seed, offset)        (gankern/reference/random.py: the contract)
    lv  = clamp(logvar, lo, hi)                         (lo, hi) = logvar_clamp; None: no clamp
    z   = mu + exp(lv / 2) * eps
    kl  = 0.5 * (mu^2 + exp(lv) - 1 - lv)               KL(N(mu, exp(lv)) || N(0, 1)) per element
          reduced: "none" | "sum" | "mean" (over all elements) | "batchmean" (sum / mu.shape[0])

Differentiable by autograd (the gradient of clamp is torch.clamp's: it passes where
lo <= logvar <= hi). Math in the input dtype for fp32/fp64, in fp32 for fp16/bf16, like the kernels;
fp64 inputs get fp64 Box-Muller (the testing reference).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import random as rnd

REDUCTIONS = ("none", "sum", "mean", "batchmean")


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def clamp_logvar(logvar: Tensor, lo: float, hi: float) -> Tensor:
    if lo == -math.inf and hi == math.inf:
        return logvar
    return logvar.clamp(lo, hi)


def eps_like(mu: Tensor, seed: int, offset: int) -> Tensor:
    return rnd.randn(mu.shape, seed, offset, dtype=_compute_dtype(mu), device=mu.device)


def reparameterize(mu: Tensor, logvar: Tensor, seed: int, offset: int, lo: float, hi: float,
                   eps: Tensor | None = None) -> Tensor:
    """z = mu + exp(clamp(logvar) / 2) * eps; eps from (seed, offset) unless given."""
    cd = _compute_dtype(mu)
    if eps is None:
        eps = eps_like(mu, seed, offset)
    lv = clamp_logvar(logvar.to(cd), lo, hi)
    return (mu.to(cd) + torch.exp(0.5 * lv) * eps.to(cd)).to(mu.dtype)


def kl_elementwise(mu: Tensor, logvar: Tensor, lo: float, hi: float) -> Tensor:
    cd = _compute_dtype(mu)
    m, lv = mu.to(cd), clamp_logvar(logvar.to(cd), lo, hi)
    return 0.5 * (m * m + torch.exp(lv) - 1.0 - lv)


def reduce_kl(t: Tensor, reduction: str, shape) -> Tensor:
    if reduction == "none":
        return t
    s = t.sum()
    if reduction == "sum":
        return s
    if reduction == "mean":
        return s / math.prod(shape)
    return s / shape[0]  # batchmean


def kl_normal(mu: Tensor, logvar: Tensor, reduction: str, lo: float, hi: float) -> Tensor:
    return reduce_kl(kl_elementwise(mu, logvar, lo, hi), reduction, mu.shape).to(mu.dtype)


def reparameterize_kl(mu: Tensor, logvar: Tensor, seed: int, offset: int, lo: float, hi: float,
                      reduction: str) -> tuple[Tensor, Tensor]:
    return (reparameterize(mu, logvar, seed, offset, lo, hi), kl_normal(mu, logvar, reduction, lo, hi))


def vae_backward(dz: Tensor | None, gkl: Tensor | None, mu: Tensor, logvar: Tensor, seed: int, offset: int,
                 lo: float, hi: float, reduction: str) -> tuple[Tensor, Tensor]:
    """(dL/dmu, dL/dlogvar) given dL/dz (or None) and dL/dkl (or None) in closed form:
        dmu = dz + g * mu
        dlv = [lo <= logvar <= hi] * (dz * eps * exp(lv / 2) / 2 + g * (exp(lv) - 1) / 2)
    with g = dL/dkl scaled by the reduction (1, 1/numel, 1/shape[0]), per element for "none"."""
    cd = _compute_dtype(mu)
    m, raw = mu.to(cd), logvar.to(cd)
    lv = clamp_logvar(raw, lo, hi)
    dmu = torch.zeros_like(m)
    dlv = torch.zeros_like(m)
    if dz is not None:
        s = torch.exp(0.5 * lv)
        dmu = dmu + dz.to(cd)
        dlv = dlv + dz.to(cd) * eps_like(mu, seed, offset) * 0.5 * s
    if gkl is not None:
        g = reduce_scale(gkl.to(cd), reduction, mu.shape)
        dmu = dmu + g * m
        dlv = dlv + g * 0.5 * (torch.exp(lv) - 1.0)
    dlv = dlv * ((raw >= lo) & (raw <= hi)).to(cd)
    return dmu.to(mu.dtype), dlv.to(logvar.dtype)


def reduce_scale(gkl: Tensor, reduction: str, shape) -> Tensor:
    """The per-element gradient of the reduced KL given its incoming gradient."""
    if reduction == "none" or reduction == "sum":
        return gkl
    if reduction == "mean":
        return gkl / math.prod(shape)
    return gkl / shape[0]
