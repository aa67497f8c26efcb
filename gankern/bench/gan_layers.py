"""GAN layer benchmark cases: a StyleGAN2 discriminator block (EqualizedConv2d 3x3 with down=2 +
lrelu/clamp), the MinibatchStdDev epilogue, and an R1 penalty step (penalty + its parameter
gradients: the double backward), each against what a StyleGAN user runs eagerly: the plain-torch
formulation of StyleGAN2's layers (weight * gain, FIR filter by depthwise conv2d, strided conv2d,
bias + leaky_relu * sqrt(2) + clamp; reshape-based minibatch std), written from the published
semantics, and torch.compile of it.

Floors: the conv block is compute-bound (the strided 3x3 conv); minibatch std reads x once and
writes x plus F planes (backward: reads dy and x, writes dx)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..nn.equalized import EqualizedConv2d, EqualizedLinear
from ..nn.minibatch_std import MinibatchStdDev
from ..ops.minibatch_std import minibatch_std
from ..regularizers import _r1, compiled_r1_penalty
from .case import Case

SQRT2 = math.sqrt(2)


# ---- plain-torch StyleGAN2 formulations (the eager baselines) -----------------------------------

def eager_conv_down(x, weight, bias, f, clamp=256.0):
    """Conv2dLayer(k=3, down=2, lrelu, conv_clamp) the way it runs without NVIDIA's plugins:
    FIR-filter with padding (depthwise conv2d), strided conv, bias, leaky ReLU * sqrt(2), clamp."""
    C = x.shape[1]
    w = weight * (1 / math.sqrt(weight[0].numel()))
    kf = f.shape[-1]
    p = (kf - 2 + 1) // 2 + 1, (kf - 2) // 2 + 1  # centring for down=2 plus the conv's padding 1
    x = F.conv2d(F.pad(x, [p[0], p[1], p[0], p[1]]), f.flip([0, 1])[None, None].repeat(C, 1, 1, 1).to(x.dtype),
                 groups=C)
    x = F.conv2d(x, w.to(x.dtype), stride=2)
    x = F.leaky_relu(x + bias.to(x.dtype)[None, :, None, None], 0.2) * SQRT2
    return x.clamp(-clamp, clamp)


def eager_minibatch_std(x, group_size=4, num_channels=1):
    """StyleGAN2's MinibatchStdLayer."""
    N, C, H, W = x.shape
    G = min(group_size, N)
    y = x.reshape(G, -1, num_channels, C // num_channels, H, W)
    y = y - y.mean(dim=0)
    y = (y.square().mean(dim=0) + 1e-8).sqrt().mean(dim=[2, 3, 4])
    y = y.reshape(-1, num_channels, 1, 1).repeat(G, 1, H, W)
    return torch.cat([x, y], dim=1)


class _Disc(torch.nn.Module):
    """A 32x32 StyleGAN2-style discriminator tail: two down blocks, minibatch std, conv, fc, out.
    `plain=True` runs the same parameters through the plain-torch formulation."""

    def __init__(self, C: int, plain: bool):
        super().__init__()
        self.plain = plain
        self.fromrgb = EqualizedConv2d(3, C, 1, activation="lrelu")
        self.b0 = EqualizedConv2d(C, C, 3, activation="lrelu", down=2, conv_clamp=256)
        self.b1 = EqualizedConv2d(C, C, 3, activation="lrelu", down=2, conv_clamp=256)
        self.mbstd = MinibatchStdDev(4, 1)
        self.conv = EqualizedConv2d(C + 1, C, 3, activation="lrelu")
        self.fc = EqualizedLinear(C * 8 * 8, C, activation="lrelu")
        self.out = EqualizedLinear(C, 1)

    def forward(self, img):
        if not self.plain:
            x = self.b1(self.b0(self.fromrgb(img)))
            x = self.conv(self.mbstd(x))
            return self.out(self.fc(x.flatten(1)))
        lrelu = lambda t: F.leaky_relu(t, 0.2) * SQRT2  # noqa: E731
        c = self.fromrgb
        x = lrelu(F.conv2d(img, c.weight * c.weight_gain) + c.bias[None, :, None, None])
        for blk in (self.b0, self.b1):
            x = eager_conv_down(x, blk.weight, blk.bias, blk.resample_filter)
        x = eager_minibatch_std(x)
        c = self.conv
        x = lrelu(F.conv2d(x, c.weight * c.weight_gain, padding=1) + c.bias[None, :, None, None])
        x = lrelu(x.flatten(1) @ (self.fc.weight * self.fc.weight_gain).t() + self.fc.bias)
        return x @ (self.out.weight * self.out.weight_gain).t() + self.out.bias


# ---- cases --------------------------------------------------------------------------------------

def _block_setup(shape, dtype, device):
    def setup():
        torch.manual_seed(0)
        layer = EqualizedConv2d(shape[1], shape[1], 3, activation="lrelu", down=2, conv_clamp=256).to(device)
        x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
        dy = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, device=device, dtype=dtype)
        return layer, x, dy
    return setup


