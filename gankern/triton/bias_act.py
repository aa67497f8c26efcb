"""bias_act in Triton: one pass, fp32 math, storage dtype in and out.

Bytes: forward reads x and writes y; backward reads dy and x and writes dx. The bias (C floats)
stays in L1/L2. Indexing is int64 only when the tensor has 2^31 elements or more.
"""
import triton
import triton.language as tl

from .activations import act_derivative, act_forward

BLOCK = 2048


@triton.jit
def _bias_act_kernel(dy_ptr, x_ptr, b_ptr, out_ptr, n, C, cstride, alpha, gain, clamp,
                     ACT: tl.constexpr, HAS_BIAS: tl.constexpr, CLAMP: tl.constexpr, BACKWARD: tl.constexpr,
                     INT64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    z = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z += tl.load(b_ptr + (offs // cstride) % C, mask=mask, other=0.0)
    if BACKWARD:
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        out = dy * act_derivative(z, alpha, ACT) * gain
        if CLAMP:  # torch.clamp passes the gradient where -clamp <= v <= clamp
            v = act_forward(z, alpha, ACT) * gain
            out = tl.where((v >= -clamp) & (v <= clamp), out, 0.0)
    else:
        out = act_forward(z, alpha, ACT) * gain
        if CLAMP:  # comparisons keep NaN, as torch.clamp does
            out = tl.where(out < -clamp, -clamp, tl.where(out > clamp, clamp, out))
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def launch(dy, x, b, out, C, cstride, act, alpha, gain, clamp):
    """out = bias_act(x) (dy None) or its input gradient; tensors are dense with equal strides.
    The scalars of csrc/bias_act/bias_act.h's Params, as gankern.ops.bias_act._prepare gives them."""
    n = x.numel()
    if n == 0:
        return out
    grid = (triton.cdiv(n, BLOCK),)
    _bias_act_kernel[grid](
        dy if dy is not None else x, x, b if b is not None else x, out, n, C, cstride,
        float(alpha), float(gain), float(clamp),
        ACT=act, HAS_BIAS=b is not None, CLAMP=clamp >= 0, BACKWARD=dy is not None,
        INT64=n >= 2**31, BLOCK=BLOCK, num_warps=8)
    return out
