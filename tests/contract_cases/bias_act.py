"""bias_act under contract."""
import torch

import gankern
from contract import Case


def _make(shape, gen):
    return {"x": torch.randn(shape, generator=gen), "b": torch.randn(shape[1], generator=gen)}


CASES = [
    Case("bias_act_lrelu_clamp", lambda x, b: gankern.bias_act(x, b, act="lrelu", clamp=2.0), _make,
         (2, 4, 3, 5), ("bias_act", "bias_act_backward"), layout_args=("x",), expand=("x",)),
    Case("bias_act_gelu_dim3", lambda x, b: gankern.bias_act(x, b, dim=3, act="gelu"),
         lambda shape, gen: {"x": torch.randn(shape, generator=gen), "b": torch.randn(shape[3], generator=gen)},
         (2, 4, 3, 5), ("bias_act", "bias_act_backward"), layout_args=("x",)),
]
