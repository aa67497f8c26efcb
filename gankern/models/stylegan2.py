"""StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN"), compact:
a mapping + synthesis generator with the skip architecture and a residual discriminator.

Written from the paper's semantics (and StyleGAN2-ADA's published layer definitions), not from
NVIDIA's code. Parameter and buffer names follow StyleGAN2's layouts (`mapping.fc0.weight`,
`synthesis.b8.conv0.affine.weight`, `b32.skip.weight`, ...), so their structure is familiar and a
state_dict moves between `fused=True` and `fused=False`.

- fused=True: every hot path is a gankern op or layer: EqualizedLinear (addmm + bias_act) in the
  mapping network, gankern.nn.SynthesisLayer / ToRGBLayer (`modulated_conv2d` with noise + bias +
  lrelu in its epilogue; the style affines are one addmm either way),
  `upsample2d` for the skip RGB, EqualizedConv2d (`conv2d_resample` + bias_act) and
  MinibatchStdDev in the discriminator.
- fused=False: the same parameters through plain torch, in the form a StyleGAN2 user runs without
  NVIDIA's CUDA plugins: zero insertion + pad + depthwise conv2d for the FIR filters, a filter
  before a strided conv for down=2, a transposed conv before the filter for up=2, the non-fused
  modulation (scale the activations, one shared conv, scale by the demodulation coefficients),
  F.leaky_relu(x + b, 0.2) * sqrt(2), the reshape-based minibatch standard deviation.

Equalized learning rate: weights are stored unit-scaled and multiplied by 1/sqrt(fan_in) at run time
(lr_multiplier 0.01 in the mapping network). The synthesis convolutions need no weight gain: the
demodulation cancels any scale of the weight.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._tables import real
from ..nn.equalized import EqualizedConv2d, EqualizedLinear
from ..nn import modulated as nn_modulated
from ..nn.minibatch_std import MinibatchStdDev
from ..ops.upfirdn2d import setup_filter, upsample2d
from ._layers import check_fused

SQRT2 = math.sqrt(2)
SQRT_HALF = math.sqrt(0.5)
LRELU_SLOPE = 0.2
RESAMPLE_FILTER = (1, 3, 3, 1)   # StyleGAN2's 4-tap binomial resampling filter
DEMOD_EPS = real("DEMOD_EPS")


def _channels(res: int, channel_base: int, channel_max: int) -> int:
    return min(channel_base // res, channel_max)


def _resolutions(image_size: int) -> list[int]:
    if not isinstance(image_size, int) or image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= 8, got {image_size!r}")
    return [2 ** i for i in range(2, int(math.log2(image_size)) + 1)]


# ---- the plain-torch formulation (fused=False) ------------------------------------------------------

def torch_upsample_pad(x: Tensor, up: int, pad) -> Tensor:
    """upfirdn2d's first two steps the eager way: insert up - 1 zeros after every sample, then pad
    by pad = (x0, x1, y0, y1) (negative entries crop)."""
    N, C, H, W = x.shape
    if up > 1:
        x = F.pad(x.reshape(N, C, H, 1, W, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(N, C, H * up, W * up)
    x0, x1, y0, y1 = pad
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    return x[:, :, max(-y0, 0): x.shape[2] - max(-y1, 0), max(-x0, 0): x.shape[3] - max(-x1, 0)]


def torch_upfirdn2d(x: Tensor, f: Tensor, up: int = 1, down: int = 1, pad=(0, 0, 0, 0), gain: float = 1.0) -> Tensor:
    """upfirdn2d the eager way: insert zeros, pad (negative crops), depthwise conv2d with the
    flipped 2-D filter (a true convolution), keep every down-th sample. f: 2-D [kh, kw]."""
    x = torch_upsample_pad(x, up, pad)
    w = (f * gain).flip([0, 1]).to(x.dtype)[None, None].repeat(x.shape[1], 1, 1, 1)
    x = F.conv2d(x, w, groups=x.shape[1])
    return x[:, :, ::down, ::down] if down > 1 else x


def torch_upsample2d(x: Tensor, f: Tensor, up: int = 2) -> Tensor:
    k = f.shape[-1]
    p0, p1 = (k + up - 1) // 2, (k - up) // 2
    return torch_upfirdn2d(x, f, up=up, pad=(p0, p1, p0, p1), gain=up * up)


def torch_conv2d_resample(x: Tensor, w: Tensor, f: Tensor, up: int = 1, down: int = 1, padding: int = 0,
                          flip_weight: bool = True) -> Tensor:
    """StyleGAN2's resampling convolution (upsample, pad, filter, conv, filter, downsample) in the
    cheap order, plain torch. w [O, I, k, k], f 2-D, groups 1. Derivation of the reorderings: FIR
    filtering and convolution commute (both linear shift-invariant) and a valid convolution of a
    valid convolution is one valid convolution with the combined kernel, so only the padding moves."""
    k, kf = w.shape[-1], f.shape[-1]
    p0 = p1 = padding
    if up > 1:   # centring through the up filter, at the upsampled resolution
        p0, p1 = p0 + (kf + up - 1) // 2, p1 + (kf - up) // 2
    if down > 1:
        p0, p1 = p0 + (kf - down + 1) // 2, p1 + (kf - down) // 2
    if up > 1:
        # zero insertion + true convolution with w = conv_transpose2d (stride up, no flip); the
        # filter then needs p0 - (k - 1) before and p1 - (k - up) after (valid over the full result)
        wt = (w if not flip_weight else w.flip([2, 3])).transpose(0, 1)
        x = F.conv_transpose2d(x, wt.to(x.dtype), stride=up)
        q0, q1 = p0 - (k - 1), p1 - (k - up)
        x = torch_upfirdn2d(x, f, pad=(q0, q1, q0, q1), gain=up * up)
        return torch_upfirdn2d(x, f, down=down) if down > 1 else x
    w = w if flip_weight else w.flip([2, 3])
    if down > 1:
        if k == 1:   # 1x1: filter and downsample first, then the conv on the small image
            return F.conv2d(torch_upfirdn2d(x, f, down=down, pad=(p0, p1, p0, p1)), w.to(x.dtype))
        x = torch_upfirdn2d(x, f, pad=(p0, p1, p0, p1))   # filter, then a strided conv
        return F.conv2d(x, w.to(x.dtype), stride=down)
    return F.conv2d(x, w.to(x.dtype), padding=padding)


def torch_lrelu(x: Tensor, bias: Tensor | None, gain: float = SQRT2, clamp: float | None = None) -> Tensor:
    """bias_act(x, bias, 'lrelu', gain, clamp) as StyleGAN2's eager reference computes it."""
    if bias is not None:
        x = x + bias.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))
    x = F.leaky_relu(x, LRELU_SLOPE) * gain
    return x.clamp(-clamp, clamp) if clamp is not None else x


