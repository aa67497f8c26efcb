"""Normalization passes in Triton (the four passes of csrc/norm/norm.h), fp32 math and statistics.

Layout: x is (N, C, HW) seen through strides (sN, sC, sHW): NCHW (C*HW, HW, 1) or channels_last
(HW*C, 1, C). The reductions tile [BC channels, BHW positions] with the contiguous axis innermost,
so loads coalesce in either layout.

Bytes: stats reads x once; apply reads x and writes y (plus residual); backward reads dy and x
twice and writes dx. Coefficient tables are O(N*C) fp32 and stay in L2.

Split reduction: a (sample, channel block) can be split into S chunks of positions so a batch-1
VAE decode (N*C/BC programs) still fills the GPU; each program writes (mean, m2) of its chunk,
merged with Chan's formula on the host side in float64 (tiny: S*N*C values).
"""
import functools

import triton
import triton.language as tl

from .activations import act_derivative, act_forward

APPLY_BLOCK = 2048
# Programs a reduction aims for off-GPU (the interpreter runs them one by one; tests raise it to
# exercise the split path).
INTERPRETER_PROGRAMS = 1


@triton.jit
def _stats_kernel(x_ptr, shift_ptr, mean_ptr, m2_ptr, N, C, HW, chunk, sN, sC, sHW, n_cblocks,
                  BC: tl.constexpr, BHW: tl.constexpr, INT64: tl.constexpr):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    n = pid // n_cblocks
    c = (pid % n_cblocks) * BC + tl.arange(0, BC)
    cmask = c < C
    base = n * sN
    if INT64:
        base = base.to(tl.int64)
    hw0 = split * chunk
    hw_end = tl.minimum(hw0 + chunk, HW)
    # Moments of x - k, k = the chunk's first value per channel: the running mean then stays of
    # the order of the std, so its fp32 rounding does not grow with |mean| / std.
    k = tl.load(x_ptr + base + c * sC + hw0 * sHW, mask=cmask, other=0.0).to(tl.float32)
    cnt = tl.zeros([BC], tl.float32)
    mean = tl.zeros([BC], tl.float32)
    m2 = tl.zeros([BC], tl.float32)
    for start in range(hw0, hw_end, BHW):
        hw = start + tl.arange(0, BHW)
        m = cmask[:, None] & (hw < hw_end)[None, :]
        offs = base + c[:, None] * sC + hw[None, :] * sHW
        xv = tl.where(m, tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32) - k[:, None], 0.0)
        # Tile moments, then Chan's merge: exact tile mean first keeps m2 free of cancellation.
        tcnt = tl.minimum(hw_end - start, BHW).to(tl.float32)
        tmean = tl.sum(xv, axis=1) / tcnt
        d = tl.where(m, xv - tmean[:, None], 0.0)
        tm2 = tl.sum(d * d, axis=1)
        tot = cnt + tcnt
        delta = tmean - mean
        mean += delta * (tcnt / tot)
        m2 += tm2 + delta * delta * (cnt * tcnt / tot)
        cnt = tot
    out = (split * N + n) * C + c
    tl.store(shift_ptr + out, k, mask=cmask)
    tl.store(mean_ptr + out, mean, mask=cmask)
    tl.store(m2_ptr + out, m2, mask=cmask)


@triton.jit
def _group_coefficients(mean_hi, mean_lo, rstd, weight, bias, scale, shift):
    """GroupNorm folded per channel, h = (x - M) * A + B (the Triton copy of
    gankern/reference/norm.py group_coefficients and csrc/norm/norm.h group_coefficients). The
    group's mean minus temb comes as the sum mean_hi + mean_lo, formed last to keep its precision."""
    sc1 = 1.0 + scale
    return mean_hi + mean_lo, rstd * weight * sc1, bias * sc1 + shift


