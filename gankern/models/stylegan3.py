"""StyleGAN3-T (Karras et al. 2021, "Alias-Free Generative Adversarial Networks", config T), compact:
StyleGAN2's mapping network, a Fourier-feature input, a stack of alias-free synthesis layers whose
filters are designed from the paper's schedule of cutoffs and sampling rates, a final ToRGB; the
discriminator is StyleGAN2's (as in the paper).

Written from the paper's published description (its Sections 3-4 and Appendix F's filter
schedule), not from NVIDIA's code. Module names follow StyleGAN3's layout (`synthesis.input.*`,
`synthesis.L0_36_32.*`, ..., the ToRGB last) so the structure is familiar; a state_dict moves
between `fused=True` and `fused=False`.

The signal view: every feature map is a sampled, band-limited continuous signal on one canvas. Layer
i has a sampling rate s_i, a cutoff f_c,i (the band it may contain) and a stopband f_t,i; its
image is s_i + 2 * margin pixels (the margin absorbs the filters' support), except the last layers,
which are cropped to the output size. One layer: modulated conv (3x3), then the nonlinearity made
alias-free: upsample to twice the larger sampling rate with a low-pass at the input's cutoff, leaky
ReLU (the new frequencies it creates fit under the temporary rate), low-pass at the output's cutoff
and downsample to the output rate (`gankern.filtered_lrelu`, one fused kernel).

- fused=True: the mapping network through EqualizedLinear + bias_act, every synthesis layer through
  gankern.nn.SynthesisLayer3 (`modulated_conv2d` with StyleGAN3's input gain, then
  `filtered_lrelu`), the discriminator as StyleGAN2's fused one.
- fused=False: the same parameters in plain torch: the modulation as scale-activations / shared
  conv / scale-by-demodulation-coefficients, the filtered leaky ReLU as zero insertion + pad +
  two depthwise 1-D convolutions (the filters are separable), torch's leaky ReLU and clamp, and
  two more depthwise convolutions + strided slicing for the down filter.

Simplified against the paper (the compact model for 32x32 digits): 6 layers + ToRGB by default
instead of 14 + ToRGB, fewer channels, no user-given input transform (the `transform` StyleGAN3
keeps for translating/rotating at inference), the Fourier features' amplitude taper near the
input's Nyquist frequency is left out (it is 1 for every feature whose frequency lies inside the
band, which is where they are drawn), no per-layer fp16 switch, no radial (config R) filters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import modulated as nn_modulated
from ._layers import check_fused
from .stylegan2 import DEMOD_EPS, Linear, MappingNetwork, StyleGAN2Discriminator, StyleGAN2Generator, torch_upsample_pad

LRELU_SLOPE = 0.2
FILTER_SIZE = 6                # a resampling filter has 6 taps per unit of its up/down factor (the paper's)
LRELU_UPSAMPLING = 2           # the nonlinearity runs at twice the larger of its two sampling rates


# ---- filter design -----------------------------------------------------------------------------

def kaiser_beta(attenuation_db: float) -> float:
    """Kaiser's empirical window parameter for a stopband attenuation in dB (Kaiser 1974; the
    formula in Oppenheim & Schafer, "Discrete-Time Signal Processing", eq. 7.62)."""
    a = attenuation_db
    if a > 50:
        return 0.1102 * (a - 8.7)
    if a >= 21:
        return 0.5842 * (a - 21) ** 0.4 + 0.07886 * (a - 21)
    return 0.0


def kaiser_attenuation(numtaps: int, width: float, fs: float) -> float:
    """The stopband attenuation (dB) a Kaiser-window filter of `numtaps` taps reaches with a
    transition band `width` wide (Hz at sampling rate fs): Kaiser's estimate
    numtaps - 1 = (A - 7.95) / (2.285 * dw), dw = 2 pi width / fs, solved for A."""
    return 2.285 * (numtaps - 1) * (2 * math.pi * width / fs) + 7.95


def lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float) -> Tensor | None:
    """A linear-phase low-pass FIR filter by the window method: the ideal low-pass impulse response
    (2 fc / fs) sinc(2 fc / fs (n - (N-1)/2)) times a Kaiser window whose beta gives the attenuation
    `numtaps` taps can reach over the transition band [cutoff - width/2, cutoff + width/2];
    normalized to a DC gain of exactly 1. 1-D float64 [numtaps]; None for numtaps == 1 (no filter)."""
    if numtaps == 1:
        return None
    if not (0 < cutoff < fs / 2 + 1e-9) or width <= 0 or numtaps < 1:
        raise ValueError(f"lowpass_filter: need 0 < cutoff <= fs/2 and width > 0, got cutoff={cutoff}, "
                         f"width={width}, fs={fs}")
    beta = kaiser_beta(kaiser_attenuation(numtaps, width, fs))
    n = torch.arange(numtaps, dtype=torch.float64) - (numtaps - 1) / 2
    h = torch.sinc(2 * cutoff / fs * n) * torch.kaiser_window(numtaps, periodic=False, beta=beta, dtype=torch.float64)
    return h / h.sum()


# ---- the layer schedule (the paper's Appendix F) ------------------------------------------------

@dataclass(frozen=True)
class Band:
    """One feature map's signal: cutoff f_c, stopband f_t, sampling rate s, half-width
    f_h = max(f_t, s/2) - f_c of the filter's transition band, size in pixels, channels."""
    cutoff: float
    stopband: float
    sampling_rate: int
    half_width: float
    size: int
    channels: int