def torch_minibatch_std(x: Tensor, group_size: int | None, num_channels: int) -> Tensor:
    N, C, H, W = x.shape
    G = min(group_size, N) if group_size is not None else N
    y = x.reshape(G, -1, num_channels, C // num_channels, H, W)
    y = y - y.mean(dim=0)
    y = (y.square().mean(dim=0) + 1e-8).sqrt().mean(dim=[2, 3, 4])
    y = y.reshape(-1, num_channels, 1, 1).repeat(G, 1, H, W)
    return torch.cat([x, y], dim=1)


# ---- layers with a fused switch (same parameters either way) -------------------------------------

class Linear(EqualizedLinear):
    """gankern.nn.EqualizedLinear; fused=False runs F.linear + torch's leaky ReLU."""

    def __init__(self, *args, fused: bool = True, **kw):
        super().__init__(*args, **kw)
        self.fused = fused

    def forward(self, x: Tensor) -> Tensor:
        if self.fused:
            return super().forward(x)
        b = self.bias * self.bias_gain if self.bias is not None else None
        x = F.linear(x, self.weight * self.weight_gain, b)
        return torch_lrelu(x, None) if self.activation == "lrelu" else x


class Conv2d(EqualizedConv2d):
    """gankern.nn.EqualizedConv2d (StyleGAN2's Conv2dLayer); fused=False runs the plain-torch
    resampling convolution + bias + leaky ReLU."""

    def __init__(self, *args, fused: bool = True, **kw):
        super().__init__(*args, **kw)
        self.fused = fused
        if self.activation not in ("linear", "lrelu"):
            raise ValueError(f"activation must be 'linear' or 'lrelu', got {self.activation!r}")

    def forward(self, x: Tensor, gain: float = 1) -> Tensor:
        if self.fused:
            return super().forward(x, gain)
        x = torch_conv2d_resample(x, self.weight * self.weight_gain, self.resample_filter, self.up, self.down,
                                  self.padding, flip_weight=self.up == 1)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        if self.activation == "lrelu":
            return torch_lrelu(x, self.bias, self.act_gain * gain, clamp)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype)[None, :, None, None]
        x = x * gain if gain != 1 else x
        return x.clamp(-clamp, clamp) if clamp is not None else x


