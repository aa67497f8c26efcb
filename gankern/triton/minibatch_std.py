"""minibatch_std in Triton: the passes of csrc/minibatch_std/minibatch_std.h, fp32 math.

Forward: one program per (group, slice) reduces the group std over the slice's channels and pixels
(a fixed-order block sum: deterministic), then a copy-and-broadcast pass writes the output.
Backward: one program per (group, slice) sums the statistic channels' gradient, then one pass over
(group, channel, pixel) recomputes the group's moments and writes the G input gradients.
"""
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _moments(x_ptr, offs, mask, G, gstride, eps):
    """Mean and sqrt(var + eps) over the G members at flat offsets offs (member 0) + g * gstride."""
    s = tl.zeros(offs.shape, tl.float32)
    for g in range(0, G):
        s += tl.load(x_ptr + offs + g * gstride, mask=mask, other=0.0).to(tl.float32)
    mu = s / G
    m2 = tl.zeros(offs.shape, tl.float32)
    for g in range(0, G):
        d = tl.load(x_ptr + offs + g * gstride, mask=mask, other=0.0).to(tl.float32) - mu
        m2 += d * d
    return mu, tl.sqrt(m2 / G + eps)


@triton.jit
def _stat_kernel(x_ptr, s_ptr, C, HW, G, F, n, eps, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    j, f = t // F, t % F
    c = C // F
    length = c * HW
    gstride = n * C * HW
    base = (j * C + f * c) * HW  # the slice's channels are consecutive planes
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, length, BLOCK):
        e = start + tl.arange(0, BLOCK)
        mask = e < length
        _, sd = _moments(x_ptr, base + e, mask, G, gstride, eps)
        acc += tl.where(mask, sd, 0.0)
    tl.store(s_ptr + t, tl.sum(acc, axis=0) / length)


@triton.jit
def _output_kernel(x_ptr, s_ptr, out_ptr, total, C, HW, F, n, BLOCK: tl.constexpr):
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = e < total
    plane, q = e // HW, e % HW
    i, ch = plane // (C + F), plane % (C + F)
    is_x = ch < C
    xv = tl.load(x_ptr + (i * C + ch) * HW + q, mask=mask & is_x, other=0.0).to(tl.float32)
    sv = tl.load(s_ptr + (i % n) * F + (ch - C), mask=mask & (ch >= C), other=0.0)
    tl.store(out_ptr + e, tl.where(is_x, xv, sv).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _ds_kernel(dout_ptr, ds_ptr, C, HW, G, F, n, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    j, f = t // F, t % F
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, G * HW, BLOCK):
        e = start + tl.arange(0, BLOCK)
        mask = e < G * HW
        g, q = e // HW, e % HW
        acc += tl.load(dout_ptr + ((g * n + j) * (C + F) + C + f) * HW + q, mask=mask, other=0.0).to(tl.float32)
    tl.store(ds_ptr + t, tl.sum(acc, axis=0) / ((C // F) * HW))


@triton.jit
def _dx_kernel(x_ptr, dout_ptr, ds_ptr, dx_ptr, total, C, HW, G, F, n, eps, BLOCK: tl.constexpr):
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = e < total
    q, plane = e % HW, e // HW
    j, ch = plane // C, plane % C
    gstride = n * C * HW
    mu, sd = _moments(x_ptr, (j * C + ch) * HW + q, mask, G, gstride, eps)
    scale = tl.load(ds_ptr + j * F + ch // (C // F), mask=mask, other=0.0) / (G * sd)
    for g in range(0, G):
        i = g * n + j
        xv = tl.load(x_ptr + (i * C + ch) * HW + q, mask=mask, other=0.0).to(tl.float32)
        gv = tl.load(dout_ptr + (i * (C + F) + ch) * HW + q, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + (i * C + ch) * HW + q, (gv + scale * (xv - mu)).to(dx_ptr.dtype.element_ty), mask=mask)


def forward(x, s, out, N, C, HW, G, F, eps):
    n = N // G
    _stat_kernel[(n * F,)](x, s, C, HW, G, F, n, eps, BLOCK=BLOCK)
    total = out.numel()
    _output_kernel[(triton.cdiv(total, BLOCK),)](x, s, out, total, C, HW, F, n, BLOCK=BLOCK)


def backward(x, dout, ds, dx, N, C, HW, G, F, eps):
    n = N // G
    _ds_kernel[(n * F,)](dout, ds, C, HW, G, F, n, BLOCK=BLOCK)
    total = n * C * HW
    _dx_kernel[(triton.cdiv(total, BLOCK),)](x, dout, ds, dx, total, C, HW, G, F, n, eps, BLOCK=BLOCK)