def band_schedule(image_size: int, img_channels: int, num_layers: int, num_critical: int, channel_base: int,
                  channel_max: int, margin: int, first_cutoff: float = 2.0, first_stopband: float = 2 ** 2.1,
                  last_stopband_rel: float = 2 ** 0.3) -> list[Band]:
    """The bands of the input (entry 0) and of each layer's output (entries 1..num_layers; the last
    is the ToRGB's). The cutoff grows geometrically from first_cutoff to the output's Nyquist
    frequency image_size / 2, reached at layer num_layers - num_critical and kept after it; the
    stopband grows geometrically (more slowly) from first_stopband to last_stopband_rel times that
    final cutoff. The sampling rate is the smallest power of two above twice the stopband, at most
    image_size, so the last num_critical layers are critically sampled (f_c = s/2). Channels:
    min(channel_base / (2 f_c), channel_max): the higher the band, the fewer the channels."""
    if num_critical < 1 or num_layers <= num_critical:
        raise ValueError(f"need 1 <= num_critical < num_layers, got num_critical={num_critical}, "
                         f"num_layers={num_layers}")
    last_cutoff = image_size / 2
    last_stopband = last_cutoff * last_stopband_rel
    bands = []
    for i in range(num_layers + 1):
        e = min(i / (num_layers - num_critical), 1.0)
        cutoff = first_cutoff * (last_cutoff / first_cutoff) ** e
        stopband = first_stopband * (last_stopband / first_stopband) ** e
        rate = 2 ** math.ceil(math.log2(min(2 * stopband, image_size)))
        half_width = max(stopband, rate / 2) - cutoff
        # the ToRGB and the layer before it are at the output size; the rest carry the margin
        size = image_size if i >= num_layers - 1 else rate + 2 * margin
        channels = img_channels if i == num_layers else int(round(min(channel_base / 2 / cutoff, channel_max)))
        bands.append(Band(cutoff, stopband, rate, half_width, size, channels))
    return bands


def _resampling(b_in: Band, b_out: Band, conv_kernel: int, is_torgb: bool, filter_size: int = FILTER_SIZE):
    """(up, down, up_filter, down_filter, padding [x0, x1, y0, y1]) of the layer from b_in to b_out.

    The upsampling pass gets padding p0 before and p1 after so that the output is exactly b_out.size
    samples, centred on the input (the modulated conv's padding k-1 keeps the input centred). With
    n = the conv's output size, K_u, K_d the tap counts: the down pass needs T = (size_out - 1) *
    down + K_d intermediate samples, T = n * up + p0 + p1 - K_u + 1 gives p0 + p1; centring (output
    sample o at canvas position (o + 1/2 - size_out/2) / s_out, zeros inserted after each input
    sample) gives p0 = (p0 + p1 + up - 1) / 2."""
    tmp_rate = max(b_in.sampling_rate, b_out.sampling_rate) * (1 if is_torgb else LRELU_UPSAMPLING)
    up, down = tmp_rate // b_in.sampling_rate, tmp_rate // b_out.sampling_rate
    up_taps = filter_size * up if up > 1 else 1
    down_taps = filter_size * down if down > 1 else 1
    up_filter = lowpass_filter(up_taps, b_in.cutoff, 2 * b_in.half_width, tmp_rate)
    down_filter = lowpass_filter(down_taps, b_out.cutoff, 2 * b_out.half_width, tmp_rate)
    n = b_in.size + conv_kernel - 1
    pad_total = (b_out.size - 1) * down + down_taps + up_taps - 1 - n * up
    if (pad_total + up - 1) % 2:   # never with even sizes and 6 taps per factor: a guard for other schedules
        raise ValueError(f"a layer from {b_in.size} px to {b_out.size} px cannot be centred exactly "
                         f"(up {up}, down {down}, {up_taps}/{down_taps} taps); use even sizes")
    p0 = (pad_total + up - 1) // 2
    return up, down, up_filter, down_filter, [p0, pad_total - p0, p0, pad_total - p0]


