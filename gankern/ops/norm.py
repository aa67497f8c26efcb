"""group_norm_act and batch_norm_act: normalization fused with activation (and, for GroupNorm, the
time-embedding bias, scale-shift and residual of diffusion UNets).

Kernels see both norms as the same passes (csrc/norm/norm.h): per-(n, c) statistics of x; then
y = act((x - M) * A + B) with small per-(n, c) coefficient tables M, A, B folding mean, rstd,
weight, bias, temb, scale and shift; backward recomputes h instead of saving it, reduces per-(n, c)
sums of g = dy * act'(h), and applies dx = g * A2 + (x - M) * B2 + C2.

Every kernel backend takes one route (_register_backend): the backend's whole-GroupNorm entry
point where it has one for the call (_Kernels.group_forward / group_backward), else the generic
passes with the tables computed here in torch, float64. The GroupNorm coefficient and gradient
arithmetic exists once per language:
  - Python: gankern/reference/norm.py group_coefficients / group_gradients, used by the reference
    forward, the reference (closed-form) backward, and the torch-side tables of every backend's
    generic passes: the cuda backend's GroupNorm, the triton backend's backward, and the CPU
    backward of the shapes its fused C++ backward does not take (channels_last, large groups);
  - C++: csrc/norm/norm.h group_coefficients / group_gradients, used by the CPU entry points
    group_norm_forward (every CPU GroupNorm forward) and group_norm_backward (fused, NCHW);
  - Triton: triton/norm.py _group_coefficients, in the finalize kernel of the triton forward.
BatchNorm's tables are computed here (_bn_coefficients) and packed by _kernel_tables for every backend.

Storage dtypes: the CPU kernels load and store float32, bfloat16 or float16 with fp32 math; the GPU
kernels float32/float16/bfloat16. Statistics and parameter gradients are fp32.
Weight/bias gradients are per-(n, c) partial sums reduced over n by torch: deterministic, no atomics.
"""
from __future__ import annotations

import math
from typing import Optional, Protocol

import torch
from torch import Tensor

from .. import _native, _op
from .. import _tensors as T
from ..backends import register, resolve_nonempty
from ..reference import activations as ref_acts
from ..reference import norm as ref
from . import _validate as V

_STAT = torch.float32


# Activations the norm kernels implement (csrc/norm/norm.h: NormActs).
ACTS = ("linear", "relu", "lrelu", "silu", "gelu", "gelu_tanh")


def _act(act, alpha):
    if act is None:
        act = "linear"
    if act not in ACTS:
        raise ValueError(f"act must be None or one of {', '.join(ACTS)}, got {act!r}")
    a = ref_acts.get(act)
    alpha = (0.2 if act == "lrelu" else a.def_alpha) if alpha is None else V.real(alpha, "alpha")
    return act, alpha


def _param(t, name, C, x):
    if t is None:
        return None
    V.tensor(t, name)
    V.same_device(x, "x", **{name: t})
    if t.ndim != 1 or t.shape[0] != C:
        raise ValueError(f"{name} must have shape [C] = [{C}], got {tuple(t.shape)}")
    return t


def _per_sample(t, name, x):
    """A per-(N, C) extra: (N, C) or (N, C, 1, ..., 1); returned as (N, C)."""
    if t is None:
        return None
    V.tensor(t, name)
    V.same_device(x, "x", **{name: t})
    N, C = x.shape[:2]
    if t.ndim < 2 or tuple(t.shape[:2]) != (N, C) or any(s != 1 for s in t.shape[2:]) or t.ndim > x.ndim:
        raise ValueError(f"{name} must have shape (N, C) = ({N}, {C}) or ({N}, {C}, 1, ...), got {tuple(t.shape)}")
    return t.reshape(N, C)


def _eps(eps):
    return V.real(eps, "eps", min_value=0.0, min_inclusive=False)


