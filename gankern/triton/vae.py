"""VAE reparameterization and KL in Triton: one pass, eps made in registers, fp32 math.

Bytes: forward reads mu and logvar and writes z (and the elementwise KL for reduction="none");
the KL reduction writes one fp32 partial per program, summed afterwards in a fixed order (no
atomics, so results are deterministic). Backward reads dz, mu, logvar and writes dlogvar (and dmu
when the KL term is present; otherwise dmu is dz). Each program owns BLOCK consecutive elements,
a multiple of 4, as [BLOCK/4, 4] tiles: a thread owns whole counters (one Philox per counter,
16-byte vector loads and stores of fp32 rows) and eps never leaves its registers.
"""
import triton
import triton.language as tl

from .random import randn_tile2d, tile2d_offsets

BLOCK = 1024


def partial_count(n: int) -> int:
    return triton.cdiv(n, BLOCK)


@triton.jit
def _addresses(start, offs, inner, mu_rs, lv_rs, ROWS: tl.constexpr, ROW4: tl.constexpr):
    # Row-strided inputs (channel chunks of one tensor): element i is at row * rs + col. With rows
    # of a multiple of 4 elements (ROW4), a counter's 4 elements share a row: one division per
    # counter instead of per element, and the 4 addresses stay contiguous (vector loads).
    if ROWS:
        if ROW4:
            base = start + 4 * tl.arange(0, offs.shape[0]).to(tl.int64)
            r = base // inner
            c = base - r * inner
            j = tl.arange(0, 4)[None, :]
            return (r * mu_rs + c)[:, None] + j, (r * lv_rs + c)[:, None] + j
        else:
            r = offs // inner
            c = offs - r * inner
            return r * mu_rs + c, r * lv_rs + c
    else:
        return offs, offs


@triton.jit
def _clamp(raw, lo, hi):
    return tl.where(raw < lo, lo, tl.where(raw > hi, hi, raw))  # NaN passes, as torch.clamp


# seed and offset change every call: no value specialization (one compiled kernel for all).
@triton.jit(do_not_specialize=["seed", "offset"])
def _forward_kernel(mu_ptr, lv_ptr, z_ptr, kl_ptr, part_ptr, n, inner, mu_rs, lv_rs, seed, offset, lo, hi,
                    WANT_Z: tl.constexpr, WANT_KL: tl.constexpr, WANT_SUM: tl.constexpr, ROWS: tl.constexpr,
                    ROW4: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    start = pid.to(tl.int64) * BLOCK
    offs = tile2d_offsets(start, BLOCK // 4)
    mask = offs < n
    mo, lvo = _addresses(start, offs, inner, mu_rs, lv_rs, ROWS, ROW4)
    m = tl.load(mu_ptr + mo, mask=mask, other=0.0).to(tl.float32)
    v = _clamp(tl.load(lv_ptr + lvo, mask=mask, other=0.0).to(tl.float32), lo, hi)
    s = tl.exp(0.5 * v)
    if WANT_Z:
        eps = randn_tile2d(seed, offset, start, BLOCK // 4)
        tl.store(z_ptr + offs, (m + s * eps).to(z_ptr.dtype.element_ty), mask=mask)
    if WANT_KL or WANT_SUM:
        t = 0.5 * (m * m + s * s - 1.0 - v)
        if WANT_KL:
            tl.store(kl_ptr + offs, t.to(kl_ptr.dtype.element_ty), mask=mask)
        if WANT_SUM:
            tl.store(part_ptr + pid, tl.sum(tl.sum(tl.where(mask, t, 0.0), axis=1), axis=0).to(tl.float64))


@triton.jit(do_not_specialize=["seed", "offset"])
def _backward_kernel(dz_ptr, g_ptr, gscale, mu_ptr, lv_ptr, dmu_ptr, dlv_ptr, n, inner, mu_rs, lv_rs, seed, offset,
                     lo, hi, HAS_DZ: tl.constexpr, HAS_G: tl.constexpr, G_ELEM: tl.constexpr, ROWS: tl.constexpr,
                     ROW4: tl.constexpr, BLOCK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = tile2d_offsets(start, BLOCK // 4)
    mask = offs < n
    mo, lvo = _addresses(start, offs, inner, mu_rs, lv_rs, ROWS, ROW4)
    raw = tl.load(lv_ptr + lvo, mask=mask, other=0.0).to(tl.float32)
    v = _clamp(raw, lo, hi)
    s = tl.exp(0.5 * v)
    gm = tl.zeros([BLOCK // 4, 4], dtype=tl.float32)
    gv = tl.zeros([BLOCK // 4, 4], dtype=tl.float32)
    if HAS_G:
        if G_ELEM:
            g = gscale * tl.load(g_ptr + offs, mask=mask, other=0.0)
        else:
            g = gscale * tl.load(g_ptr)  # a reduced KL's gradient, read on the device
        gm += g * tl.load(mu_ptr + mo, mask=mask, other=0.0).to(tl.float32)
        gv += g * 0.5 * (s * s - 1.0)
    if HAS_DZ:
        d = tl.load(dz_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gm += d
        gv += d * randn_tile2d(seed, offset, start, BLOCK // 4) * 0.5 * s
    if HAS_G:
        tl.store(dmu_ptr + offs, gm.to(dmu_ptr.dtype.element_ty), mask=mask)
    gv = tl.where((raw >= lo) & (raw <= hi), gv, 0.0)  # torch.clamp's inclusive pass-through
    tl.store(dlv_ptr + offs, gv.to(dlv_ptr.dtype.element_ty), mask=mask)


def _row4(layout) -> bool:
    rows, inner, mu_rs, lv_rs = layout
    return inner % 4 == 0 and mu_rs % 4 == 0 and lv_rs % 4 == 0


def forward(mu, lv, z, kl, partials, layout, seed, offset, lo, hi):
    """Kernel launch for gankern.ops.vae: layout = (rows, inner, mu row stride, lv row stride)."""
    n = mu.numel()
    if n == 0:
        if partials is not None:
            partials.zero_()
        return
    rows, inner, mu_rs, lv_rs = layout
    _forward_kernel[(partial_count(n),)](
        mu, lv, z if z is not None else mu, kl if kl is not None else mu, partials if partials is not None else mu,
        n, inner, mu_rs, lv_rs, seed, offset, float(lo), float(hi),
        WANT_Z=z is not None, WANT_KL=kl is not None, WANT_SUM=partials is not None, ROWS=rows > 1,
        ROW4=_row4(layout), BLOCK=BLOCK, num_warps=4)


def backward(dz, g, g_elementwise, gscale, mu, lv, dmu, dlv, layout, seed, offset, lo, hi):
    n = mu.numel()
    if n == 0:
        return
    rows, inner, mu_rs, lv_rs = layout
    _backward_kernel[(partial_count(n),)](
        dz if dz is not None else mu, g if g is not None else mu, float(gscale), mu, lv,
        dmu if dmu is not None else dlv, dlv, n, inner, mu_rs, lv_rs, seed, offset, float(lo), float(hi),
        HAS_DZ=dz is not None, HAS_G=g is not None, G_ELEM=g_elementwise, ROWS=rows > 1, ROW4=_row4(layout),
        BLOCK=BLOCK, num_warps=4)
