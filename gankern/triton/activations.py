"""Activation functions inside Triton kernels; codes from gankern/_tables.py: ACTIVATIONS.

Only core `tl` math is used (libdevice is not available under TRITON_INTERPRET=1), with care where
the naive formula loses precision: tanh and expm1 near 0, log1p of small arguments.
"""
import triton
import triton.language as tl

from .._tables import ACTIVATIONS as _CODES
from .._tables import real

LINEAR: tl.constexpr = tl.constexpr(_CODES["linear"])
RELU: tl.constexpr = tl.constexpr(_CODES["relu"])
LRELU: tl.constexpr = tl.constexpr(_CODES["lrelu"])
TANH: tl.constexpr = tl.constexpr(_CODES["tanh"])
SIGMOID: tl.constexpr = tl.constexpr(_CODES["sigmoid"])
ELU: tl.constexpr = tl.constexpr(_CODES["elu"])
SELU: tl.constexpr = tl.constexpr(_CODES["selu"])
SOFTPLUS: tl.constexpr = tl.constexpr(_CODES["softplus"])
SWISH: tl.constexpr = tl.constexpr(_CODES["swish"])
GELU: tl.constexpr = tl.constexpr(_CODES["gelu"])
GELU_TANH: tl.constexpr = tl.constexpr(_CODES["gelu_tanh"])

# Globals a kernel reads must be tl.constexpr objects: compiled Triton rejects plain floats (an
# annotation is not enough), though the interpreter takes them.
SELU_ALPHA = tl.constexpr(real("SELU_ALPHA"))
SELU_SCALE = tl.constexpr(real("SELU_SCALE"))


@triton.jit
def tanh(z):
    a = tl.abs(z)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    z2 = z * z
    small = a * (1.0 + z2 * (-1.0 / 3.0 + z2 * (2.0 / 15.0 + z2 * (-17.0 / 315.0))))  # Taylor, |z| < 0.1
    t = tl.where(a < 0.1, small, big)
    return tl.where(z < 0, -t, t)


@triton.jit
def expm1(z):
    small = z * (1.0 + z * (0.5 + z * (1.0 / 6.0 + z * (1.0 / 24.0 + z * (1.0 / 120.0)))))
    return tl.where(tl.abs(z) < 0.1, small, tl.exp(z) - 1.0)


@triton.jit
def log1p(u):
    # log(w) * u / (w - 1) with w = 1 + u cancels the rounding of w (Goldberg's trick).
    w = 1.0 + u
    return tl.where(w == 1.0, u, tl.log(w) * u / (w - 1.0))


@triton.jit
def act_forward(z, alpha, ACT: tl.constexpr):
    if ACT == RELU:
        z = tl.where(z > 0, z, tl.where(z != z, z, 0.0))
    elif ACT == LRELU:
        z = tl.where(z > 0, z, z * alpha)
    elif ACT == TANH:
        z = tanh(z)
    elif ACT == SIGMOID:
        z = tl.sigmoid(z)
    elif ACT == ELU:
        z = tl.where(z > 0, z, expm1(z))
    elif ACT == SELU:
        z = SELU_SCALE * tl.where(z > 0, z, SELU_ALPHA * expm1(z))
    elif ACT == SOFTPLUS:
        z = tl.where(z > 20.0, z, tl.maximum(z, 0.0) + log1p(tl.exp(-tl.abs(z))))
    elif ACT == SWISH:
        z = z * tl.sigmoid(z)
    elif ACT == GELU:
        z = 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))
    elif ACT == GELU_TANH:
        z = 0.5 * z * (1.0 + tanh(0.7978845608028654 * (z + 0.044715 * z * z * z)))
    return z


@triton.jit
def act_derivative(z, alpha, ACT: tl.constexpr):
    one = tl.full(z.shape, 1.0, tl.float32)
    if ACT == RELU:
        d = tl.where(z <= 0, 0.0, one)
    elif ACT == LRELU:
        d = tl.where(z > 0, one, alpha)
    elif ACT == TANH:
        t = tanh(z)
        d = 1.0 - t * t
    elif ACT == SIGMOID:
        s = tl.sigmoid(z)
        d = s * (1.0 - s)
    elif ACT == ELU:
        d = tl.where(z > 0, one, tl.exp(z))
    elif ACT == SELU:
        d = SELU_SCALE * tl.where(z > 0, one, SELU_ALPHA * tl.exp(z))
    elif ACT == SOFTPLUS:
        d = tl.where(z > 20.0, one, tl.sigmoid(z))
    elif ACT == SWISH:
        s = tl.sigmoid(z)
        d = s * (1.0 + z * (1.0 - s))
    elif ACT == GELU:
        d = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476)) + z * 0.3989422804014327 * tl.exp(-0.5 * z * z)
    elif ACT == GELU_TANH:
        t = tanh(0.7978845608028654 * (z + 0.044715 * z * z * z))
        d = 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 0.134145 * z * z)
    else:
        d = one
    return d