@triton.jit
def _gn_finalize_kernel(k_ptr, mean_ptr, m2_ptr, chunk, S, N, C, G, Cg, HW, eps, w_ptr, b_ptr, t_ptr, sc_ptr,
                        sh_ptr, M_ptr, A_ptr, B_ptr, gmean_ptr, grstd_ptr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                        HAS_T: tl.constexpr, HAS_SC: tl.constexpr, HAS_SH: tl.constexpr, BCG: tl.constexpr):
    """One program per (n, group): merge the split partials of its channels (Chan), then the
    channels into the group, and write the M, A, B tables and mean/rstd. Replaces ~20 small torch
    launches, which cost more than the passes themselves at GPU speed. Moments stay relative to
    the first channel's shift, so fp32 keeps the precision of the shifted partials."""
    pid = tl.program_id(0)
    n = pid // G
    g = pid % G
    j = tl.arange(0, BCG)
    cm = j < Cg
    nc = n * C + g * Cg + j
    NC = N * C
    k0 = tl.load(k_ptr + nc, mask=cm, other=0.0)  # split 0's shift per channel
    kref = tl.sum(tl.where(j == 0, k0, 0.0), axis=0)
    cnt = tl.zeros([BCG], tl.float32)
    mean = tl.zeros([BCG], tl.float32)  # relative to kref
    m2 = tl.zeros([BCG], tl.float32)
    for s in range(S):
        cs = tl.minimum(HW - s * chunk, chunk).to(tl.float32)  # positions in split s
        ms = (tl.load(k_ptr + s * NC + nc, mask=cm, other=0.0) - kref) + tl.load(mean_ptr + s * NC + nc, mask=cm,
                                                                                  other=0.0)
        m2s = tl.load(m2_ptr + s * NC + nc, mask=cm, other=0.0)
        tot = cnt + cs
        delta = ms - mean
        mean += delta * (cs / tot)
        m2 += m2s + delta * delta * (cnt * cs / tot)
        cnt = tot
    if HAS_T:
        te = tl.load(t_ptr + nc, mask=cm, other=0.0)
        mean += te
    gm = tl.sum(tl.where(cm, mean, 0.0), axis=0) / Cg
    d = tl.where(cm, mean - gm, 0.0)
    gm2 = tl.sum(tl.where(cm, m2, 0.0), axis=0) + HW * tl.sum(d * d, axis=0)
    rstd = 1.0 / tl.sqrt(gm2 / (Cg * HW) + eps)
    tl.store(gmean_ptr + pid, kref + gm)
    tl.store(grstd_ptr + pid, rstd)
    c = g * Cg + j
    # the group's mean is kref + gm; with temb, M = mean - temb is formed as (kref - temb) + gm
    te_or0 = tl.zeros([BCG], tl.float32)
    w = tl.full([BCG], 1.0, tl.float32)
    bb = tl.zeros([BCG], tl.float32)
    sc = tl.zeros([BCG], tl.float32)
    sh = tl.zeros([BCG], tl.float32)
    if HAS_T:
        te_or0 = te
    if HAS_W:
        w = tl.load(w_ptr + c, mask=cm, other=0.0)
    if HAS_B:
        bb = tl.load(b_ptr + c, mask=cm, other=0.0)
    if HAS_SC:
        sc = tl.load(sc_ptr + nc, mask=cm, other=0.0)
    if HAS_SH:
        sh = tl.load(sh_ptr + nc, mask=cm, other=0.0)
    mm, a, bb = _group_coefficients(kref - te_or0, gm, rstd, w, bb, sc, sh)
    tl.store(M_ptr + nc, mm, mask=cm)
    tl.store(A_ptr + nc, a, mask=cm)
    tl.store(B_ptr + nc, bb, mask=cm)


