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
