"""layer_norm / add_layer_norm: LayerNorm over the last dimension with the residual add fused.

In a pre-norm transformer block (diffusers' BasicTransformerBlock) each sub-layer ends with
`h = out + h` and the next begins with `n = LayerNorm(h)`: eager PyTorch reads and writes the
token tensor twice. add_layer_norm reads out and h once and writes both the new residual stream h
and n. Forward kernels process one row (token) at a time; the backward recomputes the normalized
row from h and the saved (mean, rstd) and returns per-program partial sums for the weight and bias
gradients, which torch reduces (deterministic, no atomics).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _native, _op
from .. import _tensors as T
from ..backends import FP32_HALF, register, resolve
from ..reference import layer_norm as ref
from . import _validate as V


def _check(x, residual, weight, bias, eps):
    V.tensor(x, "x", ndim_min=1)
    D = x.shape[-1]
    if residual is not None:
        V.tensor(residual, "residual")
        V.same_device(x, "x", residual=residual)
        if residual.shape != x.shape:
            raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            V.tensor(t, name)
            V.same_device(x, "x", **{name: t})
            if t.ndim != 1 or t.shape[0] != D:
                raise ValueError(f"{name} must have shape [D] = [{D}] (x's last dimension), got {tuple(t.shape)}")
    return V.real(eps, "eps", min_value=0.0, min_inclusive=False)


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """torch.nn.functional.layer_norm(x, x.shape[-1:], weight, bias, eps)."""
    eps = _check(x, None, weight, bias, eps)
    return _layer_norm(x, None, weight, bias, eps)[0]


def add_layer_norm(x: Tensor, residual: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
                   eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """(LayerNorm(x + residual), x + residual) in one pass; normalized over the last dimension.

    Args:
        x, residual: (..., D), same shape; float32, float16 or bfloat16 (every backend; statistics in fp32).
        weight, bias: (D,) affine, or None.
        eps: > 0, added to the variance.
    """
    V.tensor(residual, "residual")  # required here
    eps = _check(x, residual, weight, bias, eps)
    y, h, _, _ = _layer_norm(x, residual, weight, bias, eps)
    return y, h


# ---- custom ops ------------------------------------------------------------------------------

def _stat_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@_op.custom_op("gankern::layer_norm")
def _layer_norm(x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor], bias: Optional[Tensor],
                eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, h = x + residual (empty without residual), mean, rstd) with mean/rstd of shape x.shape[:-1]."""
    return resolve("layer_norm", x)(x, residual, weight, bias, eps)


@_layer_norm.register_fake
def _(x, residual, weight, bias, eps):
    st = x.new_empty(x.shape[:-1], dtype=_stat_dtype(x))
    h = x.new_empty(x.shape) if residual is not None else x.new_empty(0)
    return x.new_empty(x.shape), h, st, torch.empty_like(st)


