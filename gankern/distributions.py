"""DiagonalGaussian: latent diffusion's DiagonalGaussianDistribution on gankern's fused ops.

    dist = gankern.DiagonalGaussian(encoder_output)   # mean, logvar = chunk(parameters, 2, dim)
    z = dist.sample()                                  # one pass, noise made in-kernel
    loss_kl = dist.kl().mean()                         # or gankern.kl_normal(...) directly

Same formulas and clamp as ldm.modules.distributions.distributions.DiagonalGaussianDistribution:
logvar is clamped to (-30, 20), std = exp(logvar / 2), var = exp(logvar). Differences: sample()
draws gankern's counter-based normals (gankern.randn's contract, reproducible on every backend;
seed=None draws a seed from torch's default generator), and mean/logvar stay views of
`parameters` (the kernels read the channel chunks in place).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .ops import vae as ops
from .ops._validate import dim as check_dim
from .ops._validate import tensor as check_tensor

LOGVAR_CLAMP = (-30.0, 20.0)


class DiagonalGaussian:
    """N(mean, diag(exp(logvar))) with mean and logvar the two halves of `parameters` along `dim`."""

    def __init__(self, parameters: Tensor, dim: int = 1, deterministic: bool = False):
        check_tensor(parameters, "parameters", ndim_min=1)
        self.dim = check_dim(dim, parameters.ndim)
        if parameters.shape[self.dim] % 2:
            raise ValueError(f"parameters.shape[{self.dim}] must be even (mean and logvar halves), "
                             f"got {parameters.shape[self.dim]}")
        self.parameters = parameters
        self.mean, self.raw_logvar = torch.chunk(parameters, 2, dim=self.dim)
        self.deterministic = deterministic

    # Derived tensors are computed on demand: sample() and kl() do not need them.
    @property
    def logvar(self) -> Tensor:
        return self.raw_logvar.clamp(*LOGVAR_CLAMP)

    @property
    def std(self) -> Tensor:
        return torch.zeros_like(self.mean) if self.deterministic else torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> Tensor:
        return torch.zeros_like(self.mean) if self.deterministic else torch.exp(self.logvar)

    def sample(self, seed: int | None = None, offset: int = 0) -> Tensor:
        """mean + std * eps in one fused pass; eps = gankern.randn(mean.shape, seed, offset)."""
        if self.deterministic:
            return self.mean
        return ops.reparameterize(self.mean, self.raw_logvar, seed, offset, LOGVAR_CLAMP)

    def sample_kl(self, seed: int | None = None, offset: int = 0,
                  reduction: str = "batchmean") -> tuple[Tensor, Tensor]:
        """(sample, KL to N(0, I) reduced by `reduction`) reading the parameters once."""
        if self.deterministic:
            return self.mean, self.mean.new_zeros(())
        return ops.reparameterize_kl(self.mean, self.raw_logvar, seed, offset, reduction, LOGVAR_CLAMP)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self, other: "DiagonalGaussian | None" = None) -> Tensor:
        """KL(self || other) summed over every dimension but 0 (latent diffusion sums dims 1, 2, 3);
        other=None: KL to N(0, I), through the fused kl_normal kernel."""
        if self.deterministic:
            return self.mean.new_zeros((1,))
        if other is None:
            kl = ops.kl_normal(self.mean, self.raw_logvar, "none", LOGVAR_CLAMP)
        else:
            lv, olv = self.logvar, other.logvar
            kl = 0.5 * ((self.mean - other.mean).pow(2) / torch.exp(olv) + torch.exp(lv - olv) - 1.0 - lv + olv)
        return kl.flatten(1).sum(1) if kl.ndim > 1 else kl

    def nll(self, sample: Tensor, dims: Sequence[int] = (1, 2, 3)) -> Tensor:
        """Negative log-likelihood of `sample`, summed over `dims`."""
        if self.deterministic:
            return self.mean.new_zeros((1,))
        lv = self.logvar
        return 0.5 * torch.sum(math.log(2.0 * math.pi) + lv + (sample - self.mean).pow(2) / torch.exp(lv),
                               dim=list(dims))
