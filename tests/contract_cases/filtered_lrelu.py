"""filtered_lrelu under contract. The filters are constants of the op (buffers in StyleGAN), so they
are bound into the call; x and the bias are the tensor arguments."""
import torch

import gankern
from contract import Case, constant

_FU = gankern.setup_filter([1, 3, 3, 1], separable=True)
_FD = gankern.setup_filter([1, 3, 3, 1])  # 2-D


def _make(shape, gen):
    return {"x": torch.randn(shape, generator=gen), "b": torch.randn(shape[1], generator=gen)}


CASES = [
    # up 2 / down 2 with 4-tap filters: an empty H or W leaves no output, which is refused (ValueError).
    Case("filtered_lrelu_up2_down2_clamp",
         lambda x, b: gankern.filtered_lrelu(x, constant(_FU, x), constant(_FD, x), b, up=2, down=2,
                                             padding=[2, 1, 2, 1], clamp=1.5),
         _make, (2, 3, 5, 4), ("filtered_lrelu", "filtered_lrelu_masked"), layout_args=("x",), expand=("x",),
         empty_refused=lambda shape: shape[2] == 0 or shape[3] == 0),
]
