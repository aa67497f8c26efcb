"""gankern: fused kernels for the hot paths of GANs, VAEs and diffusion models.

Every op has a pure-PyTorch reference (gankern.reference) that is its specification, and Triton,
C++ (CPU) and CUDA implementations chosen per call (see gankern.backends()).
"""
__version__ = "0.1.0"

from .backends import backends, use_backend  # noqa: E402
from .ops.bias_act import bias_act  # noqa: E402
from .ops.norm import batch_norm_act, group_norm_act  # noqa: E402
from .fold import fold_batchnorm  # noqa: E402
from . import nn  # noqa: E402

__all__ = ["__version__", "backends", "use_backend", "bias_act", "group_norm_act", "batch_norm_act", "fold_batchnorm",
           "nn"]
