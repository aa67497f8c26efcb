"""modulated_conv's two passes in Triton (csrc/modulated_conv/modulated_conv.h states them).

modulate: one program per (sample, output channel): the sum of squares of the modulated row in
BLOCK chunks, then the row written once (fp32). epilogue: one pass over y, fp32 math, storage dtype
in and out; indexing in int64 when y has 2^31 elements or more.
"""
import triton
import triton.language as tl

from .._tables import real
from .activations import act_forward

BLOCK = 1024
# A global a kernel reads must be a tl.constexpr object: compiled Triton rejects anything else
# (an annotation is not enough), though the interpreter accepts it.
DEMOD_EPS = tl.constexpr(real("DEMOD_EPS"))


@triton.jit
def _modulate_kernel(w_ptr, s_ptr, wmod_ptr, d_ptr, O, I, K, DEMOD: tl.constexpr, HAS_W: tl.constexpr,
                     HAS_D: tl.constexpr, BLOCK: tl.constexpr):
    no = tl.program_id(0).to(tl.int64)
    n = no // O
    o = no - n * O
    IK = I * K
    d = 1.0
    if DEMOD:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for j0 in range(0, IK, BLOCK):
            j = j0 + tl.arange(0, BLOCK)
            m = j < IK
            v = tl.load(w_ptr + o * IK + j, mask=m, other=0.0) * tl.load(s_ptr + n * I + j // K, mask=m, other=0.0)
            acc += v * v
        d = 1.0 / tl.sqrt(tl.sum(acc, axis=0) + DEMOD_EPS)
        if HAS_D:
            tl.store(d_ptr + no, d)
    if HAS_W:
        for j0 in range(0, IK, BLOCK):
            j = j0 + tl.arange(0, BLOCK)
            m = j < IK
            v = tl.load(w_ptr + o * IK + j, mask=m, other=0.0) * (tl.load(s_ptr + n * I + j // K, mask=m, other=0.0) * d)
            tl.store(wmod_ptr + no * IK + j, v, mask=m)


def modulate(w, s, wmod, d, demodulate):
    """w fp32 [O, I, kh, kw], s fp32 [N, I] (contiguous); writes wmod [N, O, I, kh, kw] and/or d [N, O]."""
    O, I, kh, kw = w.shape
    N = s.shape[0]
    _modulate_kernel[(N * O,)](w, s, wmod if wmod is not None else w, d if d is not None else w, O, I, kh * kw,
                               DEMOD=demodulate, HAS_W=wmod is not None, HAS_D=d is not None, BLOCK=BLOCK,
                               num_warps=4)


@triton.jit
def _epilogue_kernel(y_ptr, out_ptr, sc_ptr, noise_ptr, b_ptr, n_el, C, HW, snn, snc, alpha, gain, clamp,
                     ACT: tl.constexpr, CHANNELS_LAST: tl.constexpr, HAS_SCALE: tl.constexpr,
                     HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, CLAMP: tl.constexpr, INT64: tl.constexpr,
                     BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    i = pid * BLOCK + tl.arange(0, BLOCK)
    m = i < n_el
    if CHANNELS_LAST:
        r = i // C
        c = i - r * C
        n = r // HW
        px = r - n * HW
    else:
        nc = i // HW
        px = i - nc * HW
        n = nc // C
        c = nc - n * C
    z = tl.load(y_ptr + i, mask=m, other=0.0).to(tl.float32)
    if HAS_SCALE:
        z = z * tl.load(sc_ptr + n * C + c, mask=m, other=0.0)
    if HAS_NOISE:
        z = z + tl.load(noise_ptr + n * snn + c * snc + px, mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z = z + tl.load(b_ptr + c, mask=m, other=0.0)
    out = act_forward(z, alpha, ACT) * gain
    if CLAMP:  # comparisons keep NaN, as torch.clamp does
        out = tl.where(out < -clamp, -clamp, tl.where(out > clamp, clamp, out))
    tl.store(out_ptr + i, out.to(out_ptr.dtype.element_ty), mask=m)


def epilogue(y, out, sc, noise, b, snn, snc, channels_last, act, alpha, gain, clamp):
    """out = clamp(act(y * sc[n, c] + noise + b[c]) * gain); operands as
    gankern.ops.modulated_conv._epilogue_operands gives them."""
    n_el = y.numel()
    N, C, H, W = y.shape
    _epilogue_kernel[(triton.cdiv(n_el, BLOCK),)](
        y, out, sc if sc is not None else y, noise if noise is not None else y, b if b is not None else y, n_el, C,
        H * W, snn, snc, float(alpha), float(gain), float(clamp), ACT=act, CHANNELS_LAST=channels_last,
        HAS_SCALE=sc is not None, HAS_NOISE=noise is not None, HAS_BIAS=b is not None, CLAMP=clamp >= 0,
        INT64=n_el >= 2**31, BLOCK=BLOCK, num_warps=8)
