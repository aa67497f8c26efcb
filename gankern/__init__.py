"""gankern: fused kernels for the hot paths of GANs, VAEs and diffusion models.

Every op has a pure-PyTorch reference (gankern.reference) that is its specification, and Triton,
C++ (CPU) and CUDA implementations chosen per call (see gankern.backends()).
"""
__version__ = "0.1.0"

from .backends import backends, use_backend  # noqa: E402
from .ops.bias_act import bias_act  # noqa: E402
from .ops.filtered_lrelu import filtered_lrelu  # noqa: E402
from .ops.modulated_conv import modulated_conv2d  # noqa: E402
from .ops.upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d  # noqa: E402
from .ops.conv2d_resample import conv2d_resample  # noqa: E402
from .ops.minibatch_std import minibatch_std  # noqa: E402
from .regularizers import path_length_penalty, r1_penalty  # noqa: E402
from .ops.random import randn, randn_like, random_seed  # noqa: E402
from .ops.vae import kl_normal, reparameterize, reparameterize_kl  # noqa: E402
from .distributions import DiagonalGaussian  # noqa: E402
from .ops.norm import batch_norm_act, group_norm_act  # noqa: E402
from .ops.geglu import geglu  # noqa: E402
from .ops.layer_norm import add_layer_norm, layer_norm  # noqa: E402
from .fold import fold_batchnorm  # noqa: E402
from .optimize import optimize  # noqa: E402
from . import nn  # noqa: E402
from .ops.diffusion import add_noise, diffusion_loss  # noqa: E402
from . import schedulers  # noqa: E402
from .sampling import sample  # noqa: E402
from . import models  # noqa: E402

__all__ = [
    "__version__", "backends", "use_backend", "nn",
    "bias_act", "upfirdn2d", "setup_filter", "upsample2d", "downsample2d", "filter2d",  # StyleGAN
    "conv2d_resample", "filtered_lrelu", "minibatch_std", "r1_penalty", "path_length_penalty",
    "modulated_conv2d",
    "group_norm_act", "batch_norm_act", "fold_batchnorm", "optimize",  # normalization, patching
    "geglu", "layer_norm", "add_layer_norm",                        # transformer blocks
    "randn", "randn_like", "random_seed",                           # counter-based RNG
    "reparameterize", "kl_normal", "reparameterize_kl", "DiagonalGaussian",  # VAE
    "add_noise", "diffusion_loss", "schedulers", "sample",          # diffusion
    "models",
]
