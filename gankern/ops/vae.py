"""VAE sampling in one pass: reparameterization with in-kernel counter-based noise, and the KL term.

    z  = mu + exp(clamp(logvar) / 2) * eps,   eps = gankern.randn(mu.shape, seed, offset)
    kl = KL(N(mu, exp(logvar)) || N(0, I)) = 0.5 * (mu^2 + exp(logvar) - 1 - logvar), reduced

eps is never stored: the backward pass regenerates it from (seed, offset) (Philox is counter-based,
so any element's noise costs the same to recompute). seed=None draws the seed from torch's default
generator (gankern.random_seed()), so torch.manual_seed governs results.

Custom ops (torch.compile / export see through them):
    gankern::reparameterize      -> z
    gankern::kl_normal           -> kl (reduced, or elementwise for "none")
    gankern::reparameterize_kl   -> (z, kl), reading mu and logvar once
    gankern::vae_backward        -> (dmu, dlogvar) given dL/dkl (and dL/dz, if z was made)
    gankern::reparameterize_backward -> dlogvar given dL/dz (dL/dmu is dL/dz)
KL sums are deterministic: fixed blocks of elements are summed in a fixed order into fp64 partials,
which are added in order (no atomics); fp16/bf16 inputs accumulate in fp32 or wider.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .. import _native, _op, _tables
from .. import _tensors as T
from ..backends import FP32_HALF, register, resolve
from ..reference import vae as ref
from . import _validate as V
from ._validate import seed_bits
from .random import random_seed

REDUCTIONS = ref.REDUCTIONS
DEFAULT_CLAMP = (-30.0, 20.0)


# ---- functional API -----------------------------------------------------------------------------

def _check_pair(mu, logvar) -> None:
    V.tensor(mu, "mu")
    V.tensor(logvar, "logvar")
    V.same_device(mu, "mu", logvar=logvar)
    if mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must have the same shape, got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    if mu.dtype != logvar.dtype:
        raise TypeError(f"mu and logvar must have the same dtype, got {mu.dtype} and {logvar.dtype}")


def _clamp_bounds(logvar_clamp) -> tuple[float, float]:
    if logvar_clamp is None:
        return -math.inf, math.inf
    if not isinstance(logvar_clamp, (tuple, list)) or len(logvar_clamp) != 2:
        raise TypeError(f"logvar_clamp must be a (min, max) pair or None, got {logvar_clamp!r}")
    lo = -math.inf if logvar_clamp[0] is None else V.real(logvar_clamp[0], "logvar_clamp[0]")
    hi = math.inf if logvar_clamp[1] is None else V.real(logvar_clamp[1], "logvar_clamp[1]")
    if lo > hi:
        raise ValueError(f"logvar_clamp must have min <= max, got {logvar_clamp!r}")
    return lo, hi


def _check_reduction(reduction: str, mu: Tensor) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if reduction == "batchmean" and mu.ndim == 0:
        raise ValueError("reduction='batchmean' needs a batch dimension; mu is 0-d")
    return reduction


def _seed_offset(seed, offset) -> tuple[int, int]:
    # A drawn seed is valid by construction and, under torch.compile, symbolic (from .item()):
    # range checks on it would be data-dependent guards, so only user values are checked.
    return random_seed() if seed is None else seed_bits(seed), seed_bits(offset, "offset")


def reparameterize(mu: Tensor, logvar: Tensor, seed: int | None = None, offset: int = 0,
                   logvar_clamp: tuple[float, float] | None = DEFAULT_CLAMP) -> Tensor:
    """z = mu + exp(clamp(logvar) / 2) * eps in one pass, eps = gankern.randn(mu.shape, seed, offset)
    made in-kernel (element i uses Philox counter offset + i // 4; the call consumes
    ceil(numel / 4) counters).

    Args:
        mu, logvar: the same shape and floating dtype, one device. Any layout (the noise follows
            the row-major element order); channel chunks of one tensor are read without a copy.
        seed: 64-bit Philox key; None draws one from torch's default generator.
        offset: first Philox counter.
        logvar_clamp: (min, max) applied to logvar first, latent diffusion's (-30, 20) by default;
            None for no clamp. Its gradient is torch.clamp's (zero where the clamp is active).
    """
    _check_pair(mu, logvar)
    lo, hi = _clamp_bounds(logvar_clamp)
    seed, offset = _seed_offset(seed, offset)
    return _reparameterize(mu, logvar, seed, offset, lo, hi)


def kl_normal(mu: Tensor, logvar: Tensor, reduction: str = "batchmean",
              logvar_clamp: tuple[float, float] | None = None) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) = 0.5 * (mu^2 + exp(logvar) - 1 - logvar), reduced with
    "none" (elementwise), "sum", "mean" (over all elements) or "batchmean" (sum / mu.shape[0]).
    A fused, deterministic reduction accumulating in fp32/fp64. logvar_clamp: optional (min, max)
    applied to logvar first (default none)."""
    _check_pair(mu, logvar)
    reduction = _check_reduction(reduction, mu)
    lo, hi = _clamp_bounds(logvar_clamp)
    return _kl_normal(mu, logvar, reduction, lo, hi)