class MinibatchStd(MinibatchStdDev):
    def __init__(self, group_size: int | None = 4, num_channels: int = 1, fused: bool = True):
        super().__init__(group_size, num_channels)
        self.fused = fused

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) if self.fused else torch_minibatch_std(x, self.group_size, self.num_channels)


# ---- generator -----------------------------------------------------------------------------------

class MappingNetwork(nn.Module):
    """z -> w: z normalized by its second moment, then `num_layers` EqualizedLinear + lrelu layers
    (lr_multiplier 0.01), broadcast to num_ws copies. In training mode the running mean of w
    (`w_avg`, decay w_avg_beta) is tracked; truncation moves w towards it by psi."""

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int = 8, lr_multiplier: float = 0.01,
                 w_avg_beta: float = 0.995, fused: bool = True):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, w_dim, num_ws, num_layers
        self.w_avg_beta = w_avg_beta
        for i in range(num_layers):
            setattr(self, f"fc{i}", Linear(z_dim if i == 0 else w_dim, w_dim, activation="lrelu",
                                           lr_multiplier=lr_multiplier, fused=fused))
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                update_w_avg: bool | None = None) -> Tensor:
        x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if update_w_avg if update_w_avg is not None else self.training:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        x = x[:, None].repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
            x = torch.cat([self.w_avg.lerp(x[:, :cut], truncation_psi), x[:, cut:]], dim=1)
        return x


class SynthesisLayer(nn_modulated.SynthesisLayer):
    """gankern.nn.SynthesisLayer (StyleGAN2's: affine with bias init 1, modulated + demodulated
    3x3 conv, up=2 with the FIR filter for a block's first layer, noise * noise_strength, bias,
    lrelu * sqrt(2), clamp; keys affine.{weight,bias}, weight, noise_strength, bias, buffers
    resample_filter, noise_const). fused=False runs StyleGAN2's non-fused modulation in plain
    torch: scale the activations by the styles, one shared conv, scale by the demodulation
    coefficients, add noise, bias + leaky ReLU."""

    def __init__(self, *args, fused: bool = True, **kw):
        super().__init__(*args, **kw)
        self.fused = fused

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "random", gain: float = 1) -> Tensor:
        if self.fused:
            return super().forward(x, w, noise_mode, gain=gain)
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        styles = self.affine(w)   # addmm: plain torch already
        noise = None
        if noise_mode == "random":
            shape = [x.shape[0], 1, self.resolution, self.resolution]
            noise = torch.randn(shape, device=x.device) * self.noise_strength
        elif noise_mode == "const":
            noise = (self.noise_const * self.noise_strength)[None, None]
        d = ((self.weight[None] * styles[:, None, :, None, None]).square().sum(dim=[2, 3, 4]) + DEMOD_EPS).rsqrt()
        y = torch_conv2d_resample(x * styles[:, :, None, None], self.weight, self.resample_filter, up=self.up,
                                  padding=self.padding, flip_weight=self.up == 1)
        y = y * d[:, :, None, None]
        if noise is not None:
            y = y + noise
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return torch_lrelu(y, self.bias, self.act_gain * gain, clamp)


class ToRGBLayer(nn_modulated.ToRGBLayer):
    """gankern.nn.ToRGBLayer (1x1 modulated conv without demodulation, styles scaled by
    1/sqrt(in_channels), bias, clamp; keys affine.{weight,bias}, weight, bias); fused=False: plain
    torch."""

    def __init__(self, *args, fused: bool = True, **kw):
        super().__init__(*args, **kw)
        self.fused = fused

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        if self.fused:
            return super().forward(x, w)
        styles = self.affine(w) * self.weight_gain
        y = F.conv2d(x * styles[:, :, None, None], self.weight) + self.bias[None, :, None, None]
        return y.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp is not None else y


