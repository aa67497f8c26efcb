"""upfirdn2d under contract. The filter is a constant of the op (a buffer in StyleGAN), so it is
bound into the call rather than a tensor argument."""
import torch

import gankern
from contract import Case, constant

_F = gankern.setup_filter([1, 3, 3, 1], separable=True)  # 1-D: the CPU kernel's separable path


CASES = [
    # up 2 with a 4-tap filter: an empty H or W leaves no output, which upfirdn2d refuses (ValueError).
    Case("upfirdn2d_up2_pad", lambda x: gankern.upfirdn2d(x, constant(_F, x), up=2, padding=[2, 1, 2, 1], gain=4),
         lambda shape, gen: {"x": torch.randn(shape, generator=gen)}, (2, 3, 5, 4), ("upfirdn2d",),
         layout_args=("x",), expand=("x",), empty_refused=lambda shape: shape[2] == 0 or shape[3] == 0),
]
