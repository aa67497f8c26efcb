"""filtered_lrelu: StyleGAN3's upsample -> bias + leaky ReLU + clamp -> downsample, fused.

  1. `filtered_lrelu(...)`: functional API (validation, defaults)
  2. custom ops:
     `gankern::filtered_lrelu` -> (y, mask): the forward, which also records one byte per
       intermediate sample: which linear piece of lrelu/clamp it took (reference.mask_codes)
     `gankern::filtered_lrelu_masked`: upfirdn A -> times factor[mask] -> upfirdn B. Linear in its
       input, so it is dL/dx of the forward (A, B = the transposed passes) and its own gradient is
       itself again (transposed once more): gradients of every order, deterministic, no atomics.
  3. backends: reference, and one fused kernel per backend that runs both ops (mode 0: activation,
     mode 1: mask), the intermediate image kept on chip (csrc/filtered_lrelu/filtered_lrelu.h).

Filters are constants (no gradient), as in StyleGAN3; gradients flow to x and b.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import Tensor

from .. import _native, _op
from .. import _tensors as T
from ..backends import FP32_HALF, register, resolve_nonempty
from ..reference import filtered_lrelu as ref
from ..reference import upfirdn2d as ref_up
from . import _validate as V
from .upfirdn2d import _factor, _filter, _out_layout, _padding, _x, backward_args, filter_size


def filtered_lrelu(x: Tensor, fu: Tensor | None = None, fd: Tensor | None = None, b: Tensor | None = None, up=1,
                   down=1, padding=0, gain: float = math.sqrt(2), slope: float = 0.2, clamp: float | None = None,
                   flip_filter: bool = False) -> Tensor:
    """StyleGAN3's filtered leaky ReLU (reference/filtered_lrelu.py gives the order of operations).

    Args:
        x: [N, C, H, W]; float32, float16 or bfloat16 (every backend; math in fp32).
        fu, fd: upsampling / downsampling filters, 1-D (separable) or 2-D; None for identity.
        b: bias [C] added before upsampling, or None.
        up, down: int or [x, y] >= 1. padding: int, [x, y] or [x0, x1, y0, y1] (upsampling pass).
        gain, slope, clamp: lrelu(t, slope) * gain, then clipped to [-clamp, clamp] unless None.
        flip_filter: as in upfirdn2d, for both filters.
    """
    x = _x(x)
    fu, fd = _filter(fu, x), _filter(fd, x)
    if b is not None:
        V.tensor(b, "b")
        V.same_device(x, "x", b=b)
        if b.ndim != 1 or b.shape[0] != x.shape[1]:
            raise ValueError(f"b must have shape [C] = [{x.shape[1]}], got {tuple(b.shape)}")
    upx, upy = _factor(up, "up")
    downx, downy = _factor(down, "down")
    pad = list(_padding(padding))
    gain, slope = V.real(gain, "gain"), V.real(slope, "slope")
    if clamp is not None:
        clamp = V.real(clamp, "clamp", min_value=0.0)
    if not isinstance(flip_filter, bool):
        raise TypeError(f"flip_filter must be a bool, got {type(flip_filter).__name__}")
    (TH, TW), (OH, OW) = _sizes(x, fu, fd, [upx, upy], [downx, downy], pad)
    if min(TH, TW, OH, OW) < 1:
        raise ValueError(f"filtered_lrelu of a {x.shape[2]}x{x.shape[3]} image with up={up}, down={down}, "
                         f"padding={padding} and filters {tuple(fu.shape)}, {tuple(fd.shape)} leaves no output; "
                         "pad more")
    y, _ = _filtered_lrelu(x, fu, fd, b, [upx, upy], [downx, downy], pad, gain, slope, clamp, flip_filter)
    return y


def _sizes(x, fu, fd, up, down, pad):
    """(intermediate TH, TW), (output OH, OW)."""
    (kuw, kuh), (kdw, kdh) = filter_size(fu), filter_size(fd)
    TH = ref.intermediate_size(x.shape[2], up[1], pad[2], pad[3], kuh)
    TW = ref.intermediate_size(x.shape[3], up[0], pad[0], pad[1], kuw)
    return (TH, TW), (ref_up.output_size(TH, 1, down[1], 0, 0, kdh), ref_up.output_size(TW, 1, down[0], 0, 0, kdw))


def _masked_out_hw(mask, fb, down_b, pad_b):
    kw, kh = filter_size(fb)
    return (ref_up.output_size(mask.shape[2], 1, down_b[1], pad_b[2], pad_b[3], kh),
            ref_up.output_size(mask.shape[3], 1, down_b[0], pad_b[0], pad_b[1], kw))


# ---- custom ops ---------------------------------------------------------------------------------

@_op.custom_op("gankern::filtered_lrelu")
def _filtered_lrelu(x: Tensor, fu: Tensor, fd: Tensor, b: Optional[Tensor], up: List[int], down: List[int],
                    pad: List[int], gain: float, slope: float, clamp: Optional[float],
                    flip_filter: bool) -> tuple[Tensor, Tensor]:
    y, mask = resolve_nonempty("filtered_lrelu", x)(x, fu, fd, b, up, down, pad, gain, slope, clamp, flip_filter)
    return y.contiguous(memory_format=_out_layout(x)), mask.contiguous()  # the fake kernel's layouts


@_filtered_lrelu.register_fake
def _(x, fu, fd, b, up, down, pad, gain, slope, clamp, flip_filter):
    # Output strides (docs/architecture.md "Layouts"): y channels_last if x is (and is not also
    # contiguous), else contiguous; the mask contiguous. Every backend returns exactly these.
    (TH, TW), (OH, OW) = _sizes(x, fu, fd, up, down, pad)
    y = torch.empty((x.shape[0], x.shape[1], OH, OW), dtype=x.dtype, device=x.device, memory_format=_out_layout(x))
    return y, x.new_empty(x.shape[0], x.shape[1], TH, TW, dtype=torch.uint8)


@_op.custom_op("gankern::filtered_lrelu_masked")
def _masked(x: Tensor, mask: Tensor, fa: Tensor, fb: Tensor, up_a: List[int], pad_a: List[int], flip_a: bool,
            gain_a: float, down_b: List[int], pad_b: List[int], flip_b: bool, gain_b: float, gain: float,
            slope: float) -> Tensor:
    y = resolve_nonempty("filtered_lrelu_masked", x)(x, mask, fa, fb, up_a, pad_a, flip_a, gain_a, down_b, pad_b,
                                                     flip_b, gain_b, gain, slope)
    return y.contiguous(memory_format=_out_layout(x))  # the fake kernel's layout


@_masked.register_fake
def _(x, mask, fa, fb, up_a, pad_a, flip_a, gain_a, down_b, pad_b, flip_b, gain_b, gain, slope):
    OH, OW = _masked_out_hw(mask, fb, down_b, pad_b)
    return torch.empty((x.shape[0], x.shape[1], OH, OW), dtype=x.dtype, device=x.device, memory_format=_out_layout(x))


# ---- autograd -----------------------------------------------------------------------------------

def _transposed(in_hw, mask, out_hw, fa, fb, up_a, pad_a, flip_a, gain_a, down_b, pad_b, flip_b, gain_b):
    """Arguments of the masked op computing dL/d(input) of `upfirdn A -> mask -> upfirdn B`:
    B transposed (an upsampling pass) first, then A transposed (a downsampling pass)."""
    t_hw = (mask.shape[2], mask.shape[3])
    a_up, _, a_pad, a_flip = backward_args(t_hw, out_hw, fb, [1, 1], down_b, pad_b, flip_b)
    _, b_down, b_pad, b_flip = backward_args(in_hw, t_hw, fa, up_a, [1, 1], pad_a, flip_a)
    return fb, fa, a_up, a_pad, a_flip, gain_b, b_down, b_pad, b_flip, gain_a


def _reduce_to_bias(g: Tensor, b: Tensor) -> Tensor:
    return T.channel_sums(g, 1).to(b.dtype)


def _setup(ctx, inputs, output):
    x, fu, fd, b, up, down, pad, gain, slope, clamp, flip_filter = inputs
    y, mask = output
    ctx.mark_non_differentiable(mask)
    ctx.save_for_backward(fu, fd, mask)
    ctx.b_like = None if b is None else torch.empty(0, dtype=b.dtype, device=b.device)
    ctx.hw = ((x.shape[2], x.shape[3]), (y.shape[2], y.shape[3]))
    ctx.params = (up, down, pad, gain, slope, flip_filter)


def _backward(ctx, dy, _dmask):
    fu, fd, mask = ctx.saved_tensors
    up, down, pad, gain, slope, flip = ctx.params
    in_hw, out_hw = ctx.hw
    args = _transposed(in_hw, mask, out_hw, fu, fd, up, pad, flip, float(up[0] * up[1]), down, [0, 0, 0, 0], flip,
                       1.0)
    dx = _masked(dy, mask, *args, gain, slope)
    db = _reduce_to_bias(dx, ctx.b_like) if ctx.b_like is not None and ctx.needs_input_grad[3] else None
    return dx, None, None, db, None, None, None, None, None, None, None


_filtered_lrelu.register_autograd(_backward, setup_context=_setup)


def _setup_masked(ctx, inputs, output):
    x, mask, *params = inputs
    ctx.save_for_backward(mask, params[0], params[1])
    ctx.hw = ((x.shape[2], x.shape[3]), (output.shape[2], output.shape[3]))
    ctx.params = params


def _backward_masked(ctx, g):
    mask, fa, fb = ctx.saved_tensors
    _, _, up_a, pad_a, flip_a, gain_a, down_b, pad_b, flip_b, gain_b, gain, slope = ctx.params
    in_hw, out_hw = ctx.hw
    args = _transposed(in_hw, mask, out_hw, fa, fb, up_a, pad_a, flip_a, gain_a, down_b, pad_b, flip_b, gain_b)
    dx = _masked(g, mask, *args, gain, slope)
    return (dx,) + (None,) * 13


_masked.register_autograd(_backward_masked, setup_context=_setup_masked)


# ---- backends -----------------------------------------------------------------------------------

@register("filtered_lrelu", "reference")
def _filtered_lrelu_reference(x, fu, fd, b, up, down, pad, gain, slope, clamp, flip_filter):
    y, mask = ref.forward_with_mask(x, fu, fd, b, up, down, pad, gain, slope, clamp, flip_filter)
    return y.contiguous(memory_format=_out_layout(x)), mask


@register("filtered_lrelu_masked", "reference")
def _masked_reference(x, mask, fa, fb, up_a, pad_a, flip_a, gain_a, down_b, pad_b, flip_b, gain_b, gain, slope):
    y = ref.masked(x, mask, fa, fb, up_a, pad_a, flip_a, gain_a, down_b, pad_b, flip_b, gain_b, gain, slope)
    return y.contiguous(memory_format=_out_layout(x))


def _filters(f: Tensor, flip: bool, gain: float, device):
    """fp32 correlation kernel [kh, kw] (gain folded in) and, for a 1-D filter, its x/y rows."""
    f32 = f.detach().to(device=device, dtype=torch.float32)
    g = ref_up.correlation_filter(f32, flip, gain).contiguous()
    g1 = None
    if f.ndim == 1:
        h = f32 if flip else f32.flip(0)
        g1 = torch.stack([h * gain, h]).contiguous()
    return g, g1


def _launch(backend, x, b, mask, mode, fa, fb, up_a, pad_a, flip_a, gain_a, down_b, pad_b, flip_b, gain_b, out_hw,
            gain, slope, clamp):
    """Runs the fused kernel (mode 0: activation, writes mask; mode 1: reads mask) on NCHW data and
    returns y in x's layout."""
    fmt = _out_layout(x)
    xc = x.contiguous()
    y = T.empty((x.shape[0], x.shape[1], *out_hw), dtype=x.dtype, device=x.device)
    ga, ga1 = _filters(fa, flip_a, gain_a, x.device)
    gb, gb1 = _filters(fb, flip_b, gain_b, x.device)
    bf = b.float().contiguous() if b is not None else None
    geom = (x.shape[0], x.shape[1], x.shape[2], x.shape[3], mask.shape[2], mask.shape[3], out_hw[0], out_hw[1],
            up_a[0], up_a[1], pad_a[0], pad_a[2], ga.shape[1], ga.shape[0],
            down_b[0], down_b[1], pad_b[0], pad_b[2], gb.shape[1], gb.shape[0], mode, float(gain), float(slope),
            -1.0 if clamp is None else float(clamp))
    if y.numel():
        if backend == "triton":
            from ..triton import filtered_lrelu as tk
            tk.launch(xc, bf, mask, ga, gb, y, *geom)
        else:
            _native.entry(backend, "filtered_lrelu.run")(
                xc, x=xc, b=bf, mask=mask, gA=ga, gA1=ga1, gB=gb, gB1=gb1, y=y, N=x.shape[0], C=x.shape[1],
                H=x.shape[2], W=x.shape[3], TH=mask.shape[2], TW=mask.shape[3], OH=out_hw[0], OW=out_hw[1],
                upx=up_a[0], upy=up_a[1], pax=pad_a[0], pay=pad_a[2], kax=ga.shape[1], kay=ga.shape[0],
                downx=down_b[0], downy=down_b[1], pbx=pad_b[0], pby=pad_b[2], kbx=gb.shape[1], kby=gb.shape[0],
                mode=mode, gain=float(gain), slope=float(slope), clamp=-1.0 if clamp is None else float(clamp))
    return y.contiguous(memory_format=fmt)


