"""Counter-based normals for Triton kernels, per gankern's RNG contract (docs/random.md):
element i (row-major) of randn(shape, seed, offset) is component i % 4 of
``tl.randn4x(seed, offset + i // 4)``.

Helpers other kernels call:
  randn_tile(seed, offset, start, BLOCK)  normals of elements start .. start + BLOCK - 1 (start and
      BLOCK multiples of 4): one Philox per counter, the 4 components interleaved in registers.
      Use this in kernels that own contiguous, 4-aligned element ranges.
  randn_flat(seed, offset, idx)           the normal of each flat index in `idx` (any pattern):
      each element runs its own Philox and Box-Muller and keeps one of the four results, so it
      costs 4x the arithmetic of randn_tile. Use it only where indices are scattered.

Counters are int64 (offsets past 2^32 work); `seed` and `offset` may be any int kernel arguments.
"""
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _counters(offset, first_counter, count: tl.constexpr):
    # int64 whatever type Triton gave the scalar arguments (i32 for small values): the counters
    # must not wrap at 2^31, and randint4x takes the high word only from a 64-bit counter.
    return offset.to(tl.int64) + first_counter + tl.arange(0, count).to(tl.int64)


@triton.jit
def randn_tile(seed, offset, start, BLOCK: tl.constexpr):
    """fp32 normals of flat elements start .. start + BLOCK - 1; start % 4 == 0, BLOCK % 4 == 0."""
    c = _counters(offset, start.to(tl.int64) // 4, BLOCK // 4)
    n0, n1, n2, n3 = tl.randn4x(seed, c)
    # [k, a, b] = component 2a + b of counter k, so the row-major flattening is element 4k + j.
    return tl.reshape(tl.join(tl.join(n0, n2), tl.join(n1, n3)), (BLOCK,))


@triton.jit
def randn_flat(seed, offset, idx):
    """fp32 normal of each flat element index in `idx` (int32 or int64 block of any shape)."""
    idx = idx.to(tl.int64)
    n0, n1, n2, n3 = tl.randn4x(seed, offset.to(tl.int64) + idx // 4)
    j = idx % 4
    return tl.where(j == 0, n0, tl.where(j == 1, n1, tl.where(j == 2, n2, n3)))


@triton.jit
def _randn_kernel(out_ptr, n, seed, offset, BLOCK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    z = randn_tile(seed, offset, start, BLOCK)
    offs = start + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, z.to(out_ptr.dtype.element_ty), mask=offs < n)


def randn(out, seed: int, offset: int):
    """Fill the contiguous tensor `out` with the normals of (seed, offset); seed and offset are the
    int64 bit patterns of the 64-bit values."""
    n = out.numel()
    if n:
        _randn_kernel[(triton.cdiv(n, BLOCK),)](out, n, seed, offset, BLOCK=BLOCK, num_warps=4)
    return out
