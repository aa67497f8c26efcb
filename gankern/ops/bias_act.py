"""bias_act: StyleGAN2's fused bias + activation + gain + clamp.

The pattern every gankern op follows, in one file:
  1. `bias_act(...)`       functional API: validate, fill in defaults, call the custom op
  2. `torch.ops.gankern.bias_act` / `bias_act_backward`: custom ops with fake (meta) kernels, so
     torch.compile(fullgraph=True) and torch.export see through them; declared with
     `gankern._op.custom_op`, whose eager calls skip torch.library's Python path
  3. autograd: forward saves only x and b; backward is itself a custom op, whose own backward
     makes second-order gradients (R1 / path-length regularizers) work
  4. backends: one small registered function per (op, backend); gankern.backends picks one
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _native, _op
from .. import _tensors as T
from ..backends import register, resolve_nonempty
from ..reference import activations as ref_acts
from ..reference import bias_act as ref
from . import _validate as V


def bias_act(x: Tensor, b: Tensor | None = None, dim: int = 1, act: str = "linear", alpha: float | None = None,
             gain: float | None = None, clamp: float | None = None) -> Tensor:
    """y = clamp(act(x + b) * gain, -clamp, clamp), with b broadcast along `dim`.

    Args:
        x: input of any shape; float32, float16 or bfloat16 (every backend; fp32 math).
        b: bias of shape [x.shape[dim]], or None.
        dim: the dimension of x that b runs along.
        act: linear, relu, lrelu, tanh, sigmoid, elu, selu, softplus, swish, gelu (exact),
            gelu_tanh or silu.
        alpha: lrelu slope (default 0.2); ignored by the other activations.
        gain: output scale; default StyleGAN2's for the activation (sqrt(2) for relu, lrelu and
            swish, else 1).
        clamp: clip the output to [-clamp, clamp]; None for no clipping.
    """
    V.tensor(x, "x")
    a = ref_acts.get(act)
    dim = V.dim(dim, x.ndim) if b is not None else 0  # dim only matters with a bias
    if b is not None:
        V.tensor(b, "b")
        V.same_device(x, "x", b=b)
        if b.ndim != 1 or x.ndim == 0 or b.shape[0] != x.shape[dim]:
            want = x.shape[dim] if x.ndim else "n/a (x is 0-d)"
            raise ValueError(f"b must have shape [x.shape[dim]] = [{want}], got {tuple(b.shape)}")
    alpha = a.def_alpha if alpha is None else V.real(alpha, "alpha")
    gain = a.def_gain if gain is None else V.real(gain, "gain")
    if clamp is not None:
        clamp = V.real(clamp, "clamp", min_value=0.0)
    return _bias_act(x, b, dim, act, alpha, gain, clamp)


# ---- custom ops ------------------------------------------------------------------------------

@_op.custom_op("gankern::bias_act")
def _bias_act(x: Tensor, b: Optional[Tensor], dim: int, act: str, alpha: float, gain: float,
              clamp: Optional[float]) -> Tensor:
    return T.restride(resolve_nonempty("bias_act", x)(x, b, dim, act, alpha, gain, clamp), x, T.kept_strides(x))


# Outputs keep a dense input's layout (the kernels are elementwise over flat memory).
@_bias_act.register_fake
def _(x, b, dim, act, alpha, gain, clamp):
    return T.empty_strided_like(x, T.kept_strides(x))


@_op.custom_op("gankern::bias_act_backward")
def _bias_act_backward(dy: Tensor, x: Tensor, b: Optional[Tensor], dim: int, act: str, alpha: float,
                       gain: float, clamp: Optional[float]) -> Tensor:
    dx = resolve_nonempty("bias_act_backward", x)(dy, x, b, dim, act, alpha, gain, clamp)
    return T.restride(dx, x, T.kept_strides(x))


@_bias_act_backward.register_fake
def _(dy, x, b, dim, act, alpha, gain, clamp):
    return T.empty_strided_like(x, T.kept_strides(x))


# ---- autograd --------------------------------------------------------------------------------

def _reduce_to_bias(g: Tensor, b: Tensor, dim: int) -> Tensor:
    """Sum a full-size gradient over every dimension but `dim` (deterministic, fp32 for half types)."""
    return T.channel_sums(g, dim).to(b.dtype)


def _setup(ctx, inputs, output):
    x, b, *params = inputs
    ctx.save_for_backward(x, b)
    ctx.params = params  # dim, act, alpha, gain, clamp


def _backward(ctx, dy):
    x, b = ctx.saved_tensors
    dim = ctx.params[0]
    dx = _bias_act_backward(dy, x, b, *ctx.params)
    db = _reduce_to_bias(dx, b, dim) if b is not None and ctx.needs_input_grad[1] else None
    return dx, db, None, None, None, None, None


_bias_act.register_autograd(_backward, setup_context=_setup)


def _setup_bwd(ctx, inputs, output):
    dy, x, b, *params = inputs
    ctx.save_for_backward(dy, x, b)
    ctx.params = params


def _backward_bwd(ctx, g):
    """Gradients of dx = dy * act'(x + b) * gain * mask: linear in dy, so d/d(dy) is the same
    kernel applied to g; d/dx and d/db need act'', taken from the reference by autograd."""
    dy, x, b = ctx.saved_tensors
    dim = ctx.params[0]
    g_dy = _bias_act_backward(g, x, b, *ctx.params) if ctx.needs_input_grad[0] else None
    g_x = g_b = None
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        with torch.enable_grad():
            xr = x.detach().requires_grad_()
            br = b.detach().requires_grad_() if b is not None else None
            dx = ref.bias_act_backward(dy.detach(), xr, br, *ctx.params)
        # piecewise-linear activations have act'' = 0: dx does not depend on x at all
        g_x = torch.autograd.grad(dx, [xr], g)[0] if dx.requires_grad else torch.zeros_like(x)
        if b is not None and ctx.needs_input_grad[2]:
            g_b = _reduce_to_bias(g_x, b, dim)  # x and b enter only through x + b
    return g_dy, g_x, g_b, None, None, None, None, None


_bias_act_backward.register_autograd(_backward_bwd, setup_context=_setup_bwd)


# ---- backends --------------------------------------------------------------------------------

register("bias_act", "reference")(ref.bias_act)
register("bias_act_backward", "reference")(ref.bias_act_backward)


def _prepare(x, b, dim, act, clamp):
    """Dense x, fp32 bias, and the scalars of csrc/bias_act/bias_act.h's Params that are not the
    user's: (C, cstride) of the flat-memory bias indexing, the activation code, clamp (< 0: none)."""
    x = T.dense(x)
    bf = T.contiguous_as(b, torch.float32)
    C, cstride = (1, 1) if b is None or x.shape[dim] == 1 else (x.shape[dim], x.stride(dim))
    return x, bf, C, cstride, ref_acts.get(act).code, -1.0 if clamp is None else clamp


