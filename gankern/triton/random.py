"""Counter-based normals for Triton kernels, per gankern's RNG contract (docs/random.md):
element i (row-major) of randn(shape, seed, offset) is component i % 4 of
``tl.randn4x(seed, offset + i // 4)``.

Helpers other kernels call:
  randn_tile2d(seed, offset, start, ROWS) [ROWS, 4] normals of elements start .. start + 4*ROWS - 1
      (start % 4 == 0), row k = the 4 components of one counter. One Philox + Box-Muller per
      counter; each component is picked by a select within the thread that owns the row, so a
      kernel that loads its data as [ROWS, 4] tiles (16-byte vectors per thread) needs no shuffles.
  randn_tile(seed, offset, start, BLOCK)  the same as a flat [BLOCK] block (BLOCK % 4 == 0), via
      tl.join/tl.reshape (the compiler may move data between threads for it).
  randn_flat(seed, offset, idx)           the normal of each flat index in `idx` (any pattern):
      each element runs its own Philox and Box-Muller and keeps one of the four results, so it
      costs 4x the arithmetic of the tiles. Use it only where indices are scattered.

Counters are int64 (offsets past 2^32 work); `seed` and `offset` may be any int kernel arguments.
"""
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _counters(offset, first_counter, count: tl.constexpr):
    # int64 whatever type Triton gave the scalar arguments (i32 for small values): the counters
    # must not wrap at 2^31, and randint4x takes the high word only from a 64-bit counter.
    # tl.full((), x, int64): a scalar tensor whether the caller passed a tensor or its kernel
    # specialized the argument into a constexpr (tl.to_tensor does that too, but Triton 3.6, the one
    # torch 2.11 ships, does not export it).
    return tl.full((), offset, tl.int64) + first_counter + tl.arange(0, count).to(tl.int64)


@triton.jit
def randn_tile(seed, offset, start, BLOCK: tl.constexpr):
    """fp32 normals of flat elements start .. start + BLOCK - 1; start % 4 == 0, BLOCK % 4 == 0."""
    c = _counters(offset, tl.full((), start, tl.int64) // 4, BLOCK // 4)
    n0, n1, n2, n3 = tl.randn4x(seed, c)
    # [k, a, b] = component 2a + b of counter k, so the row-major flattening is element 4k + j.
    return tl.reshape(tl.join(tl.join(n0, n2), tl.join(n1, n3)), (BLOCK,))


@triton.jit
def randn_flat(seed, offset, idx):
    """fp32 normal of each flat element index in `idx` (int32 or int64 block of any shape)."""
    idx = idx.to(tl.int64)
    n0, n1, n2, n3 = tl.randn4x(seed, tl.full((), offset, tl.int64) + idx // 4)
    j = idx % 4
    return tl.where(j == 0, n0, tl.where(j == 1, n1, tl.where(j == 2, n2, n3)))


@triton.jit
def randn_tile2d(seed, offset, start, ROWS: tl.constexpr):
    """[ROWS, 4] fp32 normals: element (k, j) is flat element start + 4k + j; start % 4 == 0."""
    c = _counters(offset, tl.full((), start, tl.int64) // 4, ROWS)
    n0, n1, n2, n3 = tl.randn4x(seed, c)
    j = tl.arange(0, 4)[None, :]
    return tl.where(j == 0, n0[:, None], tl.where(j == 1, n1[:, None], tl.where(j == 2, n2[:, None], n3[:, None])))


@triton.jit
def tile2d_offsets(start, ROWS: tl.constexpr):
    """Flat element indices (int64) matching randn_tile2d(..., start, ROWS)."""
    return tl.full((), start, tl.int64) + 4 * tl.arange(0, ROWS).to(tl.int64)[:, None] + tl.arange(0, 4)[None, :]


# seed and offset change every call: no value specialization (one compiled kernel for all).
@triton.jit(do_not_specialize=["seed", "offset"])
def _randn_kernel(out_ptr, n, seed, offset, BLOCK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    z = randn_tile2d(seed, offset, start, BLOCK // 4)
    offs = tile2d_offsets(start, BLOCK // 4)
    tl.store(out_ptr + offs, z.to(out_ptr.dtype.element_ty), mask=offs < n)


def randn(out, seed: int, offset: int):
    """Fill the contiguous tensor `out` with the normals of (seed, offset); seed and offset are the
    int64 bit patterns of the 64-bit values."""
    n = out.numel()
    if n:
        _randn_kernel[(triton.cdiv(n, BLOCK),)](out, n, seed, offset, BLOCK=BLOCK, num_warps=4)
    return out
