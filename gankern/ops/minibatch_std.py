"""minibatch_std: StyleGAN2's minibatch standard deviation (the discriminator's epilogue), fused.

  1. `minibatch_std(x, group_size=4, num_channels=1)`: functional API (StyleGAN's group rule)
  2. `torch.ops.gankern.minibatch_std` / `minibatch_std_backward`: custom ops with fake kernels.
     The backward op's own autograd differentiates the reference's closed-form gradient, so the
     double backward R1 needs works (and higher orders).
  3. backends: reference (gankern.reference.minibatch_std), and a statistic pass + an output pass
     (backward: a ds reduction + a dx pass) on cpu, cuda (csrc/minibatch_std) and triton.

Layout: x is read through a contiguous (NCHW) copy when it is not contiguous; every output is
contiguous (docs/architecture.md, "Layouts").
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _native, _op
from .. import _tensors as T
from ..backends import register, resolve_nonempty
from ..reference import minibatch_std as ref
from . import _validate as V


def group_size_for(N: int, group_size: int | None) -> int:
    """StyleGAN2's rule: G = min(group_size, N) (None: the whole batch); G must divide N."""
    G = N if group_size is None else min(group_size, N)
    G = max(G, 1)  # an empty batch: one (empty) group
    if N % G != 0:
        raise ValueError(f"minibatch_std: the batch size {N} must be divisible by the group size "
                         f"min(group_size={group_size}, N) = {G}")
    return G


def minibatch_std(x: Tensor, group_size: int | None = 4, num_channels: int = 1) -> Tensor:
    """Append `num_channels` feature maps holding each sample group's standard deviation.

    Args:
        x: [N, C, H, W]; float32/float64 (float64 on the reference), float16/bfloat16.
        group_size: samples per group G = min(group_size, N); None: the whole batch. N must be a
            multiple of G. Sample i belongs to group i % (N / G), as in StyleGAN2.
        num_channels: F, the statistics channels; C must be a multiple of F (each statistic
            averages C/F channels).
    Returns [N, C + F, H, W]: x, then the per-group std (population variance + 1e-8, square root)
    averaged over the slice's channels and the pixels, broadcast over H x W.
    """
    V.tensor(x, "x")
    if x.ndim != 4:
        raise ValueError(f"x must be a 4-D [N, C, H, W] tensor, got shape {tuple(x.shape)}")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise ValueError(f"group_size must be an int >= 1 or None, got {group_size!r}")
    if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
        raise ValueError(f"num_channels must be an int >= 1, got {num_channels!r}")
    N, C, H, W = x.shape
    if C < 1 or H < 1 or W < 1:
        raise ValueError(f"x must have at least one channel and pixel, got shape {tuple(x.shape)}")
    if C % num_channels != 0:
        raise ValueError(f"minibatch_std: the channels C={C} must be divisible by num_channels={num_channels}")
    return _minibatch_std(x, group_size_for(N, group_size), num_channels)


# ---- custom ops ---------------------------------------------------------------------------------

@_op.custom_op("gankern::minibatch_std")
def _minibatch_std(x: Tensor, G: int, F: int) -> Tensor:
    return resolve_nonempty("minibatch_std", x)(x, G, F).contiguous()


@_minibatch_std.register_fake
def _(x, G, F):
    N, C, H, W = x.shape
    return x.new_empty((N, C + F, H, W))


@_op.custom_op("gankern::minibatch_std_backward")
def _minibatch_std_backward(dout: Tensor, x: Tensor, G: int, F: int) -> Tensor:
    return resolve_nonempty("minibatch_std_backward", x)(dout, x, G, F).contiguous()


@_minibatch_std_backward.register_fake
def _(dout, x, G, F):
    return x.new_empty(x.shape)


def _setup(ctx, inputs, output):
    x, G, F = inputs
    ctx.save_for_backward(x)
    ctx.params = (G, F)


def _backward(ctx, dout):
    (x,) = ctx.saved_tensors
    return _minibatch_std_backward(dout, x, *ctx.params), None, None


_minibatch_std.register_autograd(_backward, setup_context=_setup)


def _setup_bwd(ctx, inputs, output):
    dout, x, G, F = inputs
    ctx.save_for_backward(dout, x)
    ctx.params = (G, F)


def _backward_bwd(ctx, g):
    """dx is linear in dout (d/d(dout) is the forward's adjoint structure) but not in x: both come
    from autograd over the reference's closed form, whose graph is differentiable again."""
    dout, x = ctx.saved_tensors
    with torch.enable_grad():
        dr = dout.detach().requires_grad_()
        xr = x.detach().requires_grad_()
        dx = ref.minibatch_std_backward(dr, xr, *ctx.params)
        g_dout, g_x = torch.autograd.grad(dx, [dr, xr], g, create_graph=torch.is_grad_enabled())
    return g_dout, g_x, None, None


_minibatch_std_backward.register_autograd(_backward_bwd, setup_context=_setup_bwd)


# ---- backends -----------------------------------------------------------------------------------

register("minibatch_std", "reference")(ref.minibatch_std)
register("minibatch_std_backward", "reference")(ref.minibatch_std_backward)


def _new(shape, like: Tensor) -> Tensor:
    out = torch.empty(shape, dtype=like.dtype, device=like.device)
    if T._poison:
        out.fill_(float("nan"))
    return out


def _register_native(backend):
    dtypes = dict(cpu_dtypes=(torch.float32, torch.bfloat16, torch.float16)) if backend == "cpu" else {}

    @register("minibatch_std", backend, **dtypes)
    def forward(x, G, F):
        x = x.contiguous()
        N, C, H, W = x.shape
        out = _new((N, C + F, H, W), x)
        s = torch.empty((N // G, F), dtype=torch.float32, device=x.device)
        _native.entry(backend, "minibatch_std.forward")(x, x=x, dout=None, s=s, out=out, N=N, C=C, HW=H * W, G=G,
                                                        F=F, eps=ref.EPSILON)
        return out

    @register("minibatch_std_backward", backend, **dtypes)
    def backward(dout, x, G, F):
        x = x.contiguous()
        dout = dout.to(x.dtype).contiguous()
        N, C, H, W = x.shape
        dx = _new(x.shape, x)
        ds = torch.empty((N // G, F), dtype=torch.float32, device=x.device)
        _native.entry(backend, "minibatch_std.backward")(x, x=x, dout=dout, s=ds, out=dx, N=N, C=C, HW=H * W, G=G,
                                                         F=F, eps=ref.EPSILON)
        return dx


_register_native("cpu")
_register_native("cuda")


@register("minibatch_std", "triton")
def _minibatch_std_triton(x, G, F):
    from ..triton import minibatch_std as tk
    x = x.contiguous()
    N, C, H, W = x.shape
    out = _new((N, C + F, H, W), x)
    s = torch.empty((N // G, F), dtype=torch.float32, device=x.device)
    tk.forward(x, s, out, N, C, H * W, G, F, ref.EPSILON)
    return out


@register("minibatch_std_backward", "triton")
def _minibatch_std_backward_triton(dout, x, G, F):
    from ..triton import minibatch_std as tk
    x = x.contiguous()
    dout = dout.to(x.dtype).contiguous()
    N, C, H, W = x.shape
    dx = _new(x.shape, x)
    ds = torch.empty((N // G, F), dtype=torch.float32, device=x.device)
    tk.backward(x, dout, ds, dx, N, C, H * W, G, F, ref.EPSILON)
    return dx