@triton.jit
def _bwd_reduce_kernel(dy_ptr, x_ptr, M_ptr, A_ptr, B_ptr, P_ptr, sums_ptr, N, C, HW, chunk, sN, sC, sHW,
                       n_cblocks, alpha, ACT: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
                       INT64: tl.constexpr):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    n = pid // n_cblocks
    c = (pid % n_cblocks) * BC + tl.arange(0, BC)
    cmask = c < C
    nc = n * C + c
    mm = tl.load(M_ptr + nc, mask=cmask, other=0.0)[:, None]
    a = tl.load(A_ptr + nc, mask=cmask, other=0.0)[:, None]
    b = tl.load(B_ptr + nc, mask=cmask, other=0.0)[:, None]
    p = tl.load(P_ptr + nc, mask=cmask, other=0.0)[:, None]
    base = n * sN
    if INT64:
        base = base.to(tl.int64)
    hw0 = split * chunk
    hw_end = tl.minimum(hw0 + chunk, HW)
    s0 = tl.zeros([BC], tl.float32)
    s1 = tl.zeros([BC], tl.float32)
    s2 = tl.zeros([BC], tl.float32)
    for start in range(hw0, hw_end, BHW):
        hw = start + tl.arange(0, BHW)
        m = cmask[:, None] & (hw < hw_end)[None, :]
        offs = base + c[:, None] * sC + hw[None, :] * sHW
        u = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32) - mm
        g = tl.load(dy_ptr + offs, mask=m, other=0.0).to(tl.float32) * act_derivative(u * a + b, alpha, ACT)
        xh = tl.where(m, u * p, 0.0)
        g = tl.where(m, g, 0.0)
        s0 += tl.sum(g, axis=1)
        s1 += tl.sum(g * xh, axis=1)
        s2 += tl.sum(xh, axis=1)
    out = ((split * 3) * N + n) * C + c
    stride = N * C
    tl.store(sums_ptr + out, s0, mask=cmask)
    tl.store(sums_ptr + out + stride, s1, mask=cmask)
    tl.store(sums_ptr + out + 2 * stride, s2, mask=cmask)


@triton.jit
def _pointwise_kernel(dy_ptr, x_ptr, res_ptr, out_ptr, M_ptr, A_ptr, B_ptr, A2_ptr, B2_ptr, C2_ptr, numel, C, HW,
                      alpha, ACT: tl.constexpr, CL: tl.constexpr, BACKWARD: tl.constexpr, RES: tl.constexpr,
                      INT64: tl.constexpr, BLOCK: tl.constexpr):
    """Forward: out = act((x - M) * A + B) (+ res). Backward: out = g * A2 + (x - M) * B2 + C2 with
    g = dy * act'((x - M) * A + B). Flat over dense memory; the (n, c) table index from the layout."""
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    if CL:
        nc = (offs // (HW * C)) * C + offs % C
    else:
        nc = offs // HW
    u = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) - tl.load(M_ptr + nc, mask=mask, other=0.0)
    h = u * tl.load(A_ptr + nc, mask=mask, other=0.0) + tl.load(B_ptr + nc, mask=mask, other=0.0)
    if BACKWARD:
        g = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32) * act_derivative(h, alpha, ACT)
        out = (g * tl.load(A2_ptr + nc, mask=mask, other=0.0) + u * tl.load(B2_ptr + nc, mask=mask, other=0.0)
               + tl.load(C2_ptr + nc, mask=mask, other=0.0))
    else:
        out = act_forward(h, alpha, ACT)
        if RES:
            out += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def _strides(N, C, HW, cl):
    return (HW * C, 1, C) if cl else (C * HW, HW, 1)


@functools.lru_cache(maxsize=None)
def _multiprocessors(index):
    """SMs of the GPU (index None: the current one, as torch reads it); cached: the query costs
    host time on every launch."""
    import torch
    return torch.cuda.get_device_properties(torch.cuda.current_device() if index is None else index
                                            ).multi_processor_count


def _tiling(N, C, HW, cl, device):
    """(BC, BHW, n_cblocks, splits, chunk): enough programs to fill the device, chunks of whole tiles."""
    if cl:
        BC = min(64, triton.next_power_of_2(max(C, 1)))
        BHW = 32
    else:
        BC = 4
        BHW = min(512, triton.next_power_of_2(max(HW, 1)))
    n_cblocks = triton.cdiv(C, BC)
    if device.type == "cuda":
        want = 4 * _multiprocessors(device.index)
    else:
        want = INTERPRETER_PROGRAMS
    tiles = triton.cdiv(HW, BHW)
    splits = max(1, min(tiles, triton.cdiv(want, max(N * n_cblocks, 1))))
    chunk = triton.cdiv(tiles, splits) * BHW
    splits = triton.cdiv(HW, chunk)
    return BC, BHW, n_cblocks, splits, chunk