def group_norm_act(x: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None,
                   eps: float = 1e-5, act: str | None = "silu", *, alpha: float | None = None,
                   temb: Tensor | None = None, scale: Tensor | None = None, shift: Tensor | None = None,
                   residual: Tensor | None = None) -> Tensor:
    """y = act(GroupNorm(x + temb) * (1 + scale) + shift) + residual, in one pass over x.

    Args:
        x: (N, C, *spatial) with 0-3 spatial dims, NCHW or channels_last; float32, float16 or
            bfloat16 (math and statistics in fp32).
        num_groups: G, dividing C.
        weight, bias: per-channel affine, shape [C] (None: 1 and 0).
        eps: > 0, added to the group variance.
        act: None (identity), "silu", "gelu" (exact erf), "gelu_tanh", "relu" or "lrelu".
        alpha: lrelu negative slope (default 0.2).
        temb: (N, C) bias added to x before the statistics (DDPM time embedding).
        scale, shift: (N, C), applied after the affine as h * (1 + scale) + shift.
        residual: tensor of x's shape added to the output.
    """
    V.tensor(x, "x", ndim_min=2)
    if x.ndim > 5:
        raise ValueError(f"x must be (N, C, *spatial) with at most 3 spatial dims, got shape {tuple(x.shape)}")
    N, C = x.shape[:2]
    if isinstance(num_groups, bool) or not isinstance(num_groups, int):
        raise TypeError(f"num_groups must be an int, got {type(num_groups).__name__}")
    if num_groups <= 0 or C % num_groups != 0:
        raise ValueError(f"num_groups must be positive and divide the channel count C={C}, got {num_groups}")
    act, alpha = _act(act, alpha)
    weight, bias = _param(weight, "weight", C, x), _param(bias, "bias", C, x)
    temb, scale, shift = _per_sample(temb, "temb", x), _per_sample(scale, "scale", x), _per_sample(shift, "shift", x)
    if residual is not None:
        V.tensor(residual, "residual")
        V.same_device(x, "x", residual=residual)
        if residual.shape != x.shape:
            raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    eps = _eps(eps)
    y, _, _ = _group_norm_act(x, num_groups, weight, bias, eps, act, alpha, temb, scale, shift, residual)
    return y


def batch_norm_act(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None = None,
                   bias: Tensor | None = None, training: bool = False, momentum: float = 0.1, eps: float = 1e-5,
                   act: str | None = "relu", *, alpha: float | None = None,
                   residual: Tensor | None = None) -> Tensor:
    """y = act(BatchNorm(x)) + residual, arguments as torch.nn.functional.batch_norm.

    training=True normalizes with the batch statistics and, when running_mean/running_var are
    given, updates them in place as torch does: r = (1 - momentum) * r + momentum * stat, with the
    unbiased batch variance. training=False normalizes with the running statistics.
    """
    V.tensor(x, "x", ndim_min=2)
    if x.ndim > 5:
        raise ValueError(f"x must be (N, C, *spatial) with at most 3 spatial dims, got shape {tuple(x.shape)}")
    C = x.shape[1]
    act, alpha = _act(act, alpha)
    weight, bias = _param(weight, "weight", C, x), _param(bias, "bias", C, x)
    running_mean = _param(running_mean, "running_mean", C, x)
    running_var = _param(running_var, "running_var", C, x)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be given or both be None")
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {type(training).__name__}")
    if not training and running_mean is None:
        raise ValueError("training=False needs running_mean and running_var")
    momentum = V.real(momentum, "momentum", min_value=0.0)
    eps = _eps(eps)
    if residual is not None:
        V.tensor(residual, "residual")
        V.same_device(x, "x", residual=residual)
        if residual.shape != x.shape:
            raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    if torch.is_grad_enabled():
        for name, t in (("running_mean", running_mean), ("running_var", running_var)):
            if t is not None and t.requires_grad:
                raise ValueError(f"{name} requires grad, but the running statistics are not differentiable (as "
                                 "in torch); pass a buffer or a detached tensor")
    count = x.numel() // max(C, 1)
    if training and count == 1:  # torch's rule; an empty batch gives an empty output (and no update)
        raise ValueError(f"batch_norm_act in training mode needs more than 1 value per channel, got x of shape "
                         f"{tuple(x.shape)}")
    y, mean, var = _batch_norm_act(x, weight, bias, running_mean, running_var, training, eps, act, alpha,
                                   residual)
    if training and running_mean is not None and count > 0:
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(T.cast(mean, running_mean.dtype), alpha=momentum)
            unbiased = var * (count / (count - 1))
            running_var.mul_(1 - momentum).add_(T.cast(unbiased, running_var.dtype), alpha=momentum)
    return y


# ---- custom ops ------------------------------------------------------------------------------

def _stat_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else _STAT


def _channels_last(x) -> bool:
    return x.ndim > 2 and x.movedim(1, -1).is_contiguous() and not x.is_contiguous()


def _out_strides(x) -> tuple:
    """y and dx: NCHW or channels_last as x (the kernels read and write both natively); any other
    layout is copied to contiguous first (_layout), so its outputs are contiguous."""
    return tuple(x.stride()) if x.is_contiguous() or _channels_last(x) else T.contiguous_strides(x.shape)


