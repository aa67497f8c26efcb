"""group_norm_act and batch_norm_act under contract."""
import torch

import gankern
from contract import Case

SHAPE = (2, 4, 3, 5)
GN_OPS = ("group_norm_act", "group_norm_act_backward")
BN_OPS = ("batch_norm_act", "batch_norm_act_backward")


def _gn_make(shape, gen):
    N, C = shape[:2]
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return {"x": r(shape) * 2 + 1, "weight": r(C), "bias": r(C), "temb": r(N, C), "scale": r(N, C) * 0.5,
            "shift": r(N, C), "residual": r(shape)}


def _gn(x, weight, bias, temb, scale, shift, residual):
    return gankern.group_norm_act(x, 2, weight, bias, act="silu", temb=temb, scale=scale, shift=shift,
                                  residual=residual)


def _bn_make(shape, gen):
    C = shape[1]
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return {"x": r(shape) * 2 + 1, "running_mean": r(C), "running_var": r(C).abs() + 0.5, "weight": r(C),
            "bias": r(C), "residual": r(shape)}


def _bn_eval(x, running_mean, running_var, weight, bias, residual):
    return gankern.batch_norm_act(x, running_mean, running_var, weight, bias, training=False, act="gelu",
                                  residual=residual)


def _bn_train(x, running_mean, running_var, weight, bias, residual):
    """Returns the updated running statistics too (on copies: the case's tensors are reused)."""
    rm, rv = running_mean.clone(), running_var.clone()
    y = gankern.batch_norm_act(x, rm, rv, weight, bias, training=True, act="lrelu", residual=residual)
    return y, rm, rv


_RUNNING = {"running_mean": "running statistics are buffers (torch does not differentiate them either)",
            "running_var": "running statistics are buffers (torch does not differentiate them either)"}

CASES = [
    Case("group_norm_act_all_extras", _gn, _gn_make, SHAPE, GN_OPS, layout_args=("x", "residual"),
         expand=("x", "residual")),
    Case("group_norm_act_5d_plain", lambda x: gankern.group_norm_act(x, 2, act="gelu_tanh"),
         lambda shape, gen: {"x": torch.randn(shape, generator=gen)}, (2, 4, 2, 3, 2), GN_OPS, layout_args=("x",)),
    Case("batch_norm_act_eval", _bn_eval, _bn_make, SHAPE, BN_OPS, layout_args=("x", "residual"),
         no_grad=_RUNNING, expand=("residual",)),
    Case("batch_norm_act_train", _bn_train, _bn_make, SHAPE, BN_OPS, layout_args=("x", "residual"),
         no_grad=_RUNNING, expand=("x",),
         # torch's rule: training needs more than one value per channel, unless there are none
         empty_refused=lambda shape: False),
]