def _register_native(backend):
    """The cpu and cuda backends: the same Params to the same entry points of either module."""
    # the CPU kernels load and store fp32, bf16 or fp16 (csrc/common/cpu_convert.h), math in fp32
    dtypes = dict(cpu_dtypes=(torch.float32, torch.bfloat16, torch.float16)) if backend == "cpu" else {}

    @register("bias_act", backend, **dtypes)
    def forward(x, b, dim, act, alpha, gain, clamp):
        x, bf, C, cstride, code, clamp = _prepare(x, b, dim, act, clamp)
        y = T.empty_like(x)
        _native.entry(backend, "bias_act.forward")(x, x=x, b=bf, dy=None, out=y, C=C, cstride=cstride, act=code,
                                                   alpha=alpha, gain=gain, clamp=clamp)
        return y

    @register("bias_act_backward", backend, **dtypes)
    def backward(dy, x, b, dim, act, alpha, gain, clamp):
        x, bf, C, cstride, code, clamp = _prepare(x, b, dim, act, clamp)
        dx = T.empty_like(x)
        _native.entry(backend, "bias_act.backward")(x, x=x, b=bf, dy=T.like(dy.to(x.dtype), x), out=dx, C=C,
                                                    cstride=cstride, act=code, alpha=alpha, gain=gain, clamp=clamp)
        return dx


_register_native("cpu")
_register_native("cuda")


@register("bias_act", "triton")
def _bias_act_triton(x, b, dim, act, alpha, gain, clamp):
    from ..triton import bias_act as tk
    x, bf, C, cstride, code, clamp = _prepare(x, b, dim, act, clamp)
    return tk.launch(None, x, bf, T.empty_like(x), C, cstride, code, alpha, gain, clamp)


@register("bias_act_backward", "triton")
def _bias_act_backward_triton(dy, x, b, dim, act, alpha, gain, clamp):
    from ..triton import bias_act as tk
    x, bf, C, cstride, code, clamp = _prepare(x, b, dim, act, clamp)
    return tk.launch(T.like(dy.to(x.dtype), x), x, bf, T.empty_like(x), C, cstride, code, alpha, gain, clamp)
