"""conv2d_resample under contract (torch convolutions + upfirdn2d): gradients for x and w; the
filter is bound in (a buffer in StyleGAN's layers). An empty H or W leaves no output: ValueError."""
import torch

import gankern
from contract import Case, constant

_F = gankern.setup_filter([1, 3, 3, 1])


def _xw(shape, gen):
    return {"x": torch.randn(shape, generator=gen), "w": torch.randn(4, shape[1], 3, 3, generator=gen)}


def _refused(shape):
    return shape[2] == 0 or shape[3] == 0


CASES = [
    Case("conv2d_resample_down2",
         lambda x, w: gankern.conv2d_resample(x, w, constant(_F, x, x.dtype), down=2, padding=1),
         _xw, (2, 3, 6, 5), ("upfirdn2d",), layout_args=("x",), empty_refused=_refused),
    Case("conv2d_resample_up2", lambda x, w: gankern.conv2d_resample(x, w, constant(_F, x, x.dtype), up=2, padding=1,
                                                                     flip_weight=False),
         _xw, (2, 3, 4, 5), ("upfirdn2d",), layout_args=("x",), empty_refused=_refused,
         # An inf in the weight meets the zeros of the upsampling inside torch's conv_transpose2d,
         # whose fp32 (oneDNN) and fp64 (native) kernels differ in which products are inf * 0:
         # NaN patterns of torch's, not gankern's, making. Non-finite x is checked.
         nonfinite_args=("x",)),
]
