"""geglu in Triton: one pass, fp32 math, storage dtype in and out.

Bytes: forward reads x (2 D per row) and writes y (D per row); backward reads dy and x and writes
dx. Flat index i of y is (row, col) = (i // D, i % D); its inputs are x[row, col] and x[row, D + col].
"""
import triton
import triton.language as tl

from .activations import GELU, GELU_TANH, act_derivative, act_forward

BLOCK = 1024


@triton.jit
def _geglu_kernel(dy_ptr, x_ptr, out_ptr, n, D, ACT: tl.constexpr, BACKWARD: tl.constexpr, INT64: tl.constexpr,
                  BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    row = offs // D
    col = offs - row * D
    hi = row * 2 * D + col
    h = tl.load(x_ptr + hi, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(x_ptr + hi + D, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + hi, (dy * act_forward(g, 0.0, ACT)).to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(out_ptr + hi + D, (dy * h * act_derivative(g, 0.0, ACT)).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + offs, (h * act_forward(g, 0.0, ACT)).to(out_ptr.dtype.element_ty), mask=mask)


def launch(dy, x, out, rows, D, tanh):
    """out = geglu(x) (dy None, out (rows, D)) or its input gradient (out (rows, 2 D)); contiguous."""
    n = rows * D
    if n == 0:
        return out
    _geglu_kernel[(triton.cdiv(n, BLOCK),)](
        dy if dy is not None else x, x, out, n, D, ACT=GELU_TANH if tanh else GELU, BACKWARD=dy is not None,
        INT64=2 * n >= 2**31, BLOCK=BLOCK, num_warps=4)
    return out
