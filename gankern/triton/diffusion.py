"""Diffusion kernels in Triton: the generic fused step (gankern/reference/diffusion.py is the
specification) and the per-sample reductions it needs.

Bytes per step, n = latent elements: reads model_output (n, or 2n with guidance; +n of variance
channels for learned variances), sample (n), history (n, multistep only) and writes prev (n), plus x0
(n) only when asked. Noise is generated in registers (randn_tile), never read from memory. The
per-sample factors (rescale, threshold) are [B] floats that stay in cache.
"""
import triton
import triton.language as tl

from .random import randn_tile

BLOCK = 1024  # a multiple of 4: every block owns whole Philox counters


@triton.jit
def _coef(coef_ptr, i: tl.constexpr, value, FROM_PTR: tl.constexpr):
    if FROM_PTR:
        return tl.load(coef_ptr + i)
    return value


@triton.jit
def _term(c, v):
    """c * v, or exactly 0 when the coefficient is 0 (csrc/diffusion/diffusion.h: term)."""
    return tl.where(c != 0, c * v, 0.0)


@triton.jit
def _step_kernel(mo_ptr, x_ptr, h_ptr, noise_ptr, k_ptr, s_ptr, prev_ptr, x0_ptr, coef_ptr, rng_ptr,
                 n, S, B, mo_stride, seed, offset,
                 g, pre, px, pm, clip, qx, qm, q0, ca, cb, cc, cd, cs, e0, e1,
                 GUIDED: tl.constexpr, CLIP: tl.constexpr, THRESH: tl.constexpr, HIST: tl.constexpr,
                 NOISE: tl.constexpr, VAR: tl.constexpr, RESCALE: tl.constexpr, WRITE_PREV: tl.constexpr,
                 WRITE_X0: tl.constexpr, FROM_PTR: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr):
    # NOISE: 0 none, 1 tensor, 2 Philox.  VAR: 0 constant std, 1 learned_range, 2 learned.
    # FROM_PTR: coefficients (fp32 [16]) and (seed, offset) (int64 [2]) are read from device memory
    # (CUDA-graph replay), else they are the scalar arguments.
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    start = pid * BLOCK
    offs = start + tl.arange(0, BLOCK)
    mask = offs < n
    g = _coef(coef_ptr, 0, g, FROM_PTR)
    pre = _coef(coef_ptr, 1, pre, FROM_PTR)
    px = _coef(coef_ptr, 2, px, FROM_PTR)
    pm = _coef(coef_ptr, 3, pm, FROM_PTR)
    clip = _coef(coef_ptr, 4, clip, FROM_PTR)
    qx = _coef(coef_ptr, 5, qx, FROM_PTR)
    qm = _coef(coef_ptr, 6, qm, FROM_PTR)
    q0 = _coef(coef_ptr, 7, q0, FROM_PTR)
    ca = _coef(coef_ptr, 8, ca, FROM_PTR)
    cb = _coef(coef_ptr, 9, cb, FROM_PTR)
    cc = _coef(coef_ptr, 10, cc, FROM_PTR)
    cd = _coef(coef_ptr, 11, cd, FROM_PTR)
    cs = _coef(coef_ptr, 12, cs, FROM_PTR)
    e0 = _coef(coef_ptr, 13, e0, FROM_PTR)
    e1 = _coef(coef_ptr, 14, e1, FROM_PTR)
    if FROM_PTR:
        seed = tl.load(rng_ptr)
        offset = tl.load(rng_ptr + 1)

    b = offs // S
    r = offs - b * S
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m = tl.load(mo_ptr + b * mo_stride + r, mask=mask, other=0.0).to(tl.float32)
    if GUIDED:
        c = tl.load(mo_ptr + (B + b) * mo_stride + r, mask=mask, other=0.0).to(tl.float32)
        m = m + g * (c - m)
    if RESCALE:
        m = m * tl.load(k_ptr + b, mask=mask, other=1.0)
    if NOISE == 1:
        z = tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    elif NOISE == 2:
        z = randn_tile(seed, offset, start, BLOCK)
    if NOISE != 0:
        x = x + _term(pre, z)
    x0 = _term(px, x) + _term(pm, m)
    if CLIP:  # comparisons keep NaN, as torch.clamp does
        x0 = tl.where(x0 < -clip, -clip, tl.where(x0 > clip, clip, x0))
    if THRESH:
        s = tl.load(s_ptr + b, mask=mask, other=1.0)
        x0 = tl.where(x0 < -s, -s, tl.where(x0 > s, s, x0)) / s
    eps = _term(qx, x) + _term(qm, m) + _term(q0, x0)
    p = _term(ca, x) + _term(cb, x0) + _term(cc, eps)
    if HIST:
        p += _term(cd, tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32))
    if NOISE != 0:
        # variance channels of the conditional (or only) half
        if GUIDED:
            vb = B + b
        else:
            vb = b
        if VAR == 1:
            v = tl.load(mo_ptr + vb * mo_stride + S + r, mask=mask, other=0.0).to(tl.float32)
            std = tl.exp(e0 + e1 * v)
        elif VAR == 2:
            v = tl.load(mo_ptr + vb * mo_stride + S + r, mask=mask, other=0.0).to(tl.float32)
            std = cs * tl.sqrt(v)
        else:
            std = cs
        p += _term(std, z)
    if WRITE_PREV:
        tl.store(prev_ptr + offs, p.to(prev_ptr.dtype.element_ty), mask=mask)
    if WRITE_X0:
        tl.store(x0_ptr + offs, x0.to(x0_ptr.dtype.element_ty), mask=mask)


