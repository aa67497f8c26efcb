"""upfirdn2d: StyleGAN2/3's upsample + pad + FIR filter + downsample, and its helpers.

  1. `upfirdn2d(...)`, `setup_filter`, `upsample2d`, `downsample2d`, `filter2d`: functional API
  2. `torch.ops.gankern.upfirdn2d`: one custom op with a fake kernel. Its backward is the same op
     (`backward_args`), so gradients of every order come from one kernel per backend.
  3. backends: reference (the zero-insertion formulation) and one fused kernel per backend that
     computes each output sample as a polyphase sum over the input taps (no zero-inserted or
     padded intermediate tensor).

The filter is a constant of the op (StyleGAN registers it as a buffer): no gradient flows to it.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor

from .. import _native, _op
from .. import _tensors as T
from ..backends import FP32_HALF, register, resolve_nonempty
from ..reference import upfirdn2d as ref
from . import _validate as V


# ---- argument parsing ---------------------------------------------------------------------------

def _factor(v, name: str) -> tuple[int, int]:
    """An int or [x, y] of ints >= 1, as (x, y)."""
    vals = list(v) if isinstance(v, (list, tuple)) else [v, v]
    if len(vals) != 2:
        raise ValueError(f"{name} must be an int or a list [x, y], got {len(vals)} values")
    for a in vals:
        if isinstance(a, bool) or not isinstance(a, int):
            raise TypeError(f"{name} must be an int or [x, y] of ints, got {v!r}")
        if a < 1:
            raise ValueError(f"{name} must be >= 1, got {v!r}")
    return vals[0], vals[1]


def _padding(p) -> tuple[int, int, int, int]:
    """An int, [x, y] or [x0, x1, y0, y1] of ints (negative crops), as (x0, x1, y0, y1)."""
    vals = list(p) if isinstance(p, (list, tuple)) else [p]
    for a in vals:
        if isinstance(a, bool) or not isinstance(a, int):
            raise TypeError(f"padding must be an int, [x, y] or [x0, x1, y0, y1] of ints, got {p!r}")
    if len(vals) == 1:
        return vals[0], vals[0], vals[0], vals[0]
    if len(vals) == 2:
        return vals[0], vals[0], vals[1], vals[1]
    if len(vals) == 4:
        return vals[0], vals[1], vals[2], vals[3]
    raise ValueError(f"padding must be an int, [x, y] or [x0, x1, y0, y1], got a list of {len(vals)} values")


def _filter(f, x: Tensor) -> Tensor:
    if f is None:
        return torch.ones(1, 1, dtype=torch.float32, device=x.device)
    V.tensor(f, "f")
    V.same_device(x, "x", f=f)
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f"f must be a non-empty 1-D (separable) or 2-D filter, got shape {tuple(f.shape)}")
    return f


def filter_size(f: Tensor | None) -> tuple[int, int]:
    """(width, height) of a filter as upfirdn2d applies it (a 1-D filter is k x k)."""
    if f is None:
        return 1, 1
    return (f.shape[-1], f.shape[0])


def _x(x) -> Tensor:
    V.tensor(x, "x")
    if x.ndim != 4:
        raise ValueError(f"x must be a 4-D [N, C, H, W] tensor, got shape {tuple(x.shape)}")
    return x


# ---- functional API -----------------------------------------------------------------------------

def upfirdn2d(x: Tensor, f: Tensor | None, up=1, down=1, padding=0, flip_filter: bool = False,
              gain: float = 1) -> Tensor:
    """Upsample (zero insertion), pad (negative crops), FIR filter, downsample a batch of images.

    Args:
        x: [N, C, H, W]; float32, float16 or bfloat16 (every backend; math in fp32), NCHW or
            channels_last (the output keeps the layout).
        f: 1-D filter [k] (separable: along x, then y) or 2-D [k_y, k_x]; None for identity.
        up, down: int or [x, y], >= 1.
        padding: int, [x, y] or [x0, x1, y0, y1]; negative values crop.
        flip_filter: False: true convolution (the filter is flipped); True: cross-correlation.
        gain: overall scale; each of the two passes of a 1-D filter takes sqrt(gain).
    Output size per axis: (size * up + pad0 + pad1 - k) // down + 1.
    """
    x = _x(x)
    f = _filter(f, x)
    upx, upy = _factor(up, "up")
    downx, downy = _factor(down, "down")
    px0, px1, py0, py1 = _padding(padding)
    if not isinstance(flip_filter, bool):
        raise TypeError(f"flip_filter must be a bool, got {type(flip_filter).__name__}")
    gain = V.real(gain, "gain")
    kw, kh = filter_size(f)
    H, W = x.shape[2], x.shape[3]
    OH, OW = ref.output_size(H, upy, downy, py0, py1, kh), ref.output_size(W, upx, downx, px0, px1, kw)
    if OH < 1 or OW < 1:
        raise ValueError(f"upfirdn2d of a {H}x{W} image with up={up}, down={down}, padding={padding} and a "
                         f"{kh}x{kw} filter leaves no output ({OH}x{OW}); pad more or crop less")
    return _upfirdn2d(x, f, [upx, upy], [downx, downy], [px0, px1, py0, py1], flip_filter, gain)


def setup_filter(f, device=None, normalize: bool = True, flip_filter: bool = False, gain: float = 1,
                 separable: bool | None = None) -> Tensor:
    """A filter tensor for upfirdn2d from a list/tensor of taps (StyleGAN's conventions).

    None gives [[1]]; a scalar becomes [f]. separable=None keeps a 1-D filter separable when it has
    8 or more taps, else expands it to the 2-D outer product. normalize divides by the sum of the
    taps; flip_filter flips it; gain multiplies by gain^(ndim/2) (so a separable pair scales by gain).
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32, device=device)
    if f.ndim == 0:
        f = f[None]
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f"f must be a scalar, 1-D or 2-D list of taps, got shape {tuple(f.shape)}")
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    return f * (gain ** (f.ndim / 2))