def reparameterize_kl(mu: Tensor, logvar: Tensor, seed: int | None = None, offset: int = 0,
                      reduction: str = "batchmean",
                      logvar_clamp: tuple[float, float] | None = DEFAULT_CLAMP) -> tuple[Tensor, Tensor]:
    """(z, kl) reading mu and logvar once: reparameterize(mu, logvar, seed, offset, logvar_clamp)
    and kl_normal(mu, logvar, reduction, logvar_clamp). The clamp applies to both, as in latent
    diffusion's DiagonalGaussianDistribution."""
    _check_pair(mu, logvar)
    reduction = _check_reduction(reduction, mu)
    lo, hi = _clamp_bounds(logvar_clamp)
    seed, offset = _seed_offset(seed, offset)
    return _reparameterize_kl(mu, logvar, seed, offset, lo, hi, reduction)


# ---- custom ops -----------------------------------------------------------------------------------

def _contiguous(out, mu):
    """Full-size outputs are contiguous on every backend (the noise contract numbers elements
    row-major, so the kernels write row-major); the fakes below say so."""
    return T.restride_contiguous(out, mu)


def _kl_shape(mu, reduction):
    return mu.shape if reduction == "none" else ()


@_op.custom_op("gankern::reparameterize")
def _reparameterize(mu: Tensor, logvar: Tensor, seed: int, offset: int, lo: float, hi: float) -> Tensor:
    return _contiguous(resolve("reparameterize", mu)(mu, logvar, seed, offset, lo, hi, True, None)[0], mu)


@_reparameterize.register_fake
def _(mu, logvar, seed, offset, lo, hi):
    return torch.empty(mu.shape, dtype=mu.dtype, device=mu.device)


@_op.custom_op("gankern::kl_normal")
def _kl_normal(mu: Tensor, logvar: Tensor, reduction: str, lo: float, hi: float) -> Tensor:
    return _contiguous(resolve("kl_normal", mu)(mu, logvar, 0, 0, lo, hi, False, reduction)[1], mu)


@_kl_normal.register_fake
def _(mu, logvar, reduction, lo, hi):
    return torch.empty(_kl_shape(mu, reduction), dtype=mu.dtype, device=mu.device)


@_op.custom_op("gankern::reparameterize_kl")
def _reparameterize_kl(mu: Tensor, logvar: Tensor, seed: int, offset: int, lo: float, hi: float,
                       reduction: str) -> tuple[Tensor, Tensor]:
    return _contiguous(resolve("reparameterize_kl", mu)(mu, logvar, seed, offset, lo, hi, True, reduction), mu)


@_reparameterize_kl.register_fake
def _(mu, logvar, seed, offset, lo, hi, reduction):
    return (torch.empty(mu.shape, dtype=mu.dtype, device=mu.device),
            torch.empty(_kl_shape(mu, reduction), dtype=mu.dtype, device=mu.device))


@_op.custom_op("gankern::vae_backward")
def _vae_backward(dz: Optional[Tensor], gkl: Optional[Tensor], mu: Tensor, logvar: Tensor, seed: int, offset: int,
                  lo: float, hi: float, reduction: str) -> tuple[Tensor, Tensor]:
    return _contiguous(resolve("vae_backward", mu)(dz, gkl, mu, logvar, seed, offset, lo, hi, reduction), mu)


@_vae_backward.register_fake
def _(dz, gkl, mu, logvar, seed, offset, lo, hi, reduction):
    return (torch.empty(mu.shape, dtype=mu.dtype, device=mu.device),
            torch.empty(mu.shape, dtype=mu.dtype, device=mu.device))


@_op.custom_op("gankern::reparameterize_backward")
def _reparameterize_backward(dz: Tensor, mu: Tensor, logvar: Tensor, seed: int, offset: int, lo: float,
                             hi: float) -> Tensor:
    """dlogvar of reparameterize alone (its dmu is dz itself, which a custom op may not return)."""
    return _contiguous(resolve("reparameterize_backward", mu)(dz, None, mu, logvar, seed, offset, lo, hi, "sum")[1], mu)


@_reparameterize_backward.register_fake
def _(dz, mu, logvar, seed, offset, lo, hi):
    return torch.empty(mu.shape, dtype=mu.dtype, device=mu.device)