@_op.custom_op("gankern::group_norm_act")
def _group_norm_act(x: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                    act: str, alpha: float, temb: Optional[Tensor], scale: Optional[Tensor], shift: Optional[Tensor],
                    residual: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    return T.restride(resolve_nonempty("group_norm_act", x)(x, num_groups, weight, bias, eps, act, alpha, temb, scale,
                                                          shift, residual), x, _out_strides(x))


@_group_norm_act.register_fake
def _(x, num_groups, weight, bias, eps, act, alpha, temb, scale, shift, residual):
    st = x.new_empty((x.shape[0], num_groups), dtype=_stat_dtype(x))
    return T.empty_strided_like(x, _out_strides(x)), st, torch.empty_like(st)


@_op.custom_op("gankern::group_norm_act_backward")
def _group_norm_act_backward(dy: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, num_groups: int,
                             weight: Optional[Tensor], bias: Optional[Tensor], eps: float, act: str, alpha: float,
                             temb: Optional[Tensor], scale: Optional[Tensor],
                             shift: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dweight [C], dbias [C], dtemb [N, C], dscale [N, C], dshift [N, C]); parameter gradients
    in the statistics dtype, computed whether or not the parameter is given (they are O(N * C))."""
    dx_etc = resolve_nonempty("group_norm_act_backward", x)(dy, x, mean, rstd, num_groups, weight, bias, eps, act,
                                                            alpha, temb, scale, shift)
    return T.restride(dx_etc, x, _out_strides(x))


@_group_norm_act_backward.register_fake
def _(dy, x, mean, rstd, num_groups, weight, bias, eps, act, alpha, temb, scale, shift):
    N, C = x.shape[:2]
    sd = _stat_dtype(x)
    pc = x.new_empty((C,), dtype=sd)
    ps = x.new_empty((N, C), dtype=sd)
    return (T.empty_strided_like(x, _out_strides(x)), pc, torch.empty_like(pc), ps, torch.empty_like(ps),
            torch.empty_like(ps))


@_op.custom_op("gankern::batch_norm_act")
def _batch_norm_act(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],
                    running_var: Optional[Tensor], training: bool, eps: float, act: str, alpha: float,
                    residual: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean [C], var [C]): the statistics used; var is biased in training mode."""
    return T.restride(resolve_nonempty("batch_norm_act", x)(x, weight, bias, running_mean, running_var, training, eps,
                                                            act, alpha, residual), x, _out_strides(x))


@_batch_norm_act.register_fake
def _(x, weight, bias, running_mean, running_var, training, eps, act, alpha, residual):
    st = x.new_empty((x.shape[1],), dtype=_stat_dtype(x))
    return T.empty_strided_like(x, _out_strides(x)), st, torch.empty_like(st)


@_op.custom_op("gankern::batch_norm_act_backward")
def _batch_norm_act_backward(dy: Tensor, x: Tensor, mean: Tensor, var: Tensor, weight: Optional[Tensor],
                             bias: Optional[Tensor], training: bool, eps: float, act: str,
                             alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight [C], dbias [C]) in the statistics dtype."""
    return T.restride(resolve_nonempty("batch_norm_act_backward", x)(dy, x, mean, var, weight, bias, training, eps,
                                                                     act, alpha), x, _out_strides(x))


@_batch_norm_act_backward.register_fake
def _(dy, x, mean, var, weight, bias, training, eps, act, alpha):
    pc = x.new_empty((x.shape[1],), dtype=_stat_dtype(x))
    return T.empty_strided_like(x, _out_strides(x)), pc, torch.empty_like(pc)


# ---- autograd --------------------------------------------------------------------------------

def _cast(g, like):
    if like is None:
        return None
    g = T.cast(g, like.dtype)
    return g if g.shape == like.shape else g.reshape(like.shape)


def _gn_setup(ctx, inputs, output):
    x, G, w, b, eps, act, alpha, temb, scale, shift, residual = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, mean, rstd, w, b, temb, scale, shift)
    ctx.params = (G, eps, act, alpha)
    ctx.res_dtype = None if residual is None else residual.dtype


def _gn_backward(ctx, dy, _dmean, _drstd):
    if dy is None:  # no gradient reached y (not materialized as zeros: register_autograd below)
        return (None,) * 11
    x, mean, rstd, w, b, temb, scale, shift = ctx.saved_tensors
    G, eps, act, alpha = ctx.params
    dx, dw, db, dt, ds, dsh = _group_norm_act_backward(
        dy, x, mean, rstd, G, w, b, eps, act, alpha, temb, scale, shift)
    need = ctx.needs_input_grad
    dres = dy.to(ctx.res_dtype) if ctx.res_dtype is not None and need[10] else None
    return (dx if need[0] else None, None, _cast(dw, w) if need[2] else None, _cast(db, b) if need[3] else None,
            None, None, None, _cast(dt, temb) if need[7] else None, _cast(ds, scale) if need[8] else None,
            _cast(dsh, shift) if need[9] else None, dres)


# the statistics outputs are non-differentiable and their gradients never read: not materialized
_group_norm_act.register_autograd(_gn_backward, setup_context=_gn_setup, materialize_grads=False)


def _bn_setup(ctx, inputs, output):
    x, w, b, rm, rv, training, eps, act, alpha, residual = inputs
    _, mean, var = output
    ctx.mark_non_differentiable(mean, var)
    ctx.save_for_backward(x, mean, var, w, b)
    ctx.params = (training, eps, act, alpha)
    ctx.res_dtype = None if residual is None else residual.dtype


def _bn_backward(ctx, dy, _dmean, _dvar):
    if dy is None:  # no gradient reached y (not materialized as zeros: register_autograd below)
        return (None,) * 10
    x, mean, var, w, b = ctx.saved_tensors
    training, eps, act, alpha = ctx.params
    dx, dw, db = _batch_norm_act_backward(dy, x, mean, var, w, b, training, eps, act, alpha)
    need = ctx.needs_input_grad
    dres = dy.to(ctx.res_dtype) if ctx.res_dtype is not None and need[9] else None
    return (dx if need[0] else None, _cast(dw, w) if need[1] else None, _cast(db, b) if need[2] else None,
            None, None, None, None, None, None, dres)


_batch_norm_act.register_autograd(_bn_backward, setup_context=_bn_setup, materialize_grads=False)


# ---- reference backend -----------------------------------------------------------------------

register("group_norm_act", "reference")(ref.group_norm_act)
register("batch_norm_act", "reference")(ref.batch_norm_act)


# ---- kernel backends: shared table arithmetic ------------------------------------------------

def _norm_layout(x):
    """(dense x, N, C, HW, channels_last): the Shape of csrc/norm/norm.h."""
    N, C = x.shape[:2]
    HW = math.prod(x.shape[2:])
    if x.is_contiguous():
        return x, N, C, HW, False
    if x.ndim > 2 and x.movedim(1, -1).is_contiguous():
        return x, N, C, HW, True
    return x.contiguous(), N, C, HW, False


def _gn_tables(x, mean, rstd, G, w, b, temb, scale, shift, dt):
    """Per-(n, c) tables in dtype dt: xhat = (x - M) * P and h = (x - M) * A + B
    (gankern/reference/norm.py group_coefficients)."""
    rstd = T.cast(rstd, dt)
    M, A, B = ref.group_coefficients(T.cast(mean, dt), rstd, x.shape[1], w, b, temb, scale, shift)
    return dict(M=M, P=rstd.repeat_interleave(x.shape[1] // G, dim=1), A=A, B=B)


def _bn_coefficients(var, w, eps, dt):
    """(rs, wt, A) per channel (C,) in dt: h = (x - mean) * A + B with A = rs * wt, rs = rsqrt(var + eps);
    wt None for no weight (a multiplication by one is exact: it is left out)."""
    rs = torch.rsqrt(T.cast(var, dt) + eps)
    wt = None if w is None else T.cast(w, dt)
    return rs, wt, rs if wt is None else rs * wt


def _kernel_tables(rows, N, x):
    """Tables as the kernels read them (_f32: fp32, fp64 for fp64 inputs; contiguous (N, C)), from
    float64 rows of one shape: per channel (C,), repeated over the N samples, or per (n, c) (N, C).
    One stack and one cast (with the broadcast) instead of a cast and a copy per table: each torch
    call is host work, and on a GPU a kernel launch. The values are _f32(row.expand(N, C), x)'s."""
    rows = torch.stack(rows)
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    if rows.ndim == 3:
        return T.cast(rows, dt).unbind(0)
    out = torch.empty((rows.shape[0], N, rows.shape[1]), dtype=dt, device=rows.device)
    return out.copy_(rows.unsqueeze(1)).unbind(0)


class _Kernels(Protocol):
    """The four passes of one kernel backend (csrc/norm/norm.h), on torch tensors, and optional
    whole-GroupNorm routes that return None where the backend has none for the call."""

    def stats(self, x, N, C, HW, cl) -> tuple[Tensor, Tensor]: ...  # per-(n, c) mean, m2: (N, C)

    def apply(self, x, M, A, B, res, N, C, HW, cl, act, alpha) -> Tensor: ...

    def bwd_reduce(self, dy, x, M, A, B, P, N, C, HW, cl, act, alpha) -> Tensor: ...  # (3, N, C)

    def bwd_apply(self, dy, x, M, A, B, A2, B2, C2, N, C, HW, cl, act, alpha) -> Tensor: ...

    def group_forward(self, x, G, w, b, eps, act, alpha, temb, scale, shift, res, N, C, HW,
                      cl) -> tuple[Tensor, Tensor, Tensor] | None: ...  # (y, mean, rstd)

    def group_backward(self, dy, x, mean, rstd, G, w, b, act, alpha, temb, scale, shift, N, C, HW,
                       cl) -> tuple[Tensor, ...] | None: ...  # as group_norm_act_backward


class _Passes:
    """Backends whose GroupNorm is the generic passes plus the torch-side tables."""

    def group_forward(self, *args):
        return None

    def group_backward(self, *args):
        return None


def _split_counts(S, chunk, HW, device):
    """Positions in each of S splits of HW by `chunk` (the last may hold fewer), as float64 on the
    device, shaped (S, 1, 1) to weigh (S, N, C) partials. Made there, not copied from a host list:
    torch copies pageable host memory to the GPU synchronously, and one such copy per call stalls
    the whole pipeline. One split (small inputs): one fill instead of four ops."""
    if S == 1:
        return torch.full((1, 1, 1), float(min(HW, chunk)), dtype=torch.float64, device=device)
    return (HW - torch.arange(S, dtype=torch.float64, device=device) * chunk).clamp_(max=chunk).view(S, 1, 1)


def _f32(t, like=None):
    """A table as the kernels read it: fp32 (fp64 for the reference on fp64 inputs), contiguous."""
    if t is None:
        return None
    dt = torch.float64 if like is not None and like.dtype == torch.float64 else torch.float32
    return t if t.dtype == dt and t.is_contiguous() else t.to(dt).contiguous()  # (no-op calls cost ~0.5 us)


def _gn_forward(k: _Kernels, x, G, w, b, eps, act, alpha, temb, scale, shift, residual):
    x, N, C, HW, cl = _norm_layout(x)
    res = None if residual is None else T.like(T.cast(residual, x.dtype), x)
    whole = k.group_forward(x, G, w, b, eps, act, alpha, temb, scale, shift, res, N, C, HW, cl)
    if whole is not None:
        return whole
    mean_c, m2_c = k.stats(x, N, C, HW, cl)
    dt = torch.float64
    mean_c, m2_c = T.cast(mean_c, dt), T.cast(m2_c, dt)
    if temb is not None:
        mean_c = mean_c + T.cast(temb, dt)
    mg = mean_c.reshape(N, G, C // G).mean(-1)
    m2g = m2_c.reshape(N, G, C // G).sum(-1) + HW * (mean_c.reshape(N, G, C // G) - mg[..., None]).pow(2).sum(-1)
    rstd = torch.rsqrt(m2g / max((C // G) * HW, 1) + eps)
    tb = _gn_tables(x, mg, rstd, G, w, b, temb, scale, shift, dt)
    y = k.apply(x, *_kernel_tables((tb["M"], tb["A"], tb["B"]), N, x), res, N, C, HW, cl, act, alpha)
    return y, mg.to(_stat_dtype(x)), rstd.to(_stat_dtype(x))


def _gn_backward_k(k: _Kernels, dy, x, mean, rstd, G, w, b, eps, act, alpha, temb, scale, shift):
    x, N, C, HW, cl = _norm_layout(x)
    if x.numel() == 0:  # no output element: every gradient is zero (the statistics may be NaN)
        pc, ps = (torch.zeros(s, dtype=_stat_dtype(x), device=x.device) for s in ((C,), (N, C)))
        return (torch.zeros_like(x), pc, pc.clone(), ps, ps.clone(), ps.clone())
    dy = T.like(T.cast(dy, x.dtype), x)
    whole = k.group_backward(dy, x, mean, rstd, G, w, b, act, alpha, temb, scale, shift, N, C, HW, cl)
    if whole is not None:
        return whole
    dt = torch.float64
    # the parameters in float64 once (the tables and the gradients both read them)
    w, b, temb, scale, shift = (None if t is None else T.cast(t, dt) for t in (w, b, temb, scale, shift))
    rstd = T.cast(rstd, dt)
    tb = _gn_tables(x, mean, rstd, G, w, b, temb, scale, shift, dt)
    M, A, B, P = _kernel_tables((tb["M"], tb["A"], tb["B"], tb["P"]), N, x)
    Sg, Sgxh, Sxh = T.cast(k.bwd_reduce(dy, x, M, A, B, P, N, C, HW, cl, act, alpha), dt).unbind(0)
    d = ref.group_gradients(Sg, Sgxh, Sxh, HW, rstd, w, b, scale)
    dx = k.bwd_apply(dy, x, M, A, B, *_kernel_tables((d["A2"], d["B2"], d["C2"]), N, x), N, C, HW, cl, act, alpha)
    grads = (d["dweight"].sum(0), d["dbias"].sum(0), d["dtemb"], d["dscale"], d["dshift"])
    return tuple([dx] + [g.to(_stat_dtype(x)) for g in grads])


def _bn_forward(k: _Kernels, x, w, b, rm, rv, training, eps, act, alpha, residual):
    x, N, C, HW, cl = _norm_layout(x)
    dt, sd = torch.float64, _stat_dtype(x)
    if training:
        mean_c, m2_c = k.stats(x, N, C, HW, cl)  # float64
        mean = mean_c.mean(0)
        var = (m2_c.sum(0) + HW * (mean_c - mean).pow(2).sum(0)) / max(N * HW, 1)
        mean = torch.where(torch.isnan(var), var, mean)  # non-finite sets: gankern/reference/norm.py
        out_mean, out_var = mean.to(sd), var.to(sd)
    else:
        mean, var = rm.to(dt), rv
        # the running statistics as the outputs (a copy: outputs must not alias the inputs), exactly
        # what their float64 round trip gives
        out_mean, out_var = rm.to(sd, copy=True), rv.to(sd, copy=True)
    rs, _, A = _bn_coefficients(var, w, eps, dt)
    B = torch.zeros_like(rs) if b is None else T.cast(b, dt)
    M, A, B = _kernel_tables((mean, A, B), N, x)
    res = None if residual is None else T.like(T.cast(residual, x.dtype), x)
    y = k.apply(x, M, A, B, res, N, C, HW, cl, act, alpha)
    return y, out_mean, out_var


def _bn_backward_k(k: _Kernels, dy, x, mean, var, w, b, training, eps, act, alpha):
    x, N, C, HW, cl = _norm_layout(x)
    sd = _stat_dtype(x)
    if x.numel() == 0:  # no output element: every gradient is zero (the statistics may be NaN)
        z = torch.zeros((C,), dtype=sd, device=x.device)
        return torch.zeros_like(x), z, z.clone()
    dy = T.like(T.cast(dy, x.dtype), x)
    dt = torch.float64
    rs, wt, A = _bn_coefficients(var, w, eps, dt)
    B = torch.zeros_like(rs) if b is None else T.cast(b, dt)
    M, A_, B, P = _kernel_tables((T.cast(mean, dt), A, B, rs), N, x)
    sums = k.bwd_reduce(dy, x, M, A_, B, P, N, C, HW, cl, act, alpha)
    Sg, Sgxh, _ = T.cast(sums, dt).sum(1).unbind(0)
    if training:
        cnt = max(N * HW, 1)
        c1 = (Sg if wt is None else wt * Sg) / cnt
        c2 = (Sgxh if wt is None else wt * Sgxh) / cnt
        nrs = -rs
        B2, C2 = nrs * c2 * rs, nrs * c1
    else:
        B2 = C2 = torch.zeros_like(A)
    A2, B2, C2 = _kernel_tables((A, B2, C2), N, x)
    dx = k.bwd_apply(dy, x, M, A_, B, A2, B2, C2, N, C, HW, cl, act, alpha)
    # copies in the statistics dtype: the outputs must not share storage
    return dx, Sgxh.to(sd, copy=True), Sg.to(sd, copy=True)


def _register_backend(backend: str, k: _Kernels, **dtypes):
    """The four ops of a kernel backend: the same route for every backend (the whole-GroupNorm
    hooks of `k` first, then the generic passes)."""
    register("group_norm_act", backend, **dtypes)(lambda *a: _gn_forward(k, *a))
    register("group_norm_act_backward", backend, **dtypes)(lambda *a: _gn_backward_k(k, *a))
    register("batch_norm_act", backend, **dtypes)(lambda *a: _bn_forward(k, *a))
    register("batch_norm_act_backward", backend, **dtypes)(lambda *a: _bn_backward_k(k, *a))


# ---- reference backward: the same passes in torch ---------------------------------------------
# (autograd cannot run inside a custom op's implementation, so the reference backward is closed
# form; tests check it against autograd of the reference forward and with gradcheck in float64)

class _TorchKernels(_Passes):
    @staticmethod
    def _v(t, N, C):
        return t.reshape(N, C, 1)

    def stats(self, x, N, C, HW, cl):
        xf = ref._upcast(x).reshape(N, C, HW)
        mean = xf.mean(-1)
        return mean, (xf - mean[..., None]).pow(2).sum(-1)

    def apply(self, x, M, A, B, res, N, C, HW, cl, act, alpha):
        u = ref._upcast(x).reshape(N, C, HW) - self._v(M, N, C)
        y = ref_acts.get(act).fn(u * self._v(A, N, C) + self._v(B, N, C), alpha)
        if res is not None:
            y = y + ref._upcast(res).reshape(N, C, HW)
        return y.to(x.dtype).reshape(x.shape)

    def _g(self, dy, x, M, A, B, N, C, act, alpha):
        HW = math.prod(x.shape[2:])
        u = ref._upcast(x).reshape(N, C, HW) - self._v(M, N, C)
        h = u * self._v(A, N, C) + self._v(B, N, C)
        return u, ref._upcast(dy).reshape(N, C, HW) * ref_acts.get(act).grad(h, alpha)

    def bwd_reduce(self, dy, x, M, A, B, P, N, C, HW, cl, act, alpha):
        u, g = self._g(dy, x, M, A, B, N, C, act, alpha)
        xh = u * self._v(P, N, C)
        return torch.stack([g.sum(-1), (g * xh).sum(-1), xh.sum(-1)])

    def bwd_apply(self, dy, x, M, A, B, A2, B2, C2, N, C, HW, cl, act, alpha):
        u, g = self._g(dy, x, M, A, B, N, C, act, alpha)
        dx = g * self._v(A2, N, C) + u * self._v(B2, N, C) + self._v(C2, N, C)
        return dx.to(x.dtype).reshape(x.shape)


register("group_norm_act_backward", "reference")(lambda *a: _gn_backward_k(_TorchKernels(), *a))
register("batch_norm_act_backward", "reference")(lambda *a: _bn_backward_k(_TorchKernels(), *a))


# ---- cpu and cuda (csrc/norm/norm.h): the same passes of either module -------------------------

class _NativeKernels(_Passes):
    """Launchers of the norm entry points of one native backend. The reductions return partials
    [S][3][N*C] over splits of `chunk` positions (norm.split_chunk: one split on the CPU, in
    float64; enough to fill the GPU on CUDA, in float32), merged here in fixed order."""

    def __init__(self, backend):
        self.backend = backend

    def _run(self, name, device_of, **fields):
        return _native.entry(self.backend, "norm." + name)(device_of, **fields)

    def _splits(self, x, N, C, HW, cl):
        chunk = self._run("split_chunk", x, N=N, C=C, HW=HW, channels_last=cl)
        return chunk, -(-HW // chunk)

    def _partials(self, x, S, N, C):
        dtype = torch.float64 if self.backend == "cpu" else torch.float32
        return torch.empty((S, 3, N, C), dtype=dtype, device=x.device)

    def stats(self, x, N, C, HW, cl):
        if HW == 0 or N * C == 0:
            z = torch.zeros((N, C), dtype=torch.float64, device=x.device)
            return z, z.clone()
        chunk, S = self._splits(x, N, C, HW, cl)
        part = self._partials(x, S, N, C)  # shift, mean of x - shift, m2
        self._run("channel_stats", x, x=x, chunk=chunk, partials=part, N=N, C=C, HW=HW, channels_last=cl)
        part = T.cast(part, torch.float64)  # (the CPU's are float64 already)
        if S == 1:
            shift, mean, m2 = part[0].unbind(0)
            return shift + mean, m2
        mean_s, m2_s = part[:, 0] + part[:, 1], part[:, 2]
        cnt = _split_counts(S, chunk, HW, x.device)
        mean = (cnt * mean_s).sum(0) / HW  # Chan's merge of the splits
        return mean, m2_s.sum(0) + (cnt * (mean_s - mean).pow(2)).sum(0)

    def apply(self, x, M, A, B, res, N, C, HW, cl, act, alpha):
        y = T.empty_like(x)
        self._run("apply", x, dy=None, x=x, residual=res, out=y, M=M, A=A, B=B, A2=None, B2=None, C2=None,
                  act=ref_acts.get(act).code, alpha=alpha, N=N, C=C, HW=HW, channels_last=cl)
        return y

    def bwd_reduce(self, dy, x, M, A, B, P, N, C, HW, cl, act, alpha):
        if HW == 0 or N * C == 0:
            return torch.zeros((3, N, C), dtype=self._partials(x, 0, N, C).dtype, device=x.device)
        chunk, S = self._splits(x, N, C, HW, cl)
        part = self._partials(x, S, N, C)
        self._run("backward_reduce", x, dy=dy, x=x, M=M, A=A, B=B, P=P, chunk=chunk, partials=part,
                  act=ref_acts.get(act).code, alpha=alpha, N=N, C=C, HW=HW, channels_last=cl)
        return part[0] if S == 1 else part.sum(0)

    def bwd_apply(self, dy, x, M, A, B, A2, B2, C2, N, C, HW, cl, act, alpha):
        dx = T.empty_like(x)
        self._run("backward_apply", x, dy=dy, x=x, residual=None, out=dx, M=M, A=A, B=B, A2=A2, B2=B2, C2=C2,
                  act=ref_acts.get(act).code, alpha=alpha, N=N, C=C, HW=HW, channels_last=cl)
        return dx


class _CpuKernels(_NativeKernels):
    """The CPU module's passes plus its whole-GroupNorm entry points (csrc/norm/cpu.cpp), which do
    the table arithmetic in C++: a dozen small torch calls would cost more than the passes at small
    shapes."""

    def __init__(self):
        super().__init__("cpu")

    def group_forward(self, x, G, w, b, eps, act, alpha, temb, scale, shift, res, N, C, HW, cl):
        y = T.empty_like(x)
        tables = torch.empty((3, N, C), dtype=torch.float32)
        mean, rstd = torch.empty((N, G), dtype=torch.float32), torch.empty((N, G), dtype=torch.float32)
        scratch = torch.empty((2, N, C), dtype=torch.float64)
        w, b, temb, scale, shift = (_f32(t) for t in (w, b, temb, scale, shift))
        self._run("group_norm_forward", x, x=x, weight=w, bias=b, temb=temb, scale=scale, shift=shift, residual=res,
                  y=y, tables=tables, gmean=mean, grstd=rstd, scratch=scratch, G=G, eps=eps,
                  act=ref_acts.get(act).code, alpha=alpha, N=N, C=C, HW=HW, channels_last=cl)
        return y, mean, rstd

    def group_backward(self, dy, x, mean, rstd, G, w, b, act, alpha, temb, scale, shift, N, C, HW, cl):
        """The fused C++ backward where the layout allows it (NCHW, groups that fit in L2), else None.
        The kernel writes the returned gradients themselves (float32; dweight and dbias summed over
        the samples in fixed order)."""
        dx = T.empty_like(x)
        dw, db = torch.empty(C, dtype=_STAT), torch.empty(C, dtype=_STAT)
        dtemb, dscale, dshift = (torch.empty((N, C), dtype=_STAT), torch.empty((N, C), dtype=_STAT),
                                 torch.empty((N, C), dtype=_STAT))
        fmean, frstd, fw, fb, ftemb, fscale, fshift = (_f32(t) for t in (mean, rstd, w, b, temb, scale, shift))
        if not self._run("group_norm_backward", x, dy=dy, x=x, gmean=fmean, grstd=frstd, weight=fw, bias=fb,
                         temb=ftemb, scale=fscale, shift=fshift, dx=dx, dweight=dw, dbias=db, dtemb=dtemb,
                         dscale=dscale, dshift=dshift, G=G, act=ref_acts.get(act).code, alpha=alpha, N=N, C=C,
                         HW=HW, channels_last=cl):
            return None
        return dx, dw, db, dtemb, dscale, dshift


# the CPU kernels load and store fp32, bf16 or fp16 (csrc/common/cpu_dtypes.h), math in fp32
_register_backend("cpu", _CpuKernels(), cpu_dtypes=(torch.float32, torch.bfloat16, torch.float16))
_register_backend("cuda", _NativeKernels("cuda"))


# ---- triton ----------------------------------------------------------------------------------

class _TritonKernels(_Passes):
    @staticmethod
    def _tk():
        from ..triton import norm as tk
        return tk

    def stats(self, x, N, C, HW, cl):
        if HW == 0:
            z = torch.zeros((N, C), dtype=torch.float64, device=x.device)
            return z, z.clone()
        part, chunk = self._tk().channel_stats(x, N, C, HW, cl)
        shift_s, mean_s, m2_s = part.double().unbind(0)  # one cast of the (3, S, N, C) partials
        cnt = _split_counts(part.shape[1], chunk, HW, x.device)
        mean_s = shift_s + mean_s
        mean = (cnt * mean_s).sum(0) / HW  # Chan's merge of the splits
        return mean, m2_s.sum(0) + (cnt * (mean_s - mean).pow(2)).sum(0)

    def apply(self, x, M, A, B, res, N, C, HW, cl, act, alpha):
        return self._tk().pointwise(None, x, res, T.empty_like(x), M, A, B, None, None, None, C, HW, cl,
                                    ref_acts.get(act).code, alpha)

    def bwd_reduce(self, dy, x, M, A, B, P, N, C, HW, cl, act, alpha):
        return self._tk().backward_reduce(dy, x, M, A, B, P, N, C, HW, cl, ref_acts.get(act).code, alpha)

    def bwd_apply(self, dy, x, M, A, B, A2, B2, C2, N, C, HW, cl, act, alpha):
        return self._tk().pointwise(dy, x, None, T.empty_like(x), M, A, B, A2, B2, C2, C, HW, cl,
                                    ref_acts.get(act).code, alpha)

    def group_forward(self, x, G, w, b, eps, act, alpha, temb, scale, shift, res, N, C, HW, cl):
        """Three launches: statistics, a finalize kernel for the tables (triton/norm.py), normalize."""
        if HW == 0:
            return None
        tk = self._tk()
        w, b, temb, scale, shift = (_f32(t) for t in (w, b, temb, scale, shift))
        tables, mean, rstd = tk.group_norm_tables(x, G, eps, w, b, temb, scale, shift, N, C, HW, cl)
        y = tk.pointwise(None, x, res, T.empty_like(x), tables[0], tables[1], tables[2], None, None, None, C, HW, cl,
                         ref_acts.get(act).code, alpha)
        return y, mean, rstd


_register_backend("triton", _TritonKernels())