# ---- the plain-torch formulation (fused=False) ----------------------------------------------------

def torch_upfirdn2d_separable(x: Tensor, f: Tensor | None, up: int = 1, down: int = 1, pad=(0, 0, 0, 0),
                              gain: float = 1.0) -> Tensor:
    """upfirdn2d with a separable filter (1-D taps f, or None for none), the eager way: insert
    up - 1 zeros after every sample, pad (negative crops), a depthwise [1, k] then [k, 1] true
    convolution (gain applied once), keep every down-th sample."""
    x = torch_upsample_pad(x, up, pad)
    C = x.shape[1]
    if f is not None:
        k = f.shape[0]
        taps = f.flip(0).to(x.dtype)
        x = F.conv2d(x, (taps * gain).reshape(1, 1, 1, k).repeat(C, 1, 1, 1), groups=C)
        x = F.conv2d(x, taps.reshape(1, 1, k, 1).repeat(C, 1, 1, 1), groups=C)
    elif gain != 1:
        x = x * gain
    return x[:, :, ::down, ::down] if down > 1 else x


def torch_filtered_lrelu(x: Tensor, fu: Tensor | None, fd: Tensor | None, b: Tensor, up: int, down: int, padding,
                         gain: float, slope: float, clamp: float | None) -> Tensor:
    """gankern.filtered_lrelu in plain torch: bias, upsample (gain up^2), leaky ReLU * gain, clamp,
    filter and downsample."""
    x = x + b.to(x.dtype)[None, :, None, None]
    x = torch_upfirdn2d_separable(x, fu, up=up, pad=padding, gain=up * up)
    x = F.leaky_relu(x, slope) * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return torch_upfirdn2d_separable(x, fd, down=down)


# ---- layers with a fused switch (same parameters either way) -------------------------------------

class SynthesisInput(nn.Module):
    """The Fourier-feature input: `channels` sinusoids sin(2 pi (f . q + phase)) sampled on a
    size x size grid at the band's sampling rate, then a learned channel mix (weight [C, C] /
    sqrt(C)). Frequencies are drawn uniformly in the disc of radius `bandwidth` (the first layer's
    cutoff), phases uniformly; both are fixed buffers. Canvas coordinates q = R (p - t) are the
    pixel centre p rotated by R and shifted by t, which the `affine` of w gives: its output
    (c, s, tx, ty) divided by |(c, s)|, R = [[c, -s], [s, c]]; it starts at the identity
    (weight 0, bias (1, 0, 0, 0))."""

    def __init__(self, w_dim: int, channels: int, size: int, sampling_rate: int, bandwidth: float,
                 fused: bool = True):
        super().__init__()
        self.w_dim, self.channels, self.size = w_dim, channels, size
        self.sampling_rate, self.bandwidth = sampling_rate, bandwidth
        radius = bandwidth * torch.rand(channels).sqrt()          # uniform over the disc's area
        angle = 2 * math.pi * torch.rand(channels)
        self.register_buffer("freqs", torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1))
        self.register_buffer("phases", torch.rand(channels))
        self.affine = Linear(w_dim, 4, fused=fused)
        with torch.no_grad():
            self.affine.weight.zero_()
            self.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        self.weight = nn.Parameter(torch.randn([channels, channels]))

    def forward(self, w: Tensor) -> Tensor:
        t = self.affine(w)                                              # [N, 4]
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        c, s, shift = t[:, 0], t[:, 1], t[:, 2:]
        rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)   # [N, 2, 2]
        # f . R (p - t) = (R^T f) . p - (R^T f) . t
        freqs = self.freqs.to(w.dtype) @ rot                            # [N, C, 2]: rows f^T R
        phases = self.phases.to(w.dtype) - (freqs @ shift[:, :, None]).squeeze(2)   # [N, C]
        coords = (torch.arange(self.size, device=w.device, dtype=w.dtype) + 0.5 - self.size / 2) / self.sampling_rate
        p = torch.stack(torch.meshgrid(coords, coords, indexing="xy"), dim=-1)       # [H, W, (x, y)]
        x = torch.sin(2 * math.pi * (torch.einsum("hwk,nck->nhwc", p, freqs) + phases[:, None, None, :]))
        x = x @ (self.weight / math.sqrt(self.channels)).t().to(x.dtype)
        return x.permute(0, 3, 1, 2).contiguous()

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim}, channels={self.channels}, size={self.size}, "
                f"sampling_rate={self.sampling_rate}, bandwidth={self.bandwidth:g}")


