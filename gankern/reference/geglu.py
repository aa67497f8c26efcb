"""geglu specification: the gated GELU of transformer feed-forward layers (diffusers' GEGLU).

    hidden, gate = x.chunk(2, dim=-1)          (x: (..., 2 D), the output of one projection)
    y = hidden * gelu(gate)                    (exact erf GELU, or tanh-approximated)

Math in the input dtype for fp32/fp64 and in fp32 for fp16/bf16, like the kernels. The backward
is closed form: d hidden = dy * gelu(gate), d gate = dy * hidden * gelu'(gate), concatenated in
x's layout.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .activations import get


def _name(approximate: str) -> str:
    return "gelu_tanh" if approximate == "tanh" else "gelu"


def _upcast(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def geglu(x: Tensor, approximate: str) -> Tensor:
    hidden, gate = _upcast(x).chunk(2, dim=-1)
    return (hidden * get(_name(approximate)).fn(gate, 0.0)).to(x.dtype)


def geglu_backward(dy: Tensor, x: Tensor, approximate: str) -> Tensor:
    a = get(_name(approximate))
    hidden, gate = _upcast(x).chunk(2, dim=-1)
    dy = _upcast(dy).to(hidden.dtype)
    return torch.cat([dy * a.fn(gate, 0.0), dy * hidden * a.grad(gate, 0.0)], dim=-1).to(x.dtype)