# ---- autograd: only mu and logvar are saved; eps is regenerated ------------------------------------

def _setup(ctx, inputs, output, *, kind):
    mu, logvar, *rest = inputs
    ctx.save_for_backward(mu, logvar)
    if kind == "z":
        seed, offset, lo, hi = rest
        reduction = "sum"
    elif kind == "kl":
        reduction, lo, hi = rest
        seed = offset = 0
    else:
        seed, offset, lo, hi, reduction = rest
    ctx.args = (seed, offset, lo, hi, reduction)


def _grads(ctx, dz, gkl):
    mu, logvar = ctx.saved_tensors
    if dz is None and gkl is None:
        return None, None
    if gkl is None:  # z alone: dz/dmu is the identity, so only dlogvar needs a kernel
        seed, offset, lo, hi, _ = ctx.args
        return dz, _reparameterize_backward(dz, mu, logvar, seed, offset, lo, hi)
    return _vae_backward(dz, gkl, mu, logvar, *ctx.args)


def _backward_z(ctx, dz):
    return (*_grads(ctx, dz, None), None, None, None, None)


def _backward_kl(ctx, gkl):
    return (*_grads(ctx, None, gkl), None, None, None)


def _backward_zkl(ctx, dz, gkl):
    return (*_grads(ctx, dz, gkl), None, None, None, None, None)


_reparameterize.register_autograd(
    _backward_z, setup_context=lambda ctx, inputs, output: _setup(ctx, inputs, output, kind="z"))
_kl_normal.register_autograd(
    _backward_kl, setup_context=lambda ctx, inputs, output: _setup(ctx, inputs, output, kind="kl"))
_reparameterize_kl.register_autograd(
    _backward_zkl, setup_context=lambda ctx, inputs, output: _setup(ctx, inputs, output, kind="zkl"))


# ---- backends ----------------------------------------------------------------------------------------
# The three forward ops share one implementation per backend (dispatch keys are the ops' names):
# forward(mu, logvar, seed, offset, lo, hi, want_z, reduction or None) -> (z or None, kl or None);
# the two backward ops share backward(dz, gkl, mu, logvar, seed, offset, lo, hi, reduction).
_FORWARD_OPS = ("reparameterize", "kl_normal", "reparameterize_kl")
_BACKWARD_OPS = ("vae_backward", "reparameterize_backward")

@register(_FORWARD_OPS, "reference")
def _forward_reference(mu, logvar, seed, offset, lo, hi, want_z, reduction):
    z = ref.reparameterize(mu, logvar, seed, offset, lo, hi) if want_z else None
    kl = ref.kl_normal(mu, logvar, reduction, lo, hi) if reduction is not None else None
    return z, kl


register(_BACKWARD_OPS, "reference")(ref.vae_backward)


def _rows(t: Tensor) -> tuple[Tensor, int, int, int]:
    """(t or a contiguous copy, rows, inner, row stride) for the kernels' layout: `rows` runs of
    `inner` contiguous elements. Contiguous tensors are one run; a tensor whose rows are contiguous
    but spaced apart (a channel chunk of [B, 2C, ...]) keeps its storage."""
    n = t.numel()
    if t.is_contiguous() or n <= 1:
        t = t.contiguous()
        return t, 1, n, n
    inner = n // t.shape[0]
    sub = torch.empty((0,) + tuple(t.shape[1:])).stride() if t.ndim > 1 else ()
    if t.ndim > 1 and tuple(t.stride()[1:]) == tuple(sub) and all(s > 0 for s in t.shape):
        return t, t.shape[0], inner, t.stride(0)
    t = t.contiguous()
    return t, 1, n, n


def _row_layout(mu, logvar):
    """mu and logvar (or contiguous copies) and their shared row layout (rows, inner, mu row stride,
    logvar row stride): the layout fields of csrc/vae/vae.h's Params."""
    m, rm, im, sm = _rows(mu)
    v, rv, iv, sv = _rows(logvar)
    if (rm, im) != (rv, iv):  # one is contiguous, the other row-strided: describe both as rows
        if rm == 1:
            rm, im, sm = rv, iv, iv
        else:
            rv, iv, sv = rm, im, im
    return m, v, (rm, im, sm, sv)


def _finish_kl(partials: Tensor, kl_none: Tensor | None, reduction: str, mu: Tensor) -> Tensor:
    if reduction == "none":
        return kl_none
    s = partials.sum()  # fp64, fixed order
    if reduction == "mean":
        s = s / mu.numel() if mu.numel() else s * math.nan
    elif reduction == "batchmean":
        s = s / mu.shape[0] if mu.shape[0] else s * math.nan
    return s.to(mu.dtype)


