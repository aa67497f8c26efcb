"""Argument checks shared by the functional APIs: errors name the argument, what was expected and
what came."""
from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def tensor(t, name: str, *, floating: bool = True, ndim_min: int = 0) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (float32, float64, float16 or bfloat16), "
                        f"got {t.dtype}")
    if t.ndim < ndim_min:
        raise ValueError(f"{name} must have at least {ndim_min} dimensions, got shape {tuple(t.shape)}")
    return t


def same_device(ref: torch.Tensor, ref_name: str, **others) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; "
                             "all tensors must be on one device")


def dim(d, ndim: int, name: str = "dim") -> int:
    if isinstance(d, bool) or not isinstance(d, int):
        raise TypeError(f"{name} must be an int, got {type(d).__name__}")
    if not -max(ndim, 1) <= d < max(ndim, 1):
        raise ValueError(f"{name}={d} is out of range for a tensor with {ndim} dimensions")
    return d % max(ndim, 1)


def real(v, name: str, *, min_value: float | None = None, min_inclusive: bool = True, finite: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    v = float(v)
    if math.isnan(v):
        raise ValueError(f"{name} must not be NaN")
    if finite and math.isinf(v):
        raise ValueError(f"{name} must be a finite number, got {v}")
    if min_value is not None and (v < min_value or (v == min_value and not min_inclusive)):
        op = ">=" if min_inclusive else ">"
        raise ValueError(f"{name} must be {op} {min_value}, got {v}")
    return v


SEED_MIN, SEED_END = -(1 << 63), 1 << 64


def seed_bits(v, name: str = "seed") -> int:
    """The one check of a Philox seed or offset (randn, the VAE ops, diffusion steps, schedulers'
    manual_seed): an int (or a one-element integer tensor) in [-2^63, 2^64), the range
    torch.manual_seed takes; a negative value means its 64-bit two's complement (-1 is 2^64 - 1).
    Returns the int64 bit pattern the custom ops carry (idempotent: a returned value passes again)."""
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point() and v.dtype != torch.bool:
        v = int(v.item())
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if not SEED_MIN <= v < SEED_END:
        raise ValueError(f"{name} must be an int in [-2^63, 2^64) (negative = two's complement), got {v}")
    return v - SEED_END if v >= (1 << 63) else v
