"""Counter-based normal random numbers that are the same on every backend.

    gankern.randn(shape, seed, offset=0)   element i (row-major) = component i % 4 of Triton's
                                           tl.randn4x(seed, offset + i // 4)

The specification is gankern/reference/random.py (Philox4x32-10 with Triton's key schedule,
uint -> float and Box-Muller); the cpu, cuda and triton backends agree with it to float rounding.
A call with n elements consumes ceil(n / 4) counters, so the next independent draw with the same
seed starts at offset + ceil(n / 4). Normals are generated in float32 and rounded to fp16/bf16;
float64 runs Box-Muller in float64 (reference backend only).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .. import _native, _op
from .. import _tensors as T
from ._validate import seed_bits
from ..backends import FLOATS, FP32_HALF, register, resolve
from ..reference import random as ref


def random_seed() -> int:
    """A fresh 63-bit seed drawn from torch's default CPU generator, so torch.manual_seed governs
    every gankern op called with seed=None. Under tracing (torch.export, torch.compile with captured
    scalars) it is the symbolic value of .item(), which int() would have to specialize: the drawn
    seed then stays a graph input of the custom op, drawn anew on every run of the program."""
    seed = torch.randint(0, 2**63 - 1, (), dtype=torch.int64).item()
    return seed if isinstance(seed, torch.SymInt) else int(seed)


def check_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, torch.Size):
        return tuple(shape)
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, Sequence) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}")
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must not have negative sizes, got {tuple(shape)}")
    return tuple(shape)


def randn(shape, seed: int | None = None, offset: int = 0, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normals N(0, 1) of `shape`: element i (row-major) is component i % 4 of
    tl.randn4x(seed, offset + i // 4). Same values on every backend and device for the same
    (shape, seed, offset), to float rounding. seed=None draws one (gankern.random_seed()).

    Args:
        shape: sizes (non-negative ints).
        seed: 64-bit Philox key, an int in [-2^63, 2^64) (negative = two's complement, as
            torch.manual_seed; ops/_validate.py: seed_bits).
        offset: first Philox counter, same range; the call uses ceil(numel / 4) counters.
        device: where the tensor is made (default: CPU).
        dtype: float32, float16, bfloat16 (generated in float32 and rounded) or float64.
    """
    shape = check_shape(shape)
    seed = random_seed() if seed is None else seed_bits(seed)  # drawn seeds need no check (see ops/vae.py)
    offset = seed_bits(offset, "offset")
    if dtype not in FLOATS:
        raise TypeError(f"dtype must be a floating dtype (float32, float64, float16 or bfloat16), got {dtype}")
    device = torch.device("cpu") if device is None else torch.device(device)
    return _randn(list(shape), seed, offset, dtype, device)


def randn_like(x: Tensor, seed: int | None = None, offset: int = 0) -> Tensor:
    """gankern.randn(x.shape, seed, offset) on x's device with x's dtype (a contiguous tensor:
    the contract numbers elements row-major whatever x's memory layout)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    return randn(x.shape, seed, offset, device=x.device, dtype=x.dtype)


# ---- custom op -------------------------------------------------------------------------------

@_op.custom_op("gankern::randn")
def _randn(shape: list[int], seed: int, offset: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    probe = torch.empty(0, dtype=dtype, device=device)
    return resolve("randn", probe)(shape, seed, offset, dtype, device)


@_randn.register_fake
def _(shape, seed, offset, dtype, device):
    return torch.empty(shape, dtype=dtype, device=device)


# ---- backends --------------------------------------------------------------------------------

@register("randn", "reference")
def _randn_reference(shape, seed, offset, dtype, device):
    return ref.randn(shape, seed, offset, dtype=dtype, device=device)


@register("randn", "cpu", cpu_dtypes=FP32_HALF)
def _randn_cpu(shape, seed, offset, dtype, device):
    out = T.empty(shape, dtype=dtype, device=device)  # generated in fp32, rounded per tile in C++
    _native.entry("cpu", "random.randn")(out, out=out, seed=seed, offset=offset)
    return out


@register("randn", "cuda")
def _randn_cuda(shape, seed, offset, dtype, device):
    out = T.empty(shape, dtype=dtype, device=device)
    _native.entry("cuda", "random.randn")(out, out=out, seed=seed, offset=offset)
    return out


@register("randn", "triton")
def _randn_triton(shape, seed, offset, dtype, device):
    from ..triton import random as tk
    return tk.randn(T.empty(shape, dtype=dtype, device=device), seed, offset)