def _block_ours(a):
    layer, x, dy = a
    return torch.autograd.grad(layer(x), (x, layer.weight, layer.bias), dy)


def _block_eager(a):
    layer, x, dy = a
    y = eager_conv_down(x, layer.weight, layer.bias, layer.resample_filter)
    return torch.autograd.grad(y, (x, layer.weight, layer.bias), dy)


def _mbstd_setup(shape, dtype, device):
    def setup():
        x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
        dy = torch.randn(shape[0], shape[1] + 1, shape[2], shape[3], device=device, dtype=dtype)
        return x, dy
    return setup


def _mbstd_ours(a):
    x, dy = a
    return torch.autograd.grad(minibatch_std(x, 4, 1), (x,), dy)


def _mbstd_eager(a):
    x, dy = a
    return torch.autograd.grad(eager_minibatch_std(x), (x,), dy)


def _r1_setup(N, C, device, compiled):
    def setup():
        torch.manual_seed(0)
        ours, plain = _Disc(C, False).to(device), _Disc(C, True).to(device)
        plain.load_state_dict(ours.state_dict())
        # the leaf the penalty differentiates by, made here: torch.compile (the baseline's too)
        # refuses a requires_grad_() inside the compiled region (gankern/regularizers.py)
        real = torch.randn(N, 3, 32, 32, device=device).requires_grad_()
        r1 = compiled_r1_penalty(ours) if compiled else None
        return ours, plain, real, r1
    return setup


def _r1_step(D, penalty):
    return torch.autograd.grad(penalty.sum(), list(D.parameters()), allow_unused=True)


def _r1_ours(a):
    ours, _, real, _ = a
    return _r1_step(ours, _r1(ours, real, None, None, False))


def _r1_ours_compiled(a):
    ours, _, real, r1 = a
    return _r1_step(ours, r1(real))


def _r1_eager(a):
    _, plain, real, _ = a
    return _r1_step(plain, _r1(plain, real, None, None, False))


def cases(device: torch.device) -> list[Case]:
    device = torch.device(device)
    gpu = device.type == "cuda"
    out: list[Case] = []
    dtype = torch.float32
    es = 4
    block_shapes = [((16, 128, 32, 32), True), ((16, 256, 32, 32), False)] + ([((32, 512, 64, 64), False)] if gpu else [])
    for shape, quick in block_shapes:
        n = math.prod(shape)
        out.append(Case("gan_layers", "disc block conv3x3 down=2 lrelu fwd+bwd", shape, dtype,
                        _block_setup(shape, dtype, device), _block_ours, _block_eager,
                        bytes=(2 * n + 2 * n // 4) * es, quick=quick, kernel="upfirdn2d",
                        notes="compute-bound: strided 3x3 conv"))
    for shape, quick in [((16, 512, 4, 4), True), ((64, 512, 8, 8), False)] + ([((64, 512, 32, 32), False)] if gpu else []):
        n = math.prod(shape)
        out.append(Case("gan_layers", "minibatch_std G=4 fwd+bwd", shape, dtype, _mbstd_setup(shape, dtype, device),
                        _mbstd_ours, _mbstd_eager, bytes=5 * n * es, quick=quick, kernel="minibatch_std"))
    N, C = (16, 64) if not gpu else (32, 256)
    for compiled in (False, True):
        out.append(Case("gan_layers", f"R1 step 32px D ({'compiled_r1_penalty' if compiled else 'eager'})",
                        (N, 3, 32, 32), dtype, _r1_setup(N, C, device, compiled),
                        _r1_ours_compiled if compiled else _r1_ours, _r1_eager, bytes=N * 3 * 32 * 32 * es,
                        quick=not compiled, kernel="minibatch_std",
                        notes="penalty + parameter gradients (double backward); stock torch.compile of the plain step "
                              "fails (aot_autograd: no double backward, pytorch #91469)"))
    return out