class SynthesisLayer(nn_modulated.SynthesisLayer3):
    """gankern.nn.SynthesisLayer3 between two bands (its up/down factors, Kaiser filters and
    padding from `_resampling`; keys affine.{weight,bias}, weight, bias, buffers magnitude_ema,
    up_filter, down_filter where the layer resamples). fused=False runs the same math in plain
    torch: StyleGAN2's non-fused modulation with StyleGAN3's input gain 1/sqrt(magnitude_ema),
    then `torch_filtered_lrelu`."""

    def __init__(self, w_dim: int, b_in: Band, b_out: Band, is_torgb: bool, conv_clamp: float | None = 256,
                 magnitude_ema_beta: float = 0.999, filter_size: int = FILTER_SIZE, fused: bool = True):
        conv_kernel = 1 if is_torgb else 3
        up, down, fu, fd, padding = _resampling(b_in, b_out, conv_kernel, is_torgb, filter_size)
        super().__init__(b_in.channels, b_out.channels, w_dim, up_filter=fu, down_filter=fd, up=up, down=down,
                         padding=padding, conv_kernel=conv_kernel, conv_clamp=conv_clamp, is_torgb=is_torgb,
                         magnitude_ema_beta=magnitude_ema_beta)
        self.b_in, self.b_out, self.fused = b_in, b_out, fused

    def forward(self, x: Tensor, w: Tensor, update_emas: bool = False, fused_modconv: bool | None = None) -> Tensor:
        if self.fused:
            return super().forward(x, w, update_emas=update_emas, fused_modconv=fused_modconv)
        if update_emas:
            with torch.no_grad():
                self.magnitude_ema.copy_(x.detach().float().square().mean().lerp(self.magnitude_ema,
                                                                                 self.magnitude_ema_beta))
        styles = self.affine(w)
        if self.is_torgb:
            styles = styles * (1 / math.sqrt(self.in_channels * self.conv_kernel ** 2))
        y = F.conv2d(x * styles[:, :, None, None], self.weight.to(x.dtype), padding=self.conv_kernel - 1)
        coef = self.magnitude_ema.rsqrt().to(x.dtype).expand(x.shape[0], self.out_channels)
        if not self.is_torgb:
            coef = coef * ((self.weight[None] * styles[:, None, :, None, None]).square().sum(dim=[2, 3, 4])
                           + DEMOD_EPS).rsqrt()
        y = y * coef[:, :, None, None]
        gain, slope = (1.0, 1.0) if self.is_torgb else (math.sqrt(2), LRELU_SLOPE)
        return torch_filtered_lrelu(y, self.up_filter, self.down_filter, self.bias, self.up_factor, self.down_factor,
                                    self.padding, gain, slope, self.conv_clamp)


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> images [N, img_channels, R, R]: `input` (ws[:, 0]), then the layers
    L0 ... L{num_layers-1} and the ToRGB (ws[:, 1:]), named L{i}_{size}_{channels} as StyleGAN3;
    the ToRGB's output times output_scale."""

    def __init__(self, w_dim: int, image_size: int, img_channels: int, num_layers: int = 6, num_critical: int = 2,
                 channel_base: int = 1024, channel_max: int = 32, margin: int = 10, output_scale: float = 0.25,
                 conv_clamp: float | None = 256, filter_size: int = FILTER_SIZE, fused: bool = True):
        super().__init__()
        if not isinstance(image_size, int) or image_size < 8 or image_size & (image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 8, got {image_size!r}")
        self.w_dim, self.image_size, self.img_channels = w_dim, image_size, img_channels
        self.output_scale = output_scale
        self.bands = band_schedule(image_size, img_channels, num_layers, num_critical, channel_base, channel_max,
                                   margin)
        b0 = self.bands[0]
        self.input = SynthesisInput(w_dim, b0.channels, b0.size, b0.sampling_rate, b0.cutoff, fused=fused)
        self.layer_names = []
        for i in range(num_layers + 1):
            b_in, b_out = self.bands[max(i - 1, 0)], self.bands[i]
            name = f"L{i}_{b_out.size}_{b_out.channels}"
            setattr(self, name, SynthesisLayer(w_dim, b_in, b_out, is_torgb=i == num_layers, conv_clamp=conv_clamp,
                                               filter_size=filter_size, fused=fused))
            self.layer_names.append(name)
        self.num_ws = num_layers + 2

    def forward(self, ws: Tensor, noise_mode: str = "const", update_emas: bool = False) -> Tensor:
        """noise_mode: accepted for StyleGAN2's calling convention; StyleGAN3 has no noise inputs,
        so every mode gives the same image."""
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        x = self.input(ws[:, 0])
        for name, w in zip(self.layer_names, ws[:, 1:].unbind(1)):
            x = getattr(self, name)(x, w, update_emas=update_emas)
        return x * self.output_scale


class StyleGAN3Generator(StyleGAN2Generator):
    """StyleGAN3-T's generator: StyleGAN2's `mapping` (z -> ws, w_avg, truncation, style mixing:
    the methods are inherited) and the alias-free `synthesis`.

    Compact defaults for 32x32 digits: z = w = 64, 2 mapping layers, 6 layers + ToRGB, 32 channels,
    margin 10: bands (cutoff / sampling rate / size) 2/16/36, 3.4/16/36, 5.7/32/52, 9.5/32/52,
    16/32/52, 16/32/32 and the ToRGB at 16/32/32."""

    def __init__(self, image_size: int = 32, channels: int = 1, z_dim: int = 64, w_dim: int = 64,
                 mapping_layers: int = 2, num_layers: int = 6, num_critical: int = 2, channel_base: int = 1024,
                 channel_max: int = 32, margin: int = 10, filter_size: int = FILTER_SIZE, fused: bool = True):
        nn.Module.__init__(self)   # StyleGAN2's __init__ builds its own synthesis network
        self.fused = check_fused(fused)
        self.image_size, self.channels, self.z_dim, self.w_dim = image_size, channels, z_dim, w_dim
        self.synthesis = SynthesisNetwork(w_dim, image_size, channels, num_layers, num_critical, channel_base,
                                          channel_max, margin, filter_size=filter_size, fused=fused)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, mapping_layers, fused=fused)

    def train_forward(self, z: Tensor, style_mixing_prob: float = 0.0) -> tuple[Tensor, Tensor]:
        """(images, ws) of a training step; the layers' magnitude EMAs are updated in training mode."""
        ws = self.mixed_ws(z, style_mixing_prob)
        return self.synthesis(ws, update_emas=self.training), ws


class StyleGAN3(nn.Module):
    """Generator + StyleGAN2's discriminator, and the training state StyleGAN2Task keeps in the
    model (`pl_mean`, unused while pl_weight is 0, and `num_minibatches`, the lazy-R1 schedule)."""

    def __init__(self, image_size: int = 32, channels: int = 1, z_dim: int = 64, w_dim: int = 64,
                 mapping_layers: int = 2, num_layers: int = 6, num_critical: int = 2, channel_base: int = 1024,
                 channel_max: int = 32, margin: int = 10, d_channel_base: int = 1024, d_channel_max: int = 64,
                 filter_size: int = FILTER_SIZE, fused: bool = True):
        super().__init__()
        self.fused = check_fused(fused)
        self.generator = StyleGAN3Generator(image_size, channels, z_dim, w_dim, mapping_layers, num_layers,
                                            num_critical, channel_base, channel_max, margin, filter_size, fused)
        self.discriminator = StyleGAN2Discriminator(image_size, channels, d_channel_base, d_channel_max, fused=fused)
        self.register_buffer("pl_mean", torch.zeros([]))
        self.register_buffer("num_minibatches", torch.zeros([], dtype=torch.int64))

    def forward(self, z: Tensor) -> Tensor:
        return self.generator(z)
