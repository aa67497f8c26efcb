"""modulated_conv2d under contract: both strategies, with the noise + bias + lrelu + clamp epilogue.
x, weight, styles, noise and bias are the tensor arguments (all differentiable)."""
import torch

import gankern
from contract import Case


def _make(shape, gen):
    N, I, H, W = shape
    return {"x": torch.randn(shape, generator=gen), "weight": torch.randn(4, I, 3, 3, generator=gen),
            "styles": torch.randn(N, I, generator=gen) + 1, "noise": torch.randn(N, 1, H, W, generator=gen),
            "bias": torch.randn(4, generator=gen)}


def _call(fused):
    return lambda x, weight, styles, noise, bias: gankern.modulated_conv2d(
        x, weight, styles, padding=1, noise=noise, bias=bias, act="lrelu", clamp=3.0, fused_modconv=fused)


CASES = [
    # 3x3 with padding 1: an empty H or W leaves no output, and no input channels no convolution
    # (torch's conv2d would return 0 output channels): both refused (ValueError).
    Case(f"modulated_conv_{name}", _call(fused), _make, (2, 3, 5, 4),
         ("modconv_weight", "modconv_dcoefs", "modconv_epilogue"), layout_args=("x",), expand=("x",),
         empty_refused=lambda shape: shape[1] == 0 or shape[2] == 0 or shape[3] == 0,
         # an infinite weight tap that lands on the zero padding: torch's conv2d (implicit padding,
         # what gankern.conv2d_resample and StyleGAN run) skips it, the literal reference multiplies
         # 0 * inf = NaN; that is conv2d_resample's padding contract, not this op's (lead: decide)
         nonfinite_args=("x", "styles", "noise", "bias"))
    for name, fused in (("fused", True), ("nonfused", False))
]