def step(mo, x, hist, noise, k, s, prev, x0, B, S, mo_stride, flags, seed, offset, coefs, coef_dev=None,
         rng_dev=None):
    """Launch the generic step on contiguous tensors (gankern.ops.diffusion prepares them). prev or
    x0 may be None (not written)."""
    from ..reference import diffusion as R
    n = B * S
    if n == 0:
        return
    noise_kind = 1 if flags & R.NOISE_TENSOR else (2 if flags & R.NOISE_PHILOX else 0)
    var = 1 if flags & R.VAR_LEARNED_RANGE else (2 if flags & R.VAR_LEARNED else 0)
    any_ = x
    grid = (triton.cdiv(n, BLOCK),)
    _step_kernel[grid](
        mo, x, hist if hist is not None else any_, noise if noise is not None else any_,
        k if k is not None else any_, s if s is not None else any_,
        prev if prev is not None else any_, x0 if x0 is not None else any_,
        coef_dev if coef_dev is not None else any_, rng_dev if rng_dev is not None else any_,
        n, S, B, mo_stride, seed, offset, *[float(v) for v in coefs[:15]],
        GUIDED=bool(flags & R.GUIDED), CLIP=bool(flags & R.CLIP), THRESH=bool(flags & R.THRESH),
        HIST=hist is not None, NOISE=noise_kind, VAR=var, RESCALE=bool(flags & R.RESCALE),
        WRITE_PREV=prev is not None, WRITE_X0=x0 is not None, FROM_PTR=coef_dev is not None,
        INT64=max(n, B * mo_stride * 2) >= 2**31, BLOCK=BLOCK, num_warps=4)


@triton.jit
def _rescale_partials_kernel(mo_ptr, out_ptr, S, B, mo_stride, nchunks, g, BLOCK: tl.constexpr):
    # grid (B, nchunks): partial (sum c, sum c^2, sum m, sum m^2) of one chunk of one sample, fp32
    # within the chunk; the chunks are summed in float64 by the caller (deterministic, no atomics).
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1).to(tl.int64)
    r = j * BLOCK + tl.arange(0, BLOCK)
    mask = r < S
    u = tl.load(mo_ptr + b * mo_stride + r, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(mo_ptr + (B + b) * mo_stride + r, mask=mask, other=0.0).to(tl.float32)
    m = u + g * (c - u)
    base = out_ptr + (b * nchunks + j) * 4
    tl.store(base + 0, tl.sum(c, 0))
    tl.store(base + 1, tl.sum(c * c, 0))
    tl.store(base + 2, tl.sum(m, 0))
    tl.store(base + 3, tl.sum(m * m, 0))


def rescale_partials(mo, B, S, mo_stride, g, out):
    """out: fp32 [B, nchunks, 4] with nchunks = cdiv(S, BLOCK)."""
    nchunks = out.shape[1]
    _rescale_partials_kernel[(B, nchunks)](mo, out, S, B, mo_stride, nchunks, float(g), BLOCK=BLOCK, num_warps=4)


@triton.jit
def _lincomb_kernel(x_ptr, y_ptr, m_ptr, a_ptr, c_ptr, k_ptr, out_ptr, n, S, MODE: tl.constexpr,
                    BLOCK: tl.constexpr):
    # MODE 0: out = a_b x + c_b y (q_sample).  MODE 1: out = k_b (m - (a_b x + c_b y)) (loss backward).
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    b = offs // S
    a = tl.load(a_ptr + b, mask=mask, other=0.0)
    c = tl.load(c_ptr + b, mask=mask, other=0.0)
    t = a * tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) + \
        c * tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if MODE == 1:
        k = tl.load(k_ptr + b, mask=mask, other=0.0)
        t = k * (tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32) - t)
    tl.store(out_ptr + offs, t.to(out_ptr.dtype.element_ty), mask=mask)


def lincomb(x, y, a, c, out, B, S, m=None, k=None):
    n = B * S
    if n:
        _lincomb_kernel[(triton.cdiv(n, BLOCK),)](x, y, m if m is not None else x, a, c, k if k is not None else a,
                                                 out, n, S, MODE=0 if m is None else 1, BLOCK=BLOCK, num_warps=4)
    return out


@triton.jit
def _loss_partials_kernel(mo_ptr, x_ptr, y_ptr, a_ptr, c_ptr, out_ptr, S, nchunks, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1).to(tl.int64)
    r = j * BLOCK + tl.arange(0, BLOCK)
    mask = r < S
    i = b * S + r
    a = tl.load(a_ptr + b)
    c = tl.load(c_ptr + b)
    d = tl.load(mo_ptr + i, mask=mask, other=0.0).to(tl.float32) - (
        a * tl.load(x_ptr + i, mask=mask, other=0.0).to(tl.float32) +
        c * tl.load(y_ptr + i, mask=mask, other=0.0).to(tl.float32))
    tl.store(out_ptr + b * nchunks + j, tl.sum(d * d, 0))


def loss_partials(mo, x0, noise, tx, tn, out, B, S):
    """out: fp32 [B, nchunks] partial sums of squared residuals."""
    nchunks = out.shape[1]
    _loss_partials_kernel[(B, nchunks)](mo, x0, noise, tx, tn, out, S, nchunks, BLOCK=BLOCK, num_warps=4)