class SynthesisBlock(nn.Module):
    """One resolution: [const 4x4 | conv0 (up=2)], conv1, torgb; the RGB of the previous block is
    upsampled with the FIR filter and the block's ToRGB output added (skip architecture)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 conv_clamp: float | None, fused: bool):
        super().__init__()
        self.in_channels, self.resolution, self.fused = in_channels, resolution, fused
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp,
                                        fused=fused)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp, fused=fused)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp, fused=fused)
        self.register_buffer("resample_filter", setup_filter(list(RESAMPLE_FILTER)))
        self.num_conv = 1 if in_channels == 0 else 2

    def forward(self, x: Tensor | None, img: Tensor | None, ws: Tensor, noise_mode: str = "random"):
        """ws: [N, num_conv + 1, w_dim] (the last one is torgb's, shared with the next block's conv0)."""
        if self.in_channels == 0:
            x = self.const[None].repeat(ws.shape[0], 1, 1, 1)
            x = self.conv1(x, ws[:, 0], noise_mode)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode)
        if img is not None:
            img = upsample2d(img, self.resample_filter) if self.fused else torch_upsample2d(img, self.resample_filter)
        y = self.torgb(x, ws[:, self.num_conv])
        img = y if img is None else img + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> images [N, img_channels, R, R]; blocks b4, b8, ..., bR."""

    def __init__(self, w_dim: int, image_size: int, img_channels: int, channel_base: int, channel_max: int,
                 conv_clamp: float | None = None, fused: bool = True):
        super().__init__()
        self.w_dim, self.image_size, self.img_channels = w_dim, image_size, img_channels
        self.resolutions = _resolutions(image_size)
        self.num_ws = 0
        for res in self.resolutions:
            in_ch = 0 if res == 4 else _channels(res // 2, channel_base, channel_max)
            block = SynthesisBlock(in_ch, _channels(res, channel_base, channel_max), w_dim, res, img_channels,
                                   conv_clamp, fused)
            setattr(self, f"b{res}", block)
            self.num_ws += block.num_conv
        self.num_ws += 1   # the last block's torgb

    def forward(self, ws: Tensor, noise_mode: str = "random") -> Tensor:
        x = img = None
        i = 0
        for res in self.resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws[:, i: i + block.num_conv + 1], noise_mode)
            i += block.num_conv
        return img


