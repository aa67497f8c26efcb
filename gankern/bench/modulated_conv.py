"""modulated_conv benchmark cases: StyleGAN2's modulated convolution at synthesis-network shapes
(512 channels, 3x3, 4..64 px) and a whole StyleGAN2 synthesis layer at 32 px, forward and
forward+backward.

Eager baseline: StyleGAN2's formulation in plain torch, written from its published semantics
(`stylegan2_modulated_conv2d`): fused = modulate the [N, O, I, k, k] weight, square-sum it for the
coefficients, scale it, one grouped conv; non-fused = scale x, one shared conv, coefficients
from the same [N, O, I, k, k] tensor, scale y (+ noise); then the layer's bias_act reference
(add bias, lrelu, gain, clamp). StyleGAN2 runs fused in inference and non-fused when training,
so the forward cases compare against eager fused and the forward+backward ones against eager
non-fused; torch.compile of each is the second baseline.

Work (counted first, benchmarks/NOTES.md): at (16, 512, 16, 16) 3x3 the conv is 2*N*O*I*9*H*W =
19.3 GFLOP; the modulated weight tensor is N*O*I*9 = 37.7 M floats (151 MB), which StyleGAN2's
formulation writes and reads 3-4 times (modulate, square, sum, scale) whatever the strategy;
x and y are 2.1 M floats each (8 MB).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..nn.modulated import SynthesisLayer
from ..ops.modulated_conv import modulated_conv2d
from ..ops.upfirdn2d import setup_filter
from .case import Case

CLAMP = 256.0


def stylegan2_modulated_conv2d(x, weight, styles, noise=None, padding=1, demodulate=True, fused_modconv=True):
    """StyleGAN2's modulated conv formulation (up = down = 1), plain torch, from the paper's semantics."""
    N, I, H, W = x.shape
    O = weight.shape[0]
    w = weight.unsqueeze(0) * styles.reshape(N, 1, -1, 1, 1)
    dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt() if demodulate else None
    if not fused_modconv:
        x = x * styles.reshape(N, -1, 1, 1)
        x = F.conv2d(x, weight, padding=padding)
        if demodulate and noise is not None:
            return torch.addcmul(noise, x, dcoefs.reshape(N, -1, 1, 1))
        if demodulate:
            return x * dcoefs.reshape(N, -1, 1, 1)
        return x + noise if noise is not None else x
    if demodulate:
        w = w * dcoefs.reshape(N, -1, 1, 1, 1)
    x = F.conv2d(x.reshape(1, -1, H, W), w.reshape(N * O, I, *weight.shape[2:]), padding=padding, groups=N)
    x = x.reshape(N, O, *x.shape[2:])
    return x + noise if noise is not None else x


def stylegan2_synthesis_layer(layer, x, w, noise, fused_modconv):
    """StyleGAN2's SynthesisLayer forward (up 1): affine, modconv + noise, then bias_act's reference
    path (add bias, lrelu, gain, clamp), with `layer`'s parameters."""
    a = layer.affine
    styles = F.linear(w, a.weight * a.weight_gain, a.bias * a.bias_gain)
    y = stylegan2_modulated_conv2d(x, layer.weight, styles, noise * layer.noise_strength, layer.padding,
                                   fused_modconv=fused_modconv)
    y = F.leaky_relu(y + layer.bias.reshape(1, -1, 1, 1), 0.2) * math.sqrt(2)
    return y.clamp(-CLAMP, CLAMP)


def _modconv_setup(shape, device, dtype):
    def make():
        N, C, H, W = shape
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(shape, generator=g).to(device, dtype)
        weight = torch.randn(C, C, 3, 3, generator=g).to(device)
        styles = (torch.randn(N, C, generator=g) + 1).to(device)
        return x, weight, styles
    return make


def _layer_setup(shape, device, dtype, grad):
    def make():
        N, C, H, W = shape
        torch.manual_seed(0)
        layer = SynthesisLayer(C, C, 512, H, conv_clamp=CLAMP).to(device)
        with torch.no_grad():
            layer.noise_strength.fill_(0.1)
            layer.bias.normal_()
        x = torch.randn(shape, device=device, dtype=dtype).requires_grad_(grad)
        w = torch.randn(N, 512, device=device).requires_grad_(grad)
        noise = torch.randn(N, 1, H, W, device=device, dtype=dtype)
        dy = torch.randn(shape, device=device, dtype=dtype)
        return layer, x, w, noise, dy
    return make


def _gk_layer(a, fused):
    """gankern's layer with the case's noise (StyleGAN2 draws it inside; here both get the same)."""
    layer, x, w, noise, _ = a
    return modulated_conv2d(x, layer.weight, layer.affine(w), padding=layer.padding, noise=noise * layer.noise_strength,
                            fused_modconv=fused, bias=layer.bias, act="lrelu", gain=math.sqrt(2), clamp=CLAMP)


def _fwd_bwd(f):
    def run(a):
        layer, x, w, _, dy = a
        params = [x, w] + list(layer.parameters())
        return torch.autograd.grad(f(a), params, dy, allow_unused=True)
    return run


def cases(device: torch.device) -> list[Case]:
    out = []
    dtype = torch.float32
    sizes = [4, 8, 16, 32] if device.type == "cpu" else [4, 8, 16, 32, 64]
    batches = [16] if device.type == "cpu" else [16, 32]
    for N in batches:
        for px in sizes:
            shape = (N, 512, px, px)
            n = math.prod(shape)
            nbytes = (2 * n + 512 * 512 * 9 + N * 512) * 4
            quick = px == 16 and N == 16
            mk = _modconv_setup(shape, device, dtype)
            for name, fused, eager_fused in [("auto", None, True), ("fused", True, True),
                                             ("non-fused", False, False)]:
                out.append(Case(
                    "modulated_conv", f"3x3 fwd {name}", shape, dtype, mk,
                    lambda a, fused=fused: modulated_conv2d(a[0], a[1], a[2], padding=1, fused_modconv=fused),
                    lambda a, ef=eager_fused: stylegan2_modulated_conv2d(a[0], a[1], a[2], fused_modconv=ef),
                    bytes=nbytes, quick=quick and name == "auto", kernel="modconv_epilogue",
                    notes=f"eager: StyleGAN2 {'fused' if eager_fused else 'non-fused'} formulation"))
    shape = (16, 512, 32, 32)
    n = math.prod(shape)
    out.append(Case("modulated_conv", "SynthesisLayer fwd (inference)", shape, dtype,
                    _layer_setup(shape, device, dtype, False), lambda a: _gk_layer(a, None),
                    lambda a: stylegan2_synthesis_layer(a[0], a[1], a[2], a[3], True),
                    bytes=(2 * n + 512 * 512 * 9) * 4, kernel="modconv_epilogue",
                    notes="eager: StyleGAN2 inference (fused modconv) + bias_act reference"))
    out.append(Case("modulated_conv", "SynthesisLayer fwd+bwd (training)", shape, dtype,
                    _layer_setup(shape, device, dtype, True), _fwd_bwd(lambda a: _gk_layer(a, None)),
                    _fwd_bwd(lambda a: stylegan2_synthesis_layer(a[0], a[1], a[2], a[3], False)),
                    bytes=(5 * n + 3 * 512 * 512 * 9) * 4, kernel="modconv_epilogue", quick=True,
                    notes="eager: StyleGAN2 training (non-fused modconv) + bias_act reference"))
    return out
