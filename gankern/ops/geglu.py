"""geglu: y = hidden * gelu(gate) with hidden, gate = x.chunk(2, dim=-1), in one pass.

diffusers' GEGLU feed-forward (every transformer block of SD's UNet) writes gelu(gate) to a
temporary and multiplies it in a second pass; here both halves are read once and y written once.
Backward reads dy and x and writes dx (both halves) in one pass. Second-order gradients come from
the reference's closed form through autograd.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _native, _op
from .. import _tensors as T
from ..backends import FP32_HALF, register, resolve
from ..reference import geglu as ref
from . import _validate as V

APPROXIMATE = ("none", "tanh")


def geglu(x: Tensor, approximate: str = "none") -> Tensor:
    """hidden * gelu(gate), hidden and gate the first and second halves of x's last dimension.

    Args:
        x: (..., 2 D); float32, float16 or bfloat16 (every backend; math in fp32).
        approximate: "none" (exact erf GELU, torch's default) or "tanh".
    Returns (..., D), contiguous.
    """
    V.tensor(x, "x", ndim_min=1)
    if x.shape[-1] % 2:
        raise ValueError(f"x's last dimension must be even (two halves), got shape {tuple(x.shape)}")
    if approximate not in APPROXIMATE:
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return _geglu(x, approximate)


# ---- custom ops ------------------------------------------------------------------------------

@_op.custom_op("gankern::geglu")
def _geglu(x: Tensor, approximate: str) -> Tensor:
    return resolve("geglu", x)(x, approximate)


@_geglu.register_fake
def _(x, approximate):
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


@_op.custom_op("gankern::geglu_backward")
def _geglu_backward(dy: Tensor, x: Tensor, approximate: str) -> Tensor:
    return resolve("geglu_backward", x)(dy, x, approximate)


@_geglu_backward.register_fake
def _(dy, x, approximate):
    return x.new_empty(x.shape)


def _setup(ctx, inputs, output):
    x, approximate = inputs
    ctx.save_for_backward(x)
    ctx.approximate = approximate


def _backward(ctx, dy):
    (x,) = ctx.saved_tensors
    return _geglu_backward(dy, x, ctx.approximate), None


_geglu.register_autograd(_backward, setup_context=_setup)


def _setup_bwd(ctx, inputs, output):
    dy, x, approximate = inputs
    ctx.save_for_backward(dy, x)
    ctx.approximate = approximate


def _backward_bwd(ctx, g):
    """dx is linear in dy (d/d(dy) is the forward's backward applied to g... through the
    reference); d/dx needs gelu'', taken from the reference by autograd."""
    dy, x = ctx.saved_tensors
    with torch.enable_grad():
        dyr, xr = dy.detach().requires_grad_(), x.detach().requires_grad_()
        dx = ref.geglu_backward(dyr, xr, ctx.approximate)
        g_dy, g_x = torch.autograd.grad(dx, [dyr, xr], g, allow_unused=True)
    return g_dy, (torch.zeros_like(x) if g_x is None else g_x), None


_geglu_backward.register_autograd(_backward_bwd, setup_context=_setup_bwd)


# ---- backends --------------------------------------------------------------------------------

register("geglu", "reference")(ref.geglu)
register("geglu_backward", "reference")(ref.geglu_backward)


def _rows(x: Tensor) -> tuple[Tensor, int, int]:
    """x contiguous, and (rows, D): the kernels read row r's hidden at [r, 0:D], gate at [r, D:2D]."""
    x = x.contiguous()
    D = x.shape[-1] // 2
    return x, x.numel() // max(2 * D, 1), D


def _out(x: Tensor) -> Tensor:
    return T.empty((*x.shape[:-1], x.shape[-1] // 2), dtype=x.dtype, device=x.device)


@register("geglu", "triton")
def _geglu_triton(x, approximate):
    from ..triton import geglu as tk
    x, rows, D = _rows(x)
    return tk.launch(None, x, _out(x), rows, D, approximate == "tanh")


@register("geglu_backward", "triton")
def _geglu_backward_triton(dy, x, approximate):
    from ..triton import geglu as tk
    x, rows, D = _rows(x)
    return tk.launch(dy.to(x.dtype).contiguous(), x, T.empty_like(x), rows, D, approximate == "tanh")


def _register_native(backend):
    """The cpu and cuda backends: the same Params (csrc/geglu/geglu.h) to either module."""
    # the CPU kernels load and store fp32, bf16 or fp16 (csrc/common/cpu_dtypes.h), math in fp32
    dtypes = dict(cpu_dtypes=FP32_HALF) if backend == "cpu" else {}

    @register("geglu", backend, **dtypes)
    def forward(x, approximate):
        x, rows, D = _rows(x)
        y = _out(x)
        _native.entry(backend, "geglu.forward")(x, x=x, dy=None, out=y, rows=rows, D=D, tanh=approximate == "tanh")
        return y

    @register("geglu_backward", backend, **dtypes)
    def backward(dy, x, approximate):
        x, rows, D = _rows(x)
        dx = T.empty_like(x)
        _native.entry(backend, "geglu.backward")(x, x=x, dy=dy.to(x.dtype).contiguous(), out=dx, rows=rows, D=D,
                                                 tanh=approximate == "tanh")
        return dx


# Registered only where the built module has the family (a module built before it existed lacks it).
for _backend, _module in (("cpu", _native.cpu), ("cuda", _native.cuda)):
    if _module is not None and hasattr(_module, "geglu"):
        _register_native(_backend)
