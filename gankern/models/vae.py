"""Convolutional VAE and deterministic autoencoder: ResNet blocks with GroupNorm + SiLU.

Encoder: conv_in, then per level a ResBlock and a stride-2 conv (32x32 -> 4x4 for three levels),
GroupNorm + SiLU and a linear map of the flattened features to the bottleneck. Decoder: the
mirror with nearest-neighbour upsampling + conv. The VAE's bottleneck is [mean, logvar] of a
`latent_dim` diagonal Gaussian (gankern.DiagonalGaussian when fused; its sample and KL come from
one gankern.reparameterize_kl pass in the loss); the autoencoder's is the code itself.

Loss: sum over pixels of the squared error, averaged over the batch, + beta * KL(q(z|x) || N(0, I))
(averaged over the batch). A narrow bottleneck (latent_dim 16 by default) is what makes
`anomaly_score` (the per-sample reconstruction error) separate unseen classes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributions import DiagonalGaussian
from ..ops.random import randn as gk_randn
from ._layers import check_fused, norm_act

LOGVAR_CLAMP = (-30.0, 20.0)


class ResBlock(nn.Module):
    """x + conv(act(norm(conv(act(norm(x)))))), a 1x1 conv on the skip when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, fused: bool, num_groups: int = 8):
        super().__init__()
        self.norm1 = norm_act("group", in_channels, "silu", fused, num_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = norm_act("group", out_channels, "silu", fused, num_groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.conv2(self.norm2(self.conv1(self.norm1(x))))


class Encoder(nn.Module):
    def __init__(self, channels: int, widths: tuple[int, ...], image_size: int, out_features: int, fused: bool,
                 num_groups: int):
        super().__init__()
        self.conv_in = nn.Conv2d(channels, widths[0], 3, padding=1)
        blocks, prev = [], widths[0]
        for w in widths:
            blocks += [ResBlock(prev, w, fused, num_groups), nn.Conv2d(w, w, 3, stride=2, padding=1)]
            prev = w
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = norm_act("group", prev, "silu", fused, num_groups)
        self.bottom = image_size >> len(widths)
        self.fc = nn.Linear(prev * self.bottom ** 2, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.norm_out(self.blocks(self.conv_in(x))).flatten(1))


class Decoder(nn.Module):
    def __init__(self, channels: int, widths: tuple[int, ...], image_size: int, latent_dim: int, fused: bool,
                 num_groups: int):
        super().__init__()
        rev = tuple(reversed(widths))
        self.bottom, self.top_width = image_size >> len(widths), rev[0]
        self.fc = nn.Linear(latent_dim, rev[0] * self.bottom ** 2)
        blocks, prev = [], rev[0]
        for w in rev:
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(prev, prev, 3, padding=1),
                       ResBlock(prev, w, fused, num_groups)]
            prev = w
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = norm_act("group", prev, "silu", fused, num_groups)
        self.conv_out = nn.Conv2d(prev, channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.fc(z).view(z.shape[0], self.top_width, self.bottom, self.bottom)
        return self.conv_out(self.norm_out(self.blocks(h)))


class ConvVAE(nn.Module):
    """Convolutional VAE; `variational=False` is the deterministic autoencoder (see Autoencoder)."""

    variational = True

    def __init__(self, image_size: int = 32, channels: int = 1, latent_dim: int = 16,
                 widths: tuple[int, ...] = (16, 32, 64), num_groups: int = 8, fused: bool = True):
        super().__init__()
        if image_size % (1 << len(widths)):
            raise ValueError(f"image_size must be a multiple of {1 << len(widths)} for {len(widths)} levels, "
                             f"got {image_size}")
        self.image_size, self.channels, self.latent_dim = image_size, channels, latent_dim
        self.fused = check_fused(fused)
        width = 2 * latent_dim if self.variational else latent_dim
        self.encoder = Encoder(channels, tuple(widths), image_size, width, fused, num_groups)
        self.decoder = Decoder(channels, tuple(widths), image_size, latent_dim, fused, num_groups)
        # Mean and std of the training codes (the autoencoder samples from this Gaussian; the VAE
        # from its prior N(0, I)). Buffers, so they travel with the state_dict.
        self.register_buffer("code_mean", torch.zeros(latent_dim))
        self.register_buffer("code_std", torch.ones(latent_dim))

    # ---- the API ---------------------------------------------------------------------------
    def encode(self, x: Tensor):
        """The posterior q(z|x): a DiagonalGaussian over [B, latent_dim] (VAE); the codes (autoencoder)."""
        h = self.encoder(x)
        return DiagonalGaussian(h) if self.variational else h

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def code(self, x: Tensor) -> Tensor:
        """The deterministic code of x: the posterior mean (VAE) or the bottleneck (autoencoder)."""
        q = self.encode(x)
        return q.mean if self.variational else q

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode(self.code(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.reconstruct(x)

    def interpolate(self, z0: Tensor, z1: Tensor, n: int) -> Tensor:
        """Decodes n points evenly spaced on the segment z0 -> z1 (ends included): [n, C, H, W]."""
        if not isinstance(n, int) or n < 2:
            raise ValueError(f"n must be an int >= 2, got {n!r}")
        z0, z1 = z0.reshape(1, -1), z1.reshape(1, -1)
        w = torch.linspace(0, 1, n, device=z0.device, dtype=z0.dtype)[:, None]
        return self.decode(z0 * (1 - w) + z1 * w)

    @torch.no_grad()
    def anomaly_score(self, x: Tensor) -> Tensor:
        """Per-sample reconstruction error (mean squared error over pixels): high = unlike the training data."""
        return (self.reconstruct(x) - x).pow(2).flatten(1).mean(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.latent_dim, generator=generator).to(self.code_std.device)
        if not self.variational:
            z = z * self.code_std + self.code_mean
        return self.decode(z)

    # ---- training --------------------------------------------------------------------------
    def posterior_sample_kl(self, params: Tensor, seed: int | None = None) -> tuple[Tensor, Tensor]:
        """(z, batch-mean KL to N(0, I)) from the encoder output [mean, logvar]. Fused: one
        gankern.reparameterize_kl pass. Unfused: torch ops; with a seed, the same noise as the
        fused path (gankern.randn), so the two can be compared."""
        if self.fused:
            return DiagonalGaussian(params).sample_kl(seed, reduction="batchmean")
        mean, logvar = params.chunk(2, dim=1)
        logvar = logvar.clamp(*LOGVAR_CLAMP)
        eps = torch.randn_like(mean) if seed is None else gk_randn(mean.shape, seed, 0, dtype=mean.dtype,
                                                                     device=mean.device)
        z = mean + torch.exp(0.5 * logvar) * eps
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum() / mean.shape[0]
        return z, kl

    def loss(self, x: Tensor, beta: float = 1.0, seed: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """(total loss, {"recon", "kl"}) for a batch; the reconstruction is in the dict as "x_hat"."""
        h = self.encoder(x)
        if self.variational:
            z, kl = self.posterior_sample_kl(h, seed)
        else:
            z, kl = h, h.new_zeros(())
        x_hat = self.decoder(z)
        recon = F.mse_loss(x_hat, x, reduction="sum") / x.shape[0]
        return recon + beta * kl, {"recon": recon, "kl": kl, "x_hat": x_hat}


class Autoencoder(ConvVAE):
    """The same network with a plain (deterministic) bottleneck, for compression and anomaly detection."""

    variational = False


__all__ = ["ConvVAE", "Autoencoder", "ResBlock", "Encoder", "Decoder"]