def _outputs(mu, want_z, reduction, partial_count):
    z = T.empty(mu.shape, dtype=mu.dtype, device=mu.device) if want_z else None
    kl = T.empty(mu.shape, dtype=mu.dtype, device=mu.device) if reduction == "none" else None
    partials = (torch.empty(partial_count, dtype=torch.float64, device=mu.device)
                if reduction not in (None, "none") else None)
    return z, kl, partials


def _grad_args(gkl, reduction, mu):
    """(gkl as fp32 contiguous or None, elementwise?, scale) for the kernels."""
    if gkl is None:
        return None, False, 1.0
    g = gkl.float().contiguous()
    if reduction == "none":
        return g, True, 1.0
    n = mu.numel()
    scale = {"sum": 1.0, "mean": 1.0 / n if n else math.nan,
             "batchmean": 1.0 / mu.shape[0] if mu.ndim and mu.shape[0] else math.nan}[reduction]
    return g, False, scale


# Elements per fp64 KL partial sum of each native backend (a fixed blocking: deterministic sums).
_KL_BLOCK = {"cpu": _tables.scalar("VAE_KL_BLOCK_CPU"), "cuda": _tables.scalar("VAE_KL_BLOCK_CUDA")}


def _register_native(backend):
    """The cpu and cuda backends: the same Params to the same entry points of either module."""
    blk = _KL_BLOCK[backend]
    # the CPU kernels load and store fp32, bf16 or fp16 (csrc/common/cpu_convert.h), math in fp32
    dtypes = dict(cpu_dtypes=FP32_HALF) if backend == "cpu" else {}

    @register(_FORWARD_OPS, backend, **dtypes)
    def forward(mu, logvar, seed, offset, lo, hi, want_z, reduction):
        m, v, (rows, inner, mu_rs, lv_rs) = _row_layout(mu, logvar)
        z, kl, partials = _outputs(mu, want_z, reduction, (mu.numel() + blk - 1) // blk)
        _native.entry(backend, "vae.forward")(
            mu, mu=m, logvar=v, z=z, kl=kl, kl_partials=partials, rows=rows, inner=inner, mu_rs=mu_rs, lv_rs=lv_rs,
            seed=seed, offset=offset, lv_lo=lo, lv_hi=hi)
        return z, (_finish_kl(partials, kl, reduction, mu) if reduction is not None else None)

    @register(_BACKWARD_OPS, backend, **dtypes)
    def backward(dz, gkl, mu, logvar, seed, offset, lo, hi, reduction):
        m, v, (rows, inner, mu_rs, lv_rs) = _row_layout(mu, logvar)
        dz = dz.to(mu.dtype).contiguous() if dz is not None else None
        g, elem, scale = _grad_args(gkl, reduction, mu)
        dlv = T.empty(mu.shape, dtype=mu.dtype, device=mu.device)
        dmu = dz if g is None else T.empty(mu.shape, dtype=mu.dtype, device=mu.device)  # without KL, dmu = dz
        _native.entry(backend, "vae.backward")(
            mu, dz=dz, gkl=g, gkl_elementwise=elem, gkl_scale=scale, mu=m, logvar=v,
            dmu=None if g is None else dmu, dlv=dlv, rows=rows, inner=inner, mu_rs=mu_rs, lv_rs=lv_rs,
            seed=seed, offset=offset, lv_lo=lo, lv_hi=hi)
        return dmu, dlv


_register_native("cpu")
_register_native("cuda")


@register(_FORWARD_OPS, "triton")
def _forward_triton(mu, logvar, seed, offset, lo, hi, want_z, reduction):
    from ..triton import vae as tk
    m, v, lay = _row_layout(mu, logvar)
    z, kl, partials = _outputs(mu, want_z, reduction, tk.partial_count(mu.numel()))
    tk.forward(m, v, z, kl, partials, lay, seed, offset, lo, hi)
    return z, (_finish_kl(partials, kl, reduction, mu) if reduction is not None else None)


@register(_BACKWARD_OPS, "triton")
def _backward_triton(dz, gkl, mu, logvar, seed, offset, lo, hi, reduction):
    from ..triton import vae as tk
    m, v, lay = _row_layout(mu, logvar)
    dz = dz.to(mu.dtype).contiguous() if dz is not None else None
    g, elem, scale = _grad_args(gkl, reduction, mu)
    dlv = T.empty(mu.shape, dtype=mu.dtype, device=mu.device)
    dmu = dz if g is None else T.empty(mu.shape, dtype=mu.dtype, device=mu.device)
    tk.backward(dz, g, elem, scale, m, v, None if g is None else dmu, dlv, lay, seed, offset, lo, hi)
    return dmu, dlv