@_op.custom_op("gankern::layer_norm_backward")
def _layer_norm_backward(dy: Tensor, dh: Optional[Tensor], h: Tensor, mean: Tensor, rstd: Tensor,
                         weight: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight [D], dbias [D]) with dx = LayerNorm backward(dy) + dh (the gradient of x, and
    of residual); parameter gradients in the statistics dtype."""
    return resolve("layer_norm_backward", h)(dy, dh, h, mean, rstd, weight)


@_layer_norm_backward.register_fake
def _(dy, dh, h, mean, rstd, weight):
    p = h.new_empty(h.shape[-1:], dtype=_stat_dtype(h))
    return h.new_empty(h.shape), p, torch.empty_like(p)


def _setup(ctx, inputs, output):
    x, residual, weight, bias, eps = inputs
    y, h, mean, rstd = output
    ctx.save_for_backward(x if residual is None else h, mean, rstd, weight)
    ctx.has_residual, ctx.has_bias = residual is not None, bias is not None


def _backward(ctx, dy, dh, dmean, drstd):
    h, mean, rstd, weight = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(h)
    dx, dw, db = _layer_norm_backward(dy, dh if ctx.has_residual else None, h, mean, rstd, weight)
    dres = dx if ctx.has_residual and ctx.needs_input_grad[1] else None
    dw = T.contiguous_as(dw, weight.dtype) if weight is not None and ctx.needs_input_grad[2] else None
    db = T.contiguous_as(db, h.dtype) if ctx.has_bias and ctx.needs_input_grad[3] else None
    return dx, dres, dw, db, None


_layer_norm.register_autograd(_backward, setup_context=_setup)


# ---- backends --------------------------------------------------------------------------------

register("layer_norm", "reference")(ref.layer_norm)


@register("layer_norm_backward", "reference")
def _layer_norm_backward_ref(dy, dh, h, mean, rstd, weight):
    """The closed form, in torch ops (fp32 math for half inputs)."""
    hf = h.float() if h.dtype in (torch.float16, torch.bfloat16) else h
    dyf = dy.to(hf.dtype)
    xhat = (hf - mean.to(hf.dtype)[..., None]) * rstd.to(hf.dtype)[..., None]
    g = dyf * weight.to(hf.dtype) if weight is not None else dyf
    dx = rstd.to(hf.dtype)[..., None] * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))
    if dh is not None:
        dx = dx + dh.to(hf.dtype)
    sd = _stat_dtype(h)
    flat = h.shape[-1]  # rows flattened: .sum(()) over no dims would reduce everything
    return (dx.to(h.dtype), (dyf * xhat).reshape(-1, flat).sum(0).to(sd), dyf.reshape(-1, flat).sum(0).to(sd))


def _rows(x):
    x = x if x.is_contiguous() else x.contiguous()
    D = x.shape[-1]
    return x, x.numel() // max(D, 1), D


def _param(t):
    """A weight or a statistic as the kernels read it: fp32, contiguous (None stays None)."""
    return T.contiguous_as(t, torch.float32)


def _stats(x, rows):
    sd = _stat_dtype(x)
    return T.empty(x.shape[:-1], dtype=sd, device=x.device), T.empty(x.shape[:-1], dtype=sd, device=x.device)


@register("layer_norm", "triton")
def _layer_norm_triton(x, residual, weight, bias, eps):
    from ..triton import layer_norm as tk
    x, rows, D = _rows(x)
    y = T.empty_like(x)
    h = T.empty_like(x) if residual is not None else x.new_empty(0)
    mean, rstd = _stats(x, rows)
    res = T.contiguous_as(residual, x.dtype)
    tk.forward(x, res, _param(weight), _param(bias), y, h, mean, rstd, rows, D, eps)
    return y, h, mean, rstd


@register("layer_norm_backward", "triton")
def _layer_norm_backward_triton(dy, dh, h, mean, rstd, weight):
    from ..triton import layer_norm as tk
    h, rows, D = _rows(h)
    dy, dh = T.contiguous_as(dy, h.dtype), T.contiguous_as(dh, h.dtype)
    dx = T.empty_like(h)
    dw, db = tk.backward(dy, dh, h, T.contiguous_as(mean, mean.dtype), T.contiguous_as(rstd, rstd.dtype),
                         _param(weight), dx, rows, D)
    sd = _stat_dtype(h)
    return dx, dw.to(sd), db.to(sd)


def _parts(rows: int) -> int:
    """Row partitions of the parameter gradients: fixed by the shape (never by the thread count),
    so results are deterministic; enough to spread over threads / SMs, few enough to sum cheaply."""
    return max(1, min(rows, 256))


def _register_native(backend):
    """The cpu and cuda backends: the same Params (csrc/layer_norm/layer_norm.h) to either module."""
    # the CPU kernels load and store fp32, bf16 or fp16 (csrc/common/cpu_dtypes.h), math in fp32
    dtypes = dict(cpu_dtypes=FP32_HALF) if backend == "cpu" else {}

    @register("layer_norm", backend, **dtypes)
    def forward(x, residual, weight, bias, eps):
        x, rows, D = _rows(x)
        y = T.empty_like(x)
        h = T.empty_like(x) if residual is not None else None
        mean, rstd = (T.empty(x.shape[:-1], dtype=torch.float32, device=x.device) for _ in range(2))
        res = T.contiguous_as(residual, x.dtype)
        _native.entry(backend, "layer_norm.forward")(x, x=x, residual=res, weight=_param(weight), bias=_param(bias),
                                                     y=y, h=h, mean=mean, rstd=rstd, rows=rows, D=D, eps=eps)
        return y, (h if h is not None else x.new_empty(0)), mean, rstd

    @register("layer_norm_backward", backend, **dtypes)
    def backward(dy, dh, h, mean, rstd, weight):
        h, rows, D = _rows(h)
        parts = _parts(rows)
        dx = T.empty_like(h)
        dwp = torch.empty(parts, D, dtype=torch.float32, device=h.device)
        dbp = torch.empty_like(dwp)
        _native.entry(backend, "layer_norm.backward")(
            h, dy=T.contiguous_as(dy, h.dtype), dh=T.contiguous_as(dh, h.dtype), h=h,
            mean=_param(mean), rstd=_param(rstd), weight=_param(weight), dx=dx,
            dweight=dwp, dbias=dbp, rows=rows, D=D, parts=parts)
        return dx, dwp.sum(0), dbp.sum(0)


# Registered only where the built module has the family (a module built before it existed lacks it).
for _backend, _module in (("cpu", _native.cpu), ("cuda", _native.cuda)):
    if _module is not None and hasattr(_module, "layer_norm"):
        _register_native(_backend)
