"""The random-number specification: Philox4x32-10 with Triton's conventions, in torch integer ops.

Contract (docs/random.md). Element i (row-major over `shape`) of ``randn(shape, seed, offset)`` is
component ``i % 4`` of Triton's ``tl.randn4x(seed, offset + i // 4)``:

    key      = (seed mod 2^32, seed >> 32)                       seed in [0, 2^64)
    counter  = (c mod 2^32, c >> 32, 0, 0),  c = offset + i // 4 (mod 2^64)
    words    = Philox4x32-10(key, counter)                       (w0, w1, w2, w3), uint32
    uniform  = float32(x) * float32(4.6566127342e-10),  x = w as int32, ~x if negative   in [0, 1)
    normals  = Box-Muller of (u0, u1) and (u2, u3):  u = max(u, float32(1e-7)), th = 2 pi u',
               r = sqrt(-2 log u), (r cos th, r sin th)

A call with n elements consumes ceil(n / 4) counters: the next independent call should use
``offset + ceil(n / 4)``. The uniforms are computed exactly here (integer ops, one exactly rounded
int -> float32 conversion and one float32 product); Box-Muller then runs in the requested compute
precision (float64 for testing the kernels, which run it in float32).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

M32 = 0xFFFFFFFF
ROUND_A, ROUND_B = 0xD2511F53, 0xCD9E8D57
KEY_A, KEY_B = 0x9E3779B9, 0xBB67AE85
UNIFORM_SCALE = float(np.float32(4.6566127342e-10))
MIN_U = float(np.float32(1e-7))
TWO_PI = 6.283185307179586


def counters_needed(numel: int) -> int:
    """Philox counters a call with `numel` elements consumes."""
    return (numel + 3) // 4


def _mulhilo(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """(high, low) 32-bit words of a * b for a constant a < 2^32 and uint32 values b (in int64):
    b is split in 16-bit halves so no product exceeds 2^49."""
    p0 = a * (b & 0xFFFF)           # < 2^48
    t = (p0 >> 16) + a * (b >> 16)  # (a * b) >> 16, < 2^49
    hi = t >> 16
    lo = ((t & 0xFFFF) << 16) | (p0 & 0xFFFF)
    return hi, lo


def philox4x32_10(seed: int, counters: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four uint32 words (as int64 tensors) of Philox4x32-10 for each 64-bit counter.

    `counters` is an int64 tensor holding the counters' two's-complement bit patterns (counters
    >= 2^63 are negative); `seed` is an int in [-2^63, 2^64), used modulo 2^64.
    """
    seed %= 1 << 64
    k0, k1 = seed & M32, seed >> 32
    c0 = counters & M32
    c1 = (counters >> 32) & M32  # arithmetic shift, masked: the high word of the bit pattern
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(10):
        hi_b, lo_b = _mulhilo(ROUND_B, c2)
        hi_a, lo_a = _mulhilo(ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + KEY_A) & M32, (k1 + KEY_B) & M32
    return c0, c1, c2, c3


def uint_to_uniform(w: Tensor) -> Tensor:
    """Triton's uint_to_uniform_float for 32-bit words, exactly, as float32 in [0, 1)."""
    x = torch.where(w >= 1 << 31, M32 - w, w)  # ~x of the int32 view, for negative x
    return x.to(torch.float32) * UNIFORM_SCALE   # int -> float32 rounds to nearest, as the kernels


def box_muller(u1: Tensor, u2: Tensor) -> tuple[Tensor, Tensor]:
    """Triton's pair_uniform_to_normal in the precision of u1, u2."""
    u1 = u1.clamp_min(MIN_U)
    th = TWO_PI * u2
    r = torch.sqrt(-2.0 * torch.log(u1))
    return r * torch.cos(th), r * torch.sin(th)


def counter_tensor(offset: int, count: int, device=None) -> Tensor:
    """int64 bit patterns of the counters offset, offset + 1, ..., offset + count - 1 (mod 2^64)."""
    off = offset % (1 << 64)
    lo, hi = off & M32, off >> 32
    k = torch.arange(count, dtype=torch.int64, device=device)
    s = lo + k
    c_lo, c_hi = s & M32, (hi + (s >> 32)) & M32
    return (c_hi << 32) | c_lo  # wraps into the sign bit exactly like uint64 -> int64


def randn(shape, seed: int, offset: int = 0, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Normals of the contract. float64 runs Box-Muller in float64 (the testing reference); every
    other dtype runs it in float32 and rounds to `dtype`."""
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    w = philox4x32_10(seed, counter_tensor(offset, counters_needed(n), device))
    u = [uint_to_uniform(x).to(compute) for x in w]
    n0, n1 = box_muller(u[0], u[1])
    n2, n3 = box_muller(u[2], u[3])
    out = torch.stack([n0, n1, n2, n3], dim=1).reshape(-1)[:n]
    return out.reshape(shape).to(dtype)
