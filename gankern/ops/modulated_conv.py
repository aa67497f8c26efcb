"""modulated_conv2d: StyleGAN2's modulated/demodulated convolution, both execution strategies.

  1. `modulated_conv2d(...)`: functional API (validation, defaults, the strategy choice)
  2. custom ops, each one kernel pass per backend:
     `gankern::modconv_weight(weight, styles, demodulate)` -> w'' [N, O, I, kh, kw]: the fused
       strategy's per-sample weights, modulated and demodulated in one pass (the coefficients are
       computed on the way and never stored);
     `gankern::modconv_dcoefs(weight, styles)` -> d [N, O]: the non-fused strategy's coefficients,
       as rsqrt(styles^2 @ (sum_k weight^2)^T + 1e-8), which never forms the N*O*I*kh*kw tensor
       StyleGAN2's formulation squares and sums;
     `gankern::modconv_epilogue(y, scale, noise, bias, act, ...)` -> clamp(act(y * scale[n, c] +
       noise + bias[c]) * gain): after the convolution (d, noise and the layer's bias_act in one
       pass) and, with scale = styles alone, the input scaling before the shared convolution.
  3. the convolution between them is gankern.conv2d_resample (torch's convolutions in the cheap
     order around upfirdn2d): a grouped one with N groups for the fused strategy, one shared one
     otherwise.

Gradients: every backward is torch ops and gankern custom ops that have gradients themselves
(bias_act_backward for the activation, modconv_dcoefs recomputed inside the backward), so
gradients of every order work on every backend (path-length regularization differentiates the
generator twice).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _native, _op
from .. import _tensors as T
from ..backends import register, resolve_nonempty
from ..reference import activations as ref_acts
from ..reference import modulated_conv as ref
from . import _validate as V
from .bias_act import _bias_act_backward
from .conv2d_resample import conv2d_resample
from .upfirdn2d import _out_layout, _padding


# ---- strategy choice ----------------------------------------------------------------------------

def _fused_default(x: Tensor, weight: Tensor, styles: Tensor) -> bool:
    """fused_modconv=None.

    CPU: non-fused, always. Measured on the 2-vCPU AMD EPYC dev VM (fp32, 3x3, no grad, the two
    strategies interleaved in one process, loaded machine; fused time / non-fused time):
    N=16 C=512 at 4 px 10.7, at 16 px 3.5; N=1 C=512 at 4/16/64 px 1.01/1.04/1.04; N=4 C=256 32 px
    1.05; N=1 C=64 128 px 0.86; N=4 C=64 128 px 1.06; N=1 C=32 256 px 1.11; N=4 C=32 256 px 0.85.
    Fused never wins by more than the noise (~15%) and loses up to 10x when the batch is large
    (oneDNN's grouped conv over N groups, plus writing N*O*I*k*k weights), so no shape rule pays.
    CUDA: StyleGAN2's published heuristic, unmeasured here (no GPU in the sessions so far): fused in
    inference (no gradient wanted) when x is float32 or the batch is 1, else non-fused."""
    if x.device.type == "cuda":
        training = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or styles.requires_grad)
        return (not training) and (x.dtype == torch.float32 or x.shape[0] == 1)
    return False


# ---- functional API -----------------------------------------------------------------------------

def _int_factor(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    return v


def _bool(v, name: str) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    return v


def output_size(size: int, k: int, f_len: int, up: int, down: int, p0: int, p1: int) -> int:
    """Output length along one axis of conv2d_resample (ref.resample_padding's padding included)."""
    n = size * up + p0 + p1
    if up > 1:
        n = n - f_len + 1
    n = n - k + 1
    if down > 1:
        n = (n - f_len) // down + 1
    return n


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool = True, padding=0, up: int = 1,
                     down: int = 1, resample_filter: Tensor | None = None, noise: Tensor | None = None,
                     fused_modconv: bool | None = None, flip_weight: bool = True, flip_filter: bool = False,
                     bias: Tensor | None = None, act: str = "linear", alpha: float | None = None,
                     gain: float | None = None, clamp: float | None = None,
                     input_gain: Tensor | None = None) -> Tensor:
    """StyleGAN2's modulated convolution (reference/modulated_conv.py is the specification).

    Args:
        x: [N, I, H, W]; float32 on every backend (fp16/bf16 on the GPU backends; the CPU kernels
            take bf16/fp16 activations too).
        weight: [O, I, kh, kw], shared by the batch. styles: [N, I], one scale per input channel
            and sample.
        demodulate: scale each (sample, output channel) by rsqrt(sum of its squared modulated
            weights + 1e-8).
        padding: int, [x, y] or [x0, x1, y0, y1] (negative crops), applied once before the conv.
        up, down: int resampling factors with `resample_filter` (a 1-D or 2-D FIR filter, as
            gankern.setup_filter makes it; None = no filtering), StyleGAN2's conv2d_resample order.
        noise: added to the output, broadcast to [N, O, OH, OW] (StyleGAN2: [N, 1, OH, OW]).
        fused_modconv: True: per-sample weights and one grouped conv; False: scale activations,
            one shared conv, scale again; None: the faster for the device (`_fused_default`).
        flip_weight: True: cross-correlation (torch's conv2d); False: a true convolution (StyleGAN2
            passes up == 1).
        flip_filter: as in upfirdn2d.
        bias, act, alpha, gain, clamp: an optional epilogue with bias_act's definition, applied
            after the noise in the same pass (gain defaults to act's StyleGAN2 gain).
        input_gain: StyleGAN3's input scaling, a one-element tensor (its magnitude EMA's rsqrt)
            that multiplies the demodulated weights, i.e. the convolution's output; folded into the
            epilogue's per-(sample, channel) scale.
    """
    V.tensor(x, "x")
    V.tensor(weight, "weight")
    V.tensor(styles, "styles")
    if x.ndim != 4:
        raise ValueError(f"x must be a 4-D [N, I, H, W] tensor, got shape {tuple(x.shape)}")
    N, I, H, W = x.shape
    if I == 0:  # torch's conv2d returns 0 output channels for 0 input channels: refuse, not mis-shape
        raise ValueError(f"x must have at least one input channel, got shape {tuple(x.shape)}")
    if weight.ndim != 4 or weight.shape[1] != I:
        raise ValueError(f"weight must have shape [O, I={I}, kh, kw], got {tuple(weight.shape)}")
    if styles.ndim != 2 or tuple(styles.shape) != (N, I):
        raise ValueError(f"styles must have shape [N, I] = [{N}, {I}], got {tuple(styles.shape)}")
    V.same_device(x, "x", weight=weight, styles=styles, noise=noise, bias=bias, resample_filter=resample_filter,
                  input_gain=input_gain)
    if input_gain is not None:
        V.tensor(input_gain, "input_gain")
        if input_gain.numel() != 1:
            raise ValueError(f"input_gain must hold one value, got shape {tuple(input_gain.shape)}")
    demodulate, flip_weight, flip_filter = (_bool(demodulate, "demodulate"), _bool(flip_weight, "flip_weight"),
                                            _bool(flip_filter, "flip_filter"))
    if fused_modconv is not None:
        _bool(fused_modconv, "fused_modconv")
    up, down = _int_factor(up, "up"), _int_factor(down, "down")
    pad = _padding(padding)
    f = resample_filter
    if f is not None:
        V.tensor(f, "resample_filter")
        if f.ndim not in (1, 2) or f.numel() == 0:
            raise ValueError(f"resample_filter must be a non-empty 1-D or 2-D filter, got shape {tuple(f.shape)}")
    O, _, kh, kw = weight.shape
    px0, px1, py0, py1 = ref.resample_padding(f, up, down, pad)
    fw, fh = (1, 1) if f is None else (f.shape[-1], f.shape[0])
    OH, OW = output_size(H, kh, fh, up, down, py0, py1), output_size(W, kw, fw, up, down, px0, px1)
    if OH < 1 or OW < 1:
        raise ValueError(f"modulated_conv2d of a {H}x{W} image with a {kh}x{kw} kernel, up={up}, down={down} and "
                         f"padding={padding} leaves no output ({OH}x{OW})")
    if noise is not None:
        V.tensor(noise, "noise")
        if noise.ndim != 4 or any(a not in (1, b) for a, b in zip(noise.shape, (N, O, OH, OW))):
            raise ValueError(f"noise must broadcast to the output shape [{N}, {O}, {OH}, {OW}], "
                             f"got {tuple(noise.shape)}")
    a = ref_acts.get(act)
    if bias is not None:
        V.tensor(bias, "bias")
        if bias.ndim != 1 or bias.shape[0] != O:
            raise ValueError(f"bias must have shape [O] = [{O}], got {tuple(bias.shape)}")
    alpha = a.def_alpha if alpha is None else V.real(alpha, "alpha")
    gain = a.def_gain if gain is None else V.real(gain, "gain")
    if clamp is not None:
        clamp = V.real(clamp, "clamp", min_value=0.0)

    if x.dtype == torch.float16 and demodulate:
        weight, styles = ref.prenormalize(weight.float(), styles.float())
    styles = styles.to(weight.dtype)
    fused = _fused_default(x, weight, styles) if fused_modconv is None else fused_modconv
    fused = fused and N > 0  # an empty batch has no groups to convolve; the non-fused form is defined
    epilogue = noise is not None or bias is not None or act != "linear" or gain != 1 or clamp is not None
    if noise is not None:
        noise = noise.to(x.dtype)
    if fused:
        w = _modconv_weight(weight, styles, demodulate).reshape(N * O, I, kh, kw).to(x.dtype)
        y = conv2d_resample(x.reshape(1, N * I, H, W), w, f, up, down, list(pad), N, flip_weight, flip_filter)
        y = y.reshape(N, O, OH, OW)
        scale = None if input_gain is None else input_gain.reshape(1, 1).expand(N, O).to(weight.dtype)
        epilogue = epilogue or input_gain is not None
    else:
        xs = _modconv_epilogue(x, styles, None, None, "linear", 0.0, 1.0, None)
        y = conv2d_resample(xs, weight, f, up, down, list(pad), 1, flip_weight, flip_filter)
        scale = _modconv_dcoefs(weight, styles) if demodulate else None
        if input_gain is not None:
            g = input_gain.reshape(1, 1).to(weight.dtype)
            scale = g.expand(N, O) if scale is None else scale * g
        epilogue = epilogue or scale is not None
    if not epilogue:
        return y
    return _modconv_epilogue(y, scale, noise, bias, act, alpha, gain, clamp)


# ---- custom ops ---------------------------------------------------------------------------------

def _check_ws(weight: Tensor, styles: Tensor) -> None:
    if weight.ndim != 4 or styles.ndim != 2 or styles.shape[1] != weight.shape[1]:
        raise ValueError(f"weight must be [O, I, kh, kw] and styles [N, I], got {tuple(weight.shape)} and "
                         f"{tuple(styles.shape)}")
    if styles.dtype != weight.dtype:
        raise TypeError(f"styles ({styles.dtype}) must have weight's dtype ({weight.dtype})")


def _emptier(weight: Tensor, styles: Tensor) -> Tensor:
    """The operand whose emptiness decides (an empty batch or empty weight runs the reference)."""
    return styles if styles.numel() == 0 else weight


@_op.custom_op("gankern::modconv_weight")
def _modconv_weight(weight: Tensor, styles: Tensor, demodulate: bool) -> Tensor:
    _check_ws(weight, styles)
    return resolve_nonempty("modconv_weight", _emptier(weight, styles))(weight, styles, demodulate).contiguous()


@_modconv_weight.register_fake
def _(weight, styles, demodulate):
    return weight.new_empty((styles.shape[0], *weight.shape))


@_op.custom_op("gankern::modconv_dcoefs")
def _modconv_dcoefs(weight: Tensor, styles: Tensor) -> Tensor:
    _check_ws(weight, styles)
    return resolve_nonempty("modconv_dcoefs", _emptier(weight, styles))(weight, styles).contiguous()


@_modconv_dcoefs.register_fake
def _(weight, styles):
    return weight.new_empty((styles.shape[0], weight.shape[0]))


def _check_epilogue(y, scale, noise, bias):
    if y.ndim != 4:
        raise ValueError(f"y must be 4-D [N, C, H, W], got shape {tuple(y.shape)}")
    N, C = y.shape[0], y.shape[1]
    if scale is not None and tuple(scale.shape) != (N, C):
        raise ValueError(f"scale must have shape [N, C] = [{N}, {C}], got {tuple(scale.shape)}")
    if noise is not None:
        if noise.ndim != 4 or any(a not in (1, b) for a, b in zip(noise.shape, y.shape)):
            raise ValueError(f"noise must broadcast to y's shape {tuple(y.shape)}, got {tuple(noise.shape)}")
        if noise.dtype != y.dtype:
            raise TypeError(f"noise ({noise.dtype}) must have y's dtype ({y.dtype})")
    if bias is not None and (bias.ndim != 1 or bias.shape[0] != C):
        raise ValueError(f"bias must have shape [C] = [{C}], got {tuple(bias.shape)}")


@_op.custom_op("gankern::modconv_epilogue")
def _modconv_epilogue(y: Tensor, scale: Optional[Tensor], noise: Optional[Tensor], bias: Optional[Tensor], act: str,
                      alpha: float, gain: float, clamp: Optional[float]) -> Tensor:
    _check_epilogue(y, scale, noise, bias)
    out = resolve_nonempty("modconv_epilogue", y)(y, scale, noise, bias, act, alpha, gain, clamp)
    return out.contiguous(memory_format=_out_layout(y))


# Output strides (docs/architecture.md "Layouts"): channels_last if y is channels_last (and not
# also contiguous), else contiguous, as upfirdn2d.
@_modconv_epilogue.register_fake
def _(y, scale, noise, bias, act, alpha, gain, clamp):
    return torch.empty(y.shape, dtype=y.dtype, device=y.device, memory_format=_out_layout(y))


# ---- autograd -----------------------------------------------------------------------------------

def _dcoefs_grads(weight: Tensor, styles: Tensor, d: Tensor, gd: Tensor) -> tuple[Tensor, Tensor]:
    """dL/dweight, dL/dstyles from dL/dd, d = (S + eps)^-1/2 with S[n, o] = sum_i styles[n, i]^2 *
    sum_k weight[o, i, k]^2. Torch ops of a d that is itself differentiable: any order."""
    q = gd * d.pow(3) * -0.5                                   # dL/dS
    w2 = weight.square().sum(dim=[2, 3])                       # [O, I]
    g_styles = 2 * styles * (q @ w2)
    g_weight = 2 * weight * (q.t() @ styles.square())[:, :, None, None]
    return g_weight, g_styles


def _setup_ws(ctx, inputs, output):
    weight, styles, *params = inputs
    ctx.save_for_backward(weight, styles)
    ctx.params = params


def _weight_backward(ctx, g):
    weight, styles = ctx.saved_tensors
    (demodulate,) = ctx.params
    g = g.to(weight.dtype)
    if demodulate:
        d = _modconv_dcoefs(weight, styles)   # recomputed: differentiable in weight, styles
        gd = torch.einsum("noikl,oikl,ni->no", g, weight, styles)
        gm = g * d[:, :, None, None, None]
    else:
        gm = g
    g_weight = torch.einsum("noikl,ni->oikl", gm, styles)
    g_styles = torch.einsum("noikl,oikl->ni", gm, weight)
    if demodulate:
        gw2, gs2 = _dcoefs_grads(weight, styles, d, gd)
        g_weight, g_styles = g_weight + gw2, g_styles + gs2
    return g_weight, g_styles, None


def _dcoefs_backward(ctx, gd):
    weight, styles = ctx.saved_tensors
    d = _modconv_dcoefs(weight, styles)
    g_weight, g_styles = _dcoefs_grads(weight, styles, d, gd.to(weight.dtype))
    return g_weight, g_styles


_modconv_weight.register_autograd(_weight_backward, setup_context=_setup_ws)
_modconv_dcoefs.register_autograd(_dcoefs_backward, setup_context=_setup_ws)


def _setup_epilogue(ctx, inputs, output):
    y, scale, noise, bias, *params = inputs
    ctx.save_for_backward(y, scale, noise, bias)
    ctx.params = params  # act, alpha, gain, clamp


def _sum_to(g: Tensor, shape) -> Tensor:
    dims = [i for i, (a, b) in enumerate(zip(shape, g.shape)) if a == 1 and b != 1]
    return g.sum(dim=dims, keepdim=True) if dims else g


def _epilogue_backward(ctx, gout):
    """z = y * scale + noise; out = bias_act(z, bias). dL/dz is bias_act's backward (a custom op with
    its own gradient), the rest is torch ops: differentiable again."""
    y, scale, noise, bias = ctx.saved_tensors
    act, alpha, gain, clamp = ctx.params
    gout = gout.to(y.dtype)
    if act == "linear" and clamp is None:
        gz = gout * gain if gain != 1 else gout
    else:
        z = y * scale.to(y.dtype)[:, :, None, None] if scale is not None else y
        z = z + noise if noise is not None else z
        gz = _bias_act_backward(gout, z, bias, 1, act, alpha, gain, clamp)
    need = ctx.needs_input_grad
    gy = gz * scale.to(gz.dtype)[:, :, None, None] if scale is not None else gz
    g_scale = g_noise = g_bias = None
    if scale is not None and need[1]:
        g_scale = (gz * y).sum(dim=[2, 3], dtype=torch.float32 if y.dtype != torch.float64 else None).to(scale.dtype)
    if noise is not None and need[2]:
        g_noise = _sum_to(gz, noise.shape).to(noise.dtype)
    if bias is not None and need[3]:
        g_bias = T.channel_sums(gz, 1).to(bias.dtype)
    return gy if need[0] else None, g_scale, g_noise, g_bias, None, None, None, None


_modconv_epilogue.register_autograd(_epilogue_backward, setup_context=_setup_epilogue)


# ---- backends -----------------------------------------------------------------------------------

register("modconv_weight", "reference")(ref.modulate)
register("modconv_dcoefs", "reference")(ref.demod_coefs)
register("modconv_epilogue", "reference")(ref.epilogue)


def _ws32(weight: Tensor, styles: Tensor):
    """The kernels' operands: fp32 contiguous weight [O, I*kh*kw] and styles [N, I]."""
    return weight.detach().float().contiguous(), styles.detach().float().contiguous()


def _epilogue_operands(y, scale, noise, bias):
    """y in NCHW or channels_last; fp32 scale [N, C] and bias [C]; noise as a [N|1, C|1, H, W]
    tensor with contiguous planes, and its sample and channel strides (0 where broadcast)."""
    fmt = _out_layout(y)
    y = y.contiguous(memory_format=fmt)
    sc = scale.float().contiguous() if scale is not None else None
    b = bias.float().contiguous() if bias is not None else None
    snn = snc = 0
    if noise is not None:
        if noise.shape[2:] != y.shape[2:]:
            noise = noise.expand(noise.shape[0], noise.shape[1], y.shape[2], y.shape[3])
        noise = noise.contiguous()
        snn = noise.stride(0) if noise.shape[0] > 1 else 0
        snc = noise.stride(1) if noise.shape[1] > 1 else 0
    return y, sc, noise, snn, snc, b, fmt == torch.channels_last


def _register_native(backend):
    """The cpu and cuda backends: the same Params to the same entry points of either module."""
    half = dict(cpu_dtypes=(torch.float32, torch.bfloat16, torch.float16)) if backend == "cpu" else {}

    @register("modconv_weight", backend, cpu_dtypes=(torch.float32, torch.bfloat16, torch.float16))
    def weight_fwd(weight, styles, demodulate):
        w, s = _ws32(weight, styles)
        O, I, kh, kw = w.shape
        out = T.empty((s.shape[0], O, I, kh, kw), dtype=torch.float32, device=w.device)
        _native.entry(backend, "modulated_conv.modulate")(
            w, weight=w, styles=s, wmod=out, dcoefs=None, N=s.shape[0], O=O, I=I, K=kh * kw, demodulate=demodulate)
        return out.to(weight.dtype)

    @register("modconv_dcoefs", backend, cpu_dtypes=(torch.float32, torch.bfloat16, torch.float16))
    def dcoefs_fwd(weight, styles):
        w, s = _ws32(weight, styles)
        O, I, kh, kw = w.shape
        d = T.empty((s.shape[0], O), dtype=torch.float32, device=w.device)
        _native.entry(backend, "modulated_conv.modulate")(
            w, weight=w, styles=s, wmod=None, dcoefs=d, N=s.shape[0], O=O, I=I, K=kh * kw, demodulate=True)
        return d.to(weight.dtype)

    @register("modconv_epilogue", backend, **half)
    def epilogue_fwd(y, scale, noise, bias, act, alpha, gain, clamp):
        y, sc, nz, snn, snc, b, cl = _epilogue_operands(y, scale, noise, bias)
        out = T.empty_like(y)
        N, C, H, W = y.shape
        _native.entry(backend, "modulated_conv.epilogue")(
            y, y=y, out=out, scale=sc, noise=nz, bias=b, N=N, C=C, HW=H * W, snn=snn, snc=snc, channels_last=cl,
            act=ref_acts.get(act).code, alpha=alpha, gain=gain, clamp=-1.0 if clamp is None else clamp)
        return out


_register_native("cpu")
_register_native("cuda")


@register("modconv_weight", "triton")
def _weight_triton(weight, styles, demodulate):
    from ..triton import modulated_conv as tk
    w, s = _ws32(weight, styles)
    out = T.empty((s.shape[0], *w.shape), dtype=torch.float32, device=w.device)
    tk.modulate(w, s, out, None, demodulate)
    return out.to(weight.dtype)


@register("modconv_dcoefs", "triton")
def _dcoefs_triton(weight, styles):
    from ..triton import modulated_conv as tk
    w, s = _ws32(weight, styles)
    d = T.empty((s.shape[0], w.shape[0]), dtype=torch.float32, device=w.device)
    tk.modulate(w, s, None, d, True)
    return d.to(weight.dtype)


@register("modconv_epilogue", "triton")
def _epilogue_triton(y, scale, noise, bias, act, alpha, gain, clamp):
    from ..triton import modulated_conv as tk
    y, sc, nz, snn, snc, b, cl = _epilogue_operands(y, scale, noise, bias)
    out = T.empty_like(y)
    tk.epilogue(y, out, sc, nz, b, snn, snc, cl, ref_acts.get(act).code, alpha, gain,
                -1.0 if clamp is None else clamp)
    return out