def _register_kernels(backend):
    # the CPU kernels load and store fp32, bf16 or fp16 (csrc/common/cpu_dtypes.h), math in fp32
    dtypes = dict(cpu_dtypes=FP32_HALF) if backend == "cpu" else {}

    @register("filtered_lrelu", backend, **dtypes)
    def _fwd(x, fu, fd, b, up, down, pad, gain, slope, clamp, flip_filter):
        (TH, TW), out_hw = _sizes(x, fu, fd, up, down, pad)
        mask = torch.zeros(x.shape[0], x.shape[1], TH, TW, dtype=torch.uint8, device=x.device)
        y = _launch(backend, x, b, mask, 0, fu, fd, up, pad, flip_filter, float(up[0] * up[1]), down, [0, 0, 0, 0],
                    flip_filter, 1.0, out_hw, gain, slope, clamp)
        return y, mask

    @register("filtered_lrelu_masked", backend, **dtypes)
    def _masked_kernel(x, mask, fa, fb, up_a, pad_a, flip_a, gain_a, down_b, pad_b, flip_b, gain_b, gain, slope):
        return _launch(backend, x, None, mask.contiguous(), 1, fa, fb, up_a, pad_a, flip_a, gain_a, down_b, pad_b,
                       flip_b, gain_b, _masked_out_hw(mask, fb, down_b, pad_b), gain, slope, None)


for _b in ("cpu", "cuda", "triton"):
    _register_kernels(_b)
