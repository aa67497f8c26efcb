"""Reparameterize: the VAE sampling layer on gankern's fused kernels."""
from __future__ import annotations

from torch import Tensor, nn

from .._tensors import autocast_input
from ..ops import vae as ops


class Reparameterize(nn.Module):
    """z = mu + exp(clamp(logvar) / 2) * eps with eps made in-kernel (gankern.reparameterize).

    Training mode samples; eval mode returns mu unless sample_in_eval. With kl_reduction set
    ("sum", "mean", "batchmean" or "none"), forward returns (z, kl) from one fused pass
    (gankern.reparameterize_kl). No parameters or buffers: state_dict is empty. Under
    torch.autocast, mu and logvar are cast to the autocast dtype and the kernels run in it.
    """

    def __init__(self, logvar_clamp: tuple[float, float] | None = ops.DEFAULT_CLAMP, kl_reduction: str | None = None,
                 sample_in_eval: bool = False):
        super().__init__()
        if kl_reduction is not None and kl_reduction not in ops.REDUCTIONS:
            raise ValueError(f"kl_reduction must be None or one of {', '.join(ops.REDUCTIONS)}, got {kl_reduction!r}")
        self.logvar_clamp = None if logvar_clamp is None else tuple(float(v) for v in logvar_clamp)
        self.kl_reduction = kl_reduction
        self.sample_in_eval = sample_in_eval

    def forward(self, mu: Tensor, logvar: Tensor, seed: int | None = None, offset: int = 0):
        mu, logvar = autocast_input(mu), autocast_input(logvar)
        sample = self.training or self.sample_in_eval
        if self.kl_reduction is None:
            return ops.reparameterize(mu, logvar, seed, offset, self.logvar_clamp) if sample else mu
        if sample:
            return ops.reparameterize_kl(mu, logvar, seed, offset, self.kl_reduction, self.logvar_clamp)
        return mu, ops.kl_normal(mu, logvar, self.kl_reduction, self.logvar_clamp)

    def extra_repr(self) -> str:
        return (f"logvar_clamp={self.logvar_clamp}, kl_reduction={self.kl_reduction!r}, "
                f"sample_in_eval={self.sample_in_eval}")


__all__ = ["Reparameterize"]
