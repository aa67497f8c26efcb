"""Benchmark cases of the vae family: counter-based randn, fused reparameterization (+ KL).

Shapes: (4096, 1024) latents (the issue's CPU target), a Stable Diffusion VAE latent batch
(parameters [16, 8, 64, 64] split into mean/logvar [16, 4, 64, 64] channel chunks, as
DiagonalGaussian reads them), and (8192, 2048) fp32 latents (64 MiB per tensor: beyond the
last-level cache of any current CPU or GPU). randn also at 16M elements (the issue's target).
Eager baselines are the usual PyTorch idiom: torch.randn_like + the formula + the KL sum.
"""
from __future__ import annotations

import torch

import gankern

from .case import Case

CLAMP = (-30.0, 20.0)


def eager_reparameterize(mu, lv):
    return mu + torch.exp(0.5 * lv.clamp(*CLAMP)) * torch.randn_like(mu)


def eager_reparameterize_kl(mu, lv):
    lvc = lv.clamp(*CLAMP)
    z = mu + torch.exp(0.5 * lvc) * torch.randn_like(mu)
    kl = 0.5 * torch.sum(mu.pow(2) + torch.exp(lvc) - 1.0 - lvc) / mu.shape[0]
    return z, kl


def _pair(shape, device, chunked, dtype=torch.float32):
    g = torch.Generator(device="cpu").manual_seed(0)
    if chunked:  # [B, 2C, H, W] parameters -> mean, logvar channel chunks (views)
        b, c, *rest = shape
        params = torch.randn((b, 2 * c, *rest), generator=g).to(device, dtype)
        return tuple(params.chunk(2, dim=1))
    return torch.randn(shape, generator=g).to(device, dtype), (torch.randn(shape, generator=g) * 2).to(device, dtype)


def cases(device) -> list[Case]:
    device = torch.device(device)
    out: list[Case] = []
    f32 = torch.float32

    for shape, quick in (((4096, 4096), False), ((4096, 1024), True)):
        n = shape[0] * shape[1]
        out.append(Case(
            op="vae", variant="randn", shape=shape, dtype=f32,
            setup=lambda shape=shape: shape,
            gankern=lambda s: gankern.randn(s, 1234, 0, device=device),
            eager=lambda s: torch.randn(s, device=device),
            bytes=4 * n, quick=quick and device.type == "cpu", kernel="randn",
            notes="16M elements: the issue's >= 3x torch.randn target" if n == 1 << 24 else ""))

    latent_shapes = (((4096, 1024), False, True), ((16, 4, 64, 64), True, False), ((8192, 2048), False, False))
    for shape, chunked, quick in latent_shapes:
        n = 1
        for s in shape:
            n *= s
        tag = " (SD latent chunks)" if chunked else ""
        out.append(Case(
            op="vae", variant="reparameterize" + tag, shape=shape, dtype=f32,
            setup=lambda shape=shape, chunked=chunked: _pair(shape, device, chunked),
            gankern=lambda a: gankern.reparameterize(a[0], a[1], 1234, 0),
            eager=lambda a: eager_reparameterize(*a),
            bytes=3 * 4 * n, kernel="reparameterize_kl"))
        out.append(Case(
            op="vae", variant="reparameterize_kl" + tag, shape=shape, dtype=f32,
            setup=lambda shape=shape, chunked=chunked: _pair(shape, device, chunked),
            gankern=lambda a: gankern.reparameterize_kl(a[0], a[1], 1234, 0, "batchmean"),
            eager=lambda a: eager_reparameterize_kl(*a),
            bytes=3 * 4 * n, quick=quick and device.type == "cpu", kernel="reparameterize_kl",
            notes="the issue's >= 4x eager, >= 10x torch.compile target" if shape == (4096, 1024) else ""))
    # bf16 (half the bytes; the CPU target is >= 1.6x gankern's own fp32 time)
    shape, bf16 = (4096, 1024), torch.bfloat16
    out.append(Case(
        op="vae", variant="reparameterize_kl", shape=shape, dtype=bf16,
        setup=lambda: _pair(shape, device, False, bf16),
        gankern=lambda a: gankern.reparameterize_kl(a[0], a[1], 1234, 0, "batchmean"),
        eager=lambda a: eager_reparameterize_kl(*a),
        bytes=3 * 2 * shape[0] * shape[1], kernel="reparameterize_kl"))
    return out