def channel_stats(x, N, C, HW, cl):
    """Per-split, per-(n, c) moments as one (3, S, N, C) fp32 tensor: shift k, mean of x - k, m2;
    and the positions per split, `chunk` (the last split may hold fewer). The caller adds k to the
    mean in float64 (one tensor: one cast)."""
    import torch
    BC, BHW, ncb, S, chunk = _tiling(N, C, HW, cl, x.device)
    part = torch.empty((3, S, N, C), dtype=torch.float32, device=x.device)
    if N * C > 0:
        _stats_kernel[(N * ncb, S)](x, part[0], part[1], part[2], N, C, HW, chunk, *_strides(N, C, HW, cl), ncb,
                                    BC=BC, BHW=BHW, INT64=x.numel() >= 2**31, num_warps=4)
    return part, chunk


def group_norm_tables(x, G, eps, w, b, temb, scale, shift, N, C, HW, cl):
    """Statistics and GroupNorm tables in two launches: (tables (3, N, C) = M, A, B; mean (N, G);
    rstd (N, G)), all fp32. Per-(n, c) extras are fp32 (N, C), weight/bias fp32 (C,)."""
    import torch
    part, chunk = channel_stats(x, N, C, HW, cl)
    k, mean_s, m2_s = part.unbind(0)
    tables = torch.empty((3, N, C), dtype=torch.float32, device=x.device)
    gmean = torch.empty((N, G), dtype=torch.float32, device=x.device)
    grstd = torch.empty_like(gmean)
    if N * G > 0:
        dummy = tables
        _gn_finalize_kernel[(N * G,)](
            k, mean_s, m2_s, chunk, k.shape[0], N, C, G, C // G, HW, float(eps),
            *[t if t is not None else dummy for t in (w, b, temb, scale, shift)], tables[0], tables[1], tables[2],
            gmean, grstd, HAS_W=w is not None, HAS_B=b is not None, HAS_T=temb is not None,
            HAS_SC=scale is not None, HAS_SH=shift is not None, BCG=triton.next_power_of_2(C // G), num_warps=1)
    return tables, gmean, grstd


def backward_reduce(dy, x, M, A, B, P, N, C, HW, cl, act_code, alpha):
    """(3, N, C) fp32 sums of g, g * xhat, xhat (splits already added)."""
    import torch
    BC, BHW, ncb, S, chunk = _tiling(N, C, HW, cl, x.device)
    sums = torch.empty((S, 3, N, C), dtype=torch.float32, device=x.device)
    if N * C > 0:
        _bwd_reduce_kernel[(N * ncb, S)](dy, x, M, A, B, P, sums, N, C, HW, chunk, *_strides(N, C, HW, cl), ncb,
                                         float(alpha), ACT=act_code, BC=BC, BHW=BHW, INT64=x.numel() >= 2**31,
                                         num_warps=4)
    return sums.sum(0)


def pointwise(dy, x, res, out, M, A, B, A2, B2, C2, C, HW, cl, act_code, alpha):
    n = x.numel()
    if n == 0:
        return out
    grid = (triton.cdiv(n, APPLY_BLOCK),)
    _pointwise_kernel[grid](dy if dy is not None else x, x, res if res is not None else x, out, M, A, B,
                            A2 if A2 is not None else M, B2 if B2 is not None else M, C2 if C2 is not None else M,
                            n, C, HW, float(alpha), ACT=act_code, CL=cl, BACKWARD=dy is not None,
                            RES=res is not None, INT64=n >= 2**31, BLOCK=APPLY_BLOCK, num_warps=8)
    return out
