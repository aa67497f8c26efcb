"""The VAE ops under contract."""
import torch

import gankern
from contract import Case

VAE_OPS = ("reparameterize", "kl_normal", "reparameterize_kl", "vae_backward", "reparameterize_backward")


def _make(shape, gen):
    return {"mu": torch.randn(shape, generator=gen), "logvar": torch.randn(shape, generator=gen)}


CASES = [
    Case("reparameterize", lambda mu, logvar: gankern.reparameterize(mu, logvar, seed=7, offset=3), _make,
         (2, 4, 3, 5), VAE_OPS, layout_args=("mu", "logvar"), expand=("mu",)),
    Case("reparameterize_kl_batchmean",
         lambda mu, logvar: gankern.reparameterize_kl(mu, logvar, seed=7, reduction="batchmean"), _make,
         (2, 4, 3, 5), VAE_OPS, layout_args=("mu", "logvar"), expand=("logvar",)),
    Case("kl_normal_none", lambda mu, logvar: gankern.kl_normal(mu, logvar, reduction="none"), _make,
         (2, 4, 3, 5), VAE_OPS, layout_args=("mu", "logvar")),
    # seed=None: the seed is drawn from torch's generator (seeded identically before every run)
    Case("Reparameterize_module_train",
         lambda mu, logvar: gankern.nn.Reparameterize(kl_reduction="sum").train()(mu, logvar), _make,
         (2, 4, 3, 5), VAE_OPS, layout_args=("mu", "logvar")),
]
