"""Layout and allocation helpers shared by every op's kernel wrappers."""
from __future__ import annotations

import contextlib

import torch

_poison = False


@contextlib.contextmanager
def poison_outputs(enabled: bool = True):
    """Fill every output the kernel wrappers allocate with NaN before a kernel runs (tests use this,
    so an element a kernel forgets to write fails the comparison instead of passing by luck)."""
    global _poison
    old, _poison = _poison, enabled
    try:
        yield
    finally:
        _poison = old


def empty_like(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """torch.empty_like keeping x's dense layout (NCHW, channels_last, ...); NaN under poison_outputs."""
    out = torch.empty_like(x, dtype=dtype)
    if _poison and out.is_floating_point():
        out.fill_(float("nan"))
    return out


def empty(shape, *, dtype, device) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    if _poison and out.is_floating_point():
        out.fill_(float("nan"))
    return out


def cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in dtype: t itself when it already is (a no-op .to() still costs a dispatcher call, and the
    launchers run on every op call: host time that decides small models on a GPU)."""
    return t if t.dtype == dtype else t.to(dtype)


def contiguous_as(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """t in dtype and contiguous, as a kernel reads a parameter; t itself when it already is (see
    cast); None stays None."""
    if t is None or (t.dtype == dtype and t.is_contiguous()):
        return t
    return t.to(dtype).contiguous()


def is_dense(t: torch.Tensor) -> bool:
    """True if t covers exactly numel() consecutive elements in some order of its dimensions
    (contiguous, channels_last, any permutation): kernels can then treat it as flat memory."""
    if t.is_contiguous() and t.numel():  # the common case, without the Python loop below
        return True
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def dense(t: torch.Tensor) -> torch.Tensor:
    """t itself if dense, else a contiguous copy (sliced or expanded inputs)."""
    return t if is_dense(t) else t.contiguous()


def like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """t with ref's strides (copying only if they differ), e.g. an incoming gradient laid out
    unlike the saved input."""
    if t.stride() == ref.stride() or t.numel() <= 1:
        return t
    out = torch.empty_like(ref, dtype=t.dtype)
    out.copy_(t)
    return out


def autocast_input(x: torch.Tensor) -> torch.Tensor:
    """Under torch.autocast for x's device, x in the autocast dtype (bf16/fp16), so a gankern layer
    runs its kernels in that dtype as torch's own autocast-listed layers do; otherwise x unchanged.
    gankern's ops are custom ops, which autocast does not cast by itself."""
    dev = x.device.type
    if dev not in _AUTOCAST_DEVICES:  # torch.is_autocast_enabled raises for e.g. "meta"
        return x
    if x.is_floating_point() and torch.is_autocast_enabled(dev):
        return x.to(torch.get_autocast_dtype(dev))
    return x


# Device types torch.autocast supports (and gankern has backends for).
_AUTOCAST_DEVICES = frozenset({"cpu", "cuda"})


# ---- output layouts ----------------------------------------------------------------------------
# Each op states the strides of its full-size outputs with one of the functions below; its fake
# kernel returns exactly that (torch.compile and export trust it), its kernels write it, and the
# custom op passes every backend's result through `restride`, which copies only the reference
# backend's outputs (torch chooses their layout) when they differ. docs/architecture.md, "Layouts".

def contiguous_strides(shape) -> tuple:
    strides, acc = [], 1
    for n in reversed(tuple(shape)):
        strides.append(acc)
        acc = acc * n if n > 1 else acc
    return tuple(reversed(strides))


def kept_strides(x: torch.Tensor) -> tuple:
    """Elementwise kernels keep a dense input's layout (contiguous, channels_last, any permutation);
    other inputs (sliced, expanded) are copied to contiguous first."""
    return tuple(x.stride()) if is_dense(x) else contiguous_strides(x.shape)


def _same_layout(a: torch.Tensor, strides: tuple) -> bool:
    return all(s == t for s, t, n in zip(a.stride(), strides, a.shape) if n > 1)


def empty_strided_like(x: torch.Tensor, strides: tuple, dtype: torch.dtype | None = None) -> torch.Tensor:
    """What a fake kernel returns: x's shape with the stated strides."""
    return torch.empty_strided(x.shape, strides, dtype=dtype or x.dtype, device=x.device)


def restride(out, like: torch.Tensor, strides: tuple):
    """out laid out with `strides` if it has like's shape (a copy only when the significant strides
    differ); tuples element by element; other outputs (statistics, None) pass through."""
    if isinstance(out, (tuple, list)):
        return type(out)(restride(o, like, strides) for o in out)
    # the kernels' outputs: exactly the strides (one tuple comparison, the eager hot path)
    if out is None or out.stride() == strides or out.shape != like.shape or out.numel() <= 1 \
            or _same_layout(out, strides):
        return out
    fixed = torch.empty_strided(out.shape, strides, dtype=out.dtype, device=out.device)
    fixed.copy_(out)
    return fixed


def restride_contiguous(out, like: torch.Tensor):
    """restride(out, like, contiguous strides), for ops whose full-size outputs are contiguous on
    every backend: returns out untouched, without building the stride tuple, when every output
    already is (what the native kernels write; the eager hot path)."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    if all(o is None or o.is_contiguous() for o in outs):
        return out
    return restride(out, like, contiguous_strides(like.shape))


def channel_sums(g: torch.Tensor, dim: int) -> torch.Tensor:
    """Sums of g over every dimension but `dim` (a bias gradient), deterministic; accumulated and
    returned in fp32 for bf16/fp16 (in g's dtype otherwise)."""
    dims = [d for d in range(g.ndim) if d != dim]
    half = g.dtype in (torch.float16, torch.bfloat16)
    if half and dims and g.device.type == "cpu":
        sums = _half_channel_sums_cpu(g, dim)
        if sums is not None:
            return sums
    acc = torch.float32 if half else g.dtype
    return g.sum(dims, dtype=acc) if dims else g.to(acc)


# Elements converted to fp32 at a time by _half_channel_sums_cpu (4 MiB of fp32: stays in L2/L3).
_HALF_SLICE = 1 << 20


def _half_channel_sums_cpu(g: torch.Tensor, dim: int) -> torch.Tensor | None:
    """fp32 sums of a bf16/fp16 CPU tensor over every dimension but `dim`, for the dense layouts
    (rows of a contiguous tensor with dim 0 or 1; pixels of a channels_last one), else None.
    torch's CPU sum of a half tensor with an fp32 accumulator runs ~10x slower than the fp32 sum of
    the same data (torch 2.13, 64x512x32x32 bf16: ~90 ms vs ~7 ms here, most of it page faults of
    fresh fp32 temporaries); converting slices into one reused fp32 buffer keeps the fp32 speed.
    Fixed slice order: deterministic."""
    C = g.shape[dim]
    if g.numel() == 0:
        return None
    if g.is_contiguous() and dim <= 1:
        rest = g.numel() // (C * (g.shape[0] if dim == 1 else 1))
        rows = g.reshape(-1, rest)                      # one row per (n, c) (dim 1) or per c (dim 0)
        per_row = True
    elif dim == 1 and g.ndim == 4 and g.is_contiguous(memory_format=torch.channels_last):
        rows = g.permute(0, 2, 3, 1).reshape(-1, C)     # NHWC pixels: a view
        per_row = False
    else:
        return None
    buf = torch.empty((max(1, min(rows.shape[0], _HALF_SLICE // rows.shape[1])), rows.shape[1]))
    parts, total = [], None
    for p in rows.split(buf.shape[0]):
        f = buf[:p.shape[0]]
        f.copy_(p)
        if per_row:
            parts.append(f.sum(1))
        else:
            total = f.sum(0) if total is None else total.add_(f.sum(0))
    if not per_row:
        return total
    sums = torch.cat(parts)
    return sums.view(-1, C).sum(0) if dim == 1 else sums
