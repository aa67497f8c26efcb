"""Activations shared by the fused ops, with torch's semantics and StyleGAN2's default gains.

Each activation's integer code is the one the native and Triton kernels use, from
gankern/_tables.py: ACTIVATIONS (the single definition).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .._tables import ACTIVATIONS as CODES
from .._tables import real

SELU_ALPHA = real("SELU_ALPHA")
SELU_SCALE = real("SELU_SCALE")


@dataclass(frozen=True)
class Activation:
    name: str
    code: int                       # gankern/_tables.py: ACTIVATIONS (gk::Act in C++)
    fn: Callable[[Tensor, float], Tensor]
    grad: Callable[[Tensor, float], Tensor]    # d fn / dz, torch ops (differentiable again)
    def_gain: float = 1.0           # StyleGAN2 bias_act default gain
    def_alpha: float = 0.0


def _sig(z):
    return torch.sigmoid(z)


def _phi(z):  # standard normal pdf
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _gelu_tanh_grad(z, _):
    k = math.sqrt(2 / math.pi)
    t = torch.tanh(k * (z + 0.044715 * z ** 3))
    return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * k * (1 + 3 * 0.044715 * z * z)


_LIST = [
    Activation("linear", CODES["linear"], lambda z, a: z, lambda z, a: torch.ones_like(z)),
    # relu'(0) = 0 and NaN inputs pass the gradient, as torch's threshold_backward does.
    Activation("relu", CODES["relu"], lambda z, a: F.relu(z), lambda z, a: (~(z <= 0)).to(z.dtype), def_gain=math.sqrt(2)),
    Activation("lrelu", CODES["lrelu"], lambda z, a: F.leaky_relu(z, a),
               lambda z, a: torch.where(z > 0, torch.ones_like(z), torch.full_like(z, a)),
               def_gain=math.sqrt(2), def_alpha=0.2),
    Activation("tanh", CODES["tanh"], lambda z, a: torch.tanh(z), lambda z, a: 1 - torch.tanh(z) ** 2),
    Activation("sigmoid", CODES["sigmoid"], lambda z, a: torch.sigmoid(z), lambda z, a: _sig(z) * (1 - _sig(z))),
    Activation("elu", CODES["elu"], lambda z, a: F.elu(z), lambda z, a: torch.where(z > 0, torch.ones_like(z), torch.exp(z))),
    Activation("selu", CODES["selu"], lambda z, a: F.selu(z),
               lambda z, a: SELU_SCALE * torch.where(z > 0, torch.ones_like(z), SELU_ALPHA * torch.exp(z))),
    Activation("softplus", CODES["softplus"], lambda z, a: F.softplus(z),
               lambda z, a: torch.where(z > 20, torch.ones_like(z), _sig(z))),
    Activation("swish", CODES["swish"], lambda z, a: z * torch.sigmoid(z),
               lambda z, a: _sig(z) * (1 + z * (1 - _sig(z))), def_gain=math.sqrt(2)),
    # x * Phi(x) as written, on every dtype: gelu(+inf) = +inf, gelu(-inf) = -inf * 0 = NaN (torch's
    # float32 CPU kernel gives NaN for +inf, its float64 one +inf; the kernels follow this formula)
    Activation("gelu", CODES["gelu"], lambda z, a: z * (0.5 * (1 + torch.erf(z * (1 / math.sqrt(2))))),
               lambda z, a: 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * _phi(z)),
    Activation("gelu_tanh", CODES["gelu_tanh"], lambda z, a: F.gelu(z, approximate="tanh"), _gelu_tanh_grad),
]

ACTIVATIONS: dict[str, Activation] = {a.name: a for a in _LIST}
# SiLU is swish without StyleGAN's gain: the name diffusion code uses.
ACTIVATIONS["silu"] = Activation("silu", CODES["swish"], ACTIVATIONS["swish"].fn, ACTIVATIONS["swish"].grad)


def get(name: str, arg: str = "act") -> Activation:
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"{arg} must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]