def upsample2d(x: Tensor, f: Tensor | None, up=2, padding=0, flip_filter: bool = False, gain: float = 1) -> Tensor:
    """Upsample by `up` with filter f, keeping the image centred: output = input size * up (+ pads).
    gain is multiplied by up_x * up_y, which restores the mean lost to the inserted zeros."""
    upx, upy = _factor(up, "up")
    px0, px1, py0, py1 = _padding(padding)
    kw, kh = filter_size(f)
    pad = [px0 + (kw + upx - 1) // 2, px1 + (kw - upx) // 2, py0 + (kh + upy - 1) // 2, py1 + (kh - upy) // 2]
    return upfirdn2d(x, f, up=[upx, upy], padding=pad, flip_filter=flip_filter, gain=V.real(gain, "gain") * upx * upy)


def downsample2d(x: Tensor, f: Tensor | None, down=2, padding=0, flip_filter: bool = False,
                 gain: float = 1) -> Tensor:
    """Filter with f, then keep every down-th sample, keeping the image centred."""
    downx, downy = _factor(down, "down")
    px0, px1, py0, py1 = _padding(padding)
    kw, kh = filter_size(f)
    pad = [px0 + (kw - downx + 1) // 2, px1 + (kw - downx) // 2, py0 + (kh - downy + 1) // 2, py1 + (kh - downy) // 2]
    return upfirdn2d(x, f, down=[downx, downy], padding=pad, flip_filter=flip_filter, gain=gain)


def filter2d(x: Tensor, f: Tensor | None, padding=0, flip_filter: bool = False, gain: float = 1) -> Tensor:
    """Filter with f, keeping the size and centre of the image (plus any extra padding)."""
    px0, px1, py0, py1 = _padding(padding)
    kw, kh = filter_size(f)
    pad = [px0 + kw // 2, px1 + (kw - 1) // 2, py0 + kh // 2, py1 + (kh - 1) // 2]
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain)


# ---- custom op and its gradient -----------------------------------------------------------------

def _out_hw(x: Tensor, f: Tensor, up, down, pad) -> tuple[int, int]:
    kw, kh = filter_size(f)
    return (ref.output_size(x.shape[2], up[1], down[1], pad[2], pad[3], kh),
            ref.output_size(x.shape[3], up[0], down[0], pad[0], pad[1], kw))


def backward_args(in_hw: Sequence[int], out_hw: Sequence[int], f: Tensor, up, down, pad, flip_filter: bool):
    """Arguments of the upfirdn2d that maps dL/dy to dL/dx.

    Per axis, y[o] = sum_k g[k] u[o*down + k] with u[i*up + p0] = x[i], so
    dx[i] = sum_o dy[o] g[i*up + p0 - o*down]: dy zero-inserted by `down`, correlated with the
    reversed g (so flip_filter toggles), every up-th sample kept. The left pad k-1-p0 aligns tap 0;
    the right pad makes the output length exactly the input's (it may be negative: a crop)."""
    kw, kh = filter_size(f)
    (H, W), (OH, OW) = in_hw, out_hw
    px0, py0 = kw - 1 - pad[0], kh - 1 - pad[2]
    px1 = W * up[0] - OW * down[0] + pad[0] - up[0] + 1
    py1 = H * up[1] - OH * down[1] + pad[2] - up[1] + 1
    return [down[0], down[1]], [up[0], up[1]], [px0, px1, py0, py1], not flip_filter


@_op.custom_op("gankern::upfirdn2d")
def _upfirdn2d(x: Tensor, f: Tensor, up: List[int], down: List[int], pad: List[int], flip_filter: bool,
               gain: float) -> Tensor:
    y = resolve_nonempty("upfirdn2d", x)(x, f, up, down, pad, flip_filter, gain)
    return y.contiguous(memory_format=_out_layout(x))  # the layout the fake kernel states (a no-op for kernels)


def _out_layout(x: Tensor) -> torch.memory_format:
    return torch.channels_last if (x.is_contiguous(memory_format=torch.channels_last)
                                   and not x.is_contiguous()) else torch.contiguous_format


@_upfirdn2d.register_fake
def _(x, f, up, down, pad, flip_filter, gain):
    # Output strides (docs/architecture.md "Layouts"): channels_last if x is channels_last (and not
    # also contiguous), else contiguous; every backend returns exactly this.
    OH, OW = _out_hw(x, f, up, down, pad)
    return torch.empty((x.shape[0], x.shape[1], OH, OW), dtype=x.dtype, device=x.device,
                       memory_format=_out_layout(x))


def _setup(ctx, inputs, output):
    x, f, up, down, pad, flip_filter, gain = inputs
    ctx.save_for_backward(f)
    ctx.in_hw = (x.shape[2], x.shape[3])
    ctx.out_hw = (output.shape[2], output.shape[3])
    ctx.params = (up, down, pad, flip_filter, gain)


def _backward(ctx, dy):
    (f,) = ctx.saved_tensors
    up, down, pad, flip_filter, gain = ctx.params
    dx = None
    if ctx.needs_input_grad[0]:
        bup, bdown, bpad, bflip = backward_args(ctx.in_hw, ctx.out_hw, f, up, down, pad, flip_filter)
        dx = _upfirdn2d(dy, f, bup, bdown, bpad, bflip, gain)
    return dx, None, None, None, None, None, None


_upfirdn2d.register_autograd(_backward, setup_context=_setup)


# ---- backends -----------------------------------------------------------------------------------

@register("upfirdn2d", "reference")
def _upfirdn2d_reference(x, f, up, down, pad, flip_filter, gain):
    y = ref.upfirdn2d(x, f, up[0], up[1], down[0], down[1], *pad, flip_filter, gain)
    return y.contiguous(memory_format=_out_layout(x))  # the layout the fake kernel promises


def _prepare(x, f, up, down, pad, flip_filter, gain):
    """Input in NCHW or channels_last, the output allocated in the same layout, the fp32
    correlation kernel g [k_y, k_x] (gain folded in, flipped unless flip_filter) and, for a 1-D
    filter, its two 1-D factors (the CPU kernel's separable path)."""
    fmt = _out_layout(x)
    x = x.contiguous(memory_format=fmt)
    OH, OW = _out_hw(x, f, up, down, pad)
    y = torch.empty((x.shape[0], x.shape[1], OH, OW), dtype=x.dtype, device=x.device, memory_format=fmt)
    if T._poison:
        y.fill_(float("nan"))
    f32 = f.detach().to(device=x.device, dtype=torch.float32)
    g = ref.correlation_filter(f32, flip_filter, gain).contiguous()
    g1 = None
    if f.ndim == 1:  # rows: the x pass (gain folded in) and the y pass
        h = f32 if flip_filter else f32.flip(0)
        g1 = torch.stack([h * gain, h]).contiguous()
    elif x.device.type == "cpu":
        g1 = _separable_factors(g)
    return x, y, g, g1


# A 2-D filter this small is checked for rank 1 on the host (a few microseconds).
_SEPARABLE_CHECK_MAX_TAPS = 64


def _separable_factors(g: Tensor) -> Tensor | None:
    """[x pass, y pass] with outer(y pass, x pass) == g, when the square 2-D kernel g is the outer
    product of two 1-D filters (setup_filter's 2-D form of a 1-D filter, StyleGAN's default), else
    None. The CPU kernel's separable path combines rows first: 1.5-2.4x faster than the 2-D path
    at StyleGAN's small planes (benchmarks/NOTES.md); the factors reproduce g to fp32 rounding."""
    kh, kw = g.shape
    if kh != kw or g.numel() > _SEPARABLE_CHECK_MAX_TAPS:
        return None
    v = g.tolist()
    r, c = max(((i, j) for i in range(kh) for j in range(kw)), key=lambda ij: abs(v[ij[0]][ij[1]]))
    pivot = v[r][c]
    if pivot == 0.0:
        return None
    tol = 1e-6 * abs(pivot) * abs(pivot)
    if any(abs(v[i][j] * pivot - v[i][c] * v[r][j]) > tol for i in range(kh) for j in range(kw)):
        return None
    xs = [v[r][j] / pivot for j in range(kw)]
    ys = [v[i][c] for i in range(kh)]
    return torch.tensor([xs, ys], dtype=torch.float32)


def _geometry(x, y, g, up, down, pad):
    """The geometry every native/Triton launcher takes (csrc/upfirdn2d/upfirdn2d.h: Params)."""
    return (x.shape[0], x.shape[1], x.shape[2], x.shape[3], y.shape[2], y.shape[3],
            *x.stride(), *y.stride(), up[0], up[1], down[0], down[1], pad[0], pad[2], g.shape[1], g.shape[0],
            _out_layout(x) == torch.channels_last)


def _register_native(backend):
    # the CPU kernels load and store fp32, bf16 or fp16 (csrc/common/cpu_dtypes.h), math in fp32
    dtypes = dict(cpu_dtypes=FP32_HALF) if backend == "cpu" else {}

    @register("upfirdn2d", backend, **dtypes)
    def forward(x, f, up, down, pad, flip_filter, gain):
        x, y, g, g1 = _prepare(x, f, up, down, pad, flip_filter, gain)
        sxn, sxc, sxh, sxw = x.stride()
        syn, syc, syh, syw = y.stride()
        _native.entry(backend, "upfirdn2d.forward")(
            x, x=x, g=g, g1=g1, y=y, N=x.shape[0], C=x.shape[1], H=x.shape[2], W=x.shape[3], OH=y.shape[2],
            OW=y.shape[3], sxn=sxn, sxc=sxc, sxh=sxh, sxw=sxw, syn=syn, syc=syc, syh=syh, syw=syw, upx=up[0],
            upy=up[1], downx=down[0], downy=down[1], px0=pad[0], py0=pad[2], kw=g.shape[1], kh=g.shape[0],
            channels_last=_out_layout(x) == torch.channels_last)
        return y


_register_native("cpu")
_register_native("cuda")


@register("upfirdn2d", "triton")
def _upfirdn2d_triton(x, f, up, down, pad, flip_filter, gain):
    from ..triton import upfirdn2d as tk
    x, y, g, _ = _prepare(x, f, up, down, pad, flip_filter, gain)
    if y.numel():
        tk.launch(x, g, y, *_geometry(x, y, g, up, down, pad))
    return y