class StyleGAN2Generator(nn.Module):
    """StyleGAN2's generator: `mapping` (z -> ws) and `synthesis` (ws -> images).

    Compact defaults for 32x32 digits: z_dim = w_dim = 64, 2 mapping layers, channels
    min(channel_base // res, channel_max) = 64, 64, 64, 32 at 4, 8, 16, 32 px."""

    def __init__(self, image_size: int = 32, channels: int = 1, z_dim: int = 64, w_dim: int = 64,
                 mapping_layers: int = 2, channel_base: int = 1024, channel_max: int = 64,
                 conv_clamp: float | None = None, fused: bool = True):
        super().__init__()
        self.fused = check_fused(fused)
        self.image_size, self.channels, self.z_dim, self.w_dim = image_size, channels, z_dim, w_dim
        self.synthesis = SynthesisNetwork(w_dim, image_size, channels, channel_base, channel_max, conv_clamp, fused)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, mapping_layers, fused=fused)

    def forward(self, z: Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                noise_mode: str = "random", update_w_avg: bool | None = None) -> Tensor:
        ws = self.mapping(z, truncation_psi, truncation_cutoff, update_w_avg)
        return self.synthesis(ws, noise_mode)

    def latent(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        return torch.randn(n, self.z_dim, generator=generator, device=device)

    def mixed_ws(self, z: Tensor, style_mixing_prob: float = 0.0) -> Tensor:
        """The ws of a training step: mapping(z) (updating w_avg in training mode), and with
        probability style_mixing_prob the ws from a layer cutoff on replaced by those of a second
        latent (style mixing regularization: the network must not assume adjacent styles correlate)."""
        ws = self.mapping(z)
        if style_mixing_prob > 0:
            cutoff = torch.randint(1, ws.shape[1], (), device=ws.device)
            cutoff = torch.where(torch.rand((), device=ws.device) < style_mixing_prob, cutoff, ws.shape[1])
            ws2 = self.mapping(torch.randn_like(z), update_w_avg=False)
            keep = torch.arange(ws.shape[1], device=ws.device)[None, :, None] < cutoff
            ws = torch.where(keep, ws, ws2)
        return ws

    def train_forward(self, z: Tensor, style_mixing_prob: float = 0.0) -> tuple[Tensor, Tensor]:
        """(images, ws) of a training step with random noise (one forward, so DDP sees the call)."""
        ws = self.mixed_ws(z, style_mixing_prob)
        return self.synthesis(ws, "random"), ws


# ---- discriminator -------------------------------------------------------------------------------

class DiscriminatorBlock(nn.Module):
    """Residual block: [fromrgb 1x1 (first block)], conv0 3x3, conv1 3x3 down=2, plus a 1x1 down=2
    skip without bias; both branches scaled by sqrt(0.5) so the sum keeps unit variance."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, img_channels: int,
                 conv_clamp: float | None, fused: bool):
        super().__init__()
        self.in_channels = in_channels
        if in_channels == 0:
            self.fromrgb = Conv2d(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp,
                                  fused=fused)
        self.conv0 = Conv2d(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp, fused=fused)
        self.conv1 = Conv2d(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp,
                            fused=fused)
        self.skip = Conv2d(tmp_channels, out_channels, 1, bias=False, down=2, fused=fused)

    def forward(self, x: Tensor | None, img: Tensor | None) -> Tensor:
        if self.in_channels == 0:
            x = self.fromrgb(img)
        y = self.skip(x, gain=SQRT_HALF)
        x = self.conv1(self.conv0(x), gain=SQRT_HALF)
        return x + y


class DiscriminatorEpilogue(nn.Module):
    """4x4: minibatch std (group 4, 1 channel), conv 3x3, fc, out (one logit)."""

    def __init__(self, in_channels: int, resolution: int, mbstd_group_size: int = 4, mbstd_num_channels: int = 1,
                 conv_clamp: float | None = None, fused: bool = True):
        super().__init__()
        self.mbstd = MinibatchStd(mbstd_group_size, mbstd_num_channels, fused=fused) if mbstd_num_channels else None
        self.conv = Conv2d(in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu",
                           conv_clamp=conv_clamp, fused=fused)
        self.fc = Linear(in_channels * resolution ** 2, in_channels, activation="lrelu", fused=fused)
        self.out = Linear(in_channels, 1, fused=fused)

    def forward(self, x: Tensor) -> Tensor:
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        return self.out(self.fc(x.flatten(1)))


class StyleGAN2Discriminator(nn.Module):
    """Residual discriminator: blocks bR ... b8 (each halves the resolution), epilogue b4.
    Returns logits [N, 1]."""

    def __init__(self, image_size: int = 32, channels: int = 1, channel_base: int = 1024, channel_max: int = 64,
                 mbstd_group_size: int = 4, conv_clamp: float | None = None, fused: bool = True):
        super().__init__()
        self.fused = check_fused(fused)
        self.image_size, self.channels = image_size, channels
        self.resolutions = _resolutions(image_size)[::-1][:-1]    # R, R/2, ..., 8
        ch = lambda r: _channels(r, channel_base, channel_max)  # noqa: E731
        for res in self.resolutions:
            in_ch = 0 if res == image_size else ch(res)
            setattr(self, f"b{res}", DiscriminatorBlock(in_ch, ch(res), ch(res // 2), channels, conv_clamp, fused))
        self.b4 = DiscriminatorEpilogue(ch(4), 4, mbstd_group_size, 1, conv_clamp, fused)

    def forward(self, img: Tensor) -> Tensor:
        x = None
        for res in self.resolutions:
            x = getattr(self, f"b{res}")(x, img)
        return self.b4(x)


class StyleGAN2(nn.Module):
    """Generator + discriminator, and the training state the losses keep (what a checkpoint holds):
    `pl_mean`, the running mean of the path lengths, and `num_minibatches`, the count that schedules
    the lazy regularizers (gankern/train/tasks.py: StyleGAN2Task)."""

    def __init__(self, image_size: int = 32, channels: int = 1, z_dim: int = 64, w_dim: int = 64,
                 mapping_layers: int = 2, channel_base: int = 1024, channel_max: int = 64,
                 conv_clamp: float | None = None, fused: bool = True):
        super().__init__()
        self.fused = check_fused(fused)
        self.generator = StyleGAN2Generator(image_size, channels, z_dim, w_dim, mapping_layers, channel_base,
                                            channel_max, conv_clamp, fused)
        self.discriminator = StyleGAN2Discriminator(image_size, channels, channel_base, channel_max,
                                                    conv_clamp=conv_clamp, fused=fused)
        self.register_buffer("pl_mean", torch.zeros([]))
        self.register_buffer("num_minibatches", torch.zeros([], dtype=torch.int64))

    def forward(self, z: Tensor) -> Tensor:
        return self.generator(z)
