"""filtered_lrelu in Triton: one kernel for both modes of csrc/filtered_lrelu/filtered_lrelu.h
(mode 0: bias + activation, writing the mask; mode 1: the mask factor), any factors and filters.

Each program computes a BLOCK_Y x BLOCK_X tile of one plane. For every tap j of the stage-B filter
it evaluates the intermediate samples m = o*down + j - pB by stage A's polyphase sum over x
(ceil(kA/up) taps per axis), applies the pointwise step, and accumulates. Triton has no
addressable shared memory, so the intermediate is recomputed per B tap instead of staged on chip:
kB^2 * ceil(kA/up)^2 multiply-adds per output. The CUDA kernel stages it in shared memory
(kB^2 + (kA/up)^2 * down^2 per output); which one is faster on a GPU is unmeasured.
"""
import triton
import triton.language as tl

BLOCK_Y = 8
BLOCK_X = 32


@triton.jit
def _kernel(x_ptr, b_ptr, mask_ptr, ga_ptr, gb_ptr, y_ptr, C, H, W, TH, TW, OH, OW,
            upx, upy, pax, pay, kax, kay, downx, downy, pbx, pby, kbx, kby, gain, slope, clamp,
            MODE: tl.constexpr, HAS_BIAS: tl.constexpr, CLAMP: tl.constexpr,
            TAPS_X: tl.constexpr, TAPS_Y: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)
    tiles_x = tl.cdiv(OW, BLOCK_X)
    pid = tl.program_id(1)
    oy = (pid // tiles_x) * BLOCK_Y + tl.arange(0, BLOCK_Y)
    ox = (pid % tiles_x) * BLOCK_X + tl.arange(0, BLOCK_X)
    x_base = x_ptr + plane * H * W
    m_base = mask_ptr + plane * TH * TW
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(b_ptr + plane % C)
    acc = tl.zeros((BLOCK_Y, BLOCK_X), dtype=tl.float32)
    for jy in range(kby):
        my = oy * downy + jy - pby
        ok_my = (my >= 0) & (my < TH)
        ty = my - pay
        k0y = ((-ty) % upy + upy) % upy
        iy0 = (ty + k0y) // upy
        for jx in range(kbx):
            mx = ox * downx + jx - pbx
            ok_m = ok_my[:, None] & ((mx >= 0) & (mx < TW))[None, :]
            tx = mx - pax
            k0x = ((-tx) % upx + upx) % upx
            ix0 = (tx + k0x) // upx
            t = tl.zeros((BLOCK_Y, BLOCK_X), dtype=tl.float32)
            for a in tl.static_range(TAPS_Y):
                ky = k0y + a * upy
                iy = iy0 + a
                ok_y = (ky < kay) & (iy >= 0) & (iy < H)
                for c in tl.static_range(TAPS_X):
                    kx = k0x + c * upx
                    ix = ix0 + c
                    ok = ok_m & ok_y[:, None] & ((kx < kax) & (ix >= 0) & (ix < W))[None, :]
                    w = tl.load(ga_ptr + ky[:, None] * kax + kx[None, :], mask=ok, other=0.0)
                    v = tl.load(x_base + iy[:, None] * W + ix[None, :], mask=ok, other=0.0).to(tl.float32)
                    t += w * tl.where(ok, v + bias, 0.0)
            m_off = my[:, None] * TW + mx[None, :]
            if MODE == 0:
                v = tl.where(t > 0, t, t * slope) * gain
                code = tl.where(t > 0, 1, 0)
                if CLAMP:
                    code = tl.where((v >= -clamp) & (v <= clamp), code, 2)
                    v = tl.where(v < -clamp, -clamp, tl.where(v > clamp, clamp, v))
                else:
                    code = tl.where(v == v, code, 2)
                tl.store(m_base + m_off, code.to(tl.uint8), mask=ok_m)
            else:
                code = tl.load(m_base + m_off, mask=ok_m, other=2)
                v = t * tl.where(code == 1, gain, tl.where(code == 0, gain * slope, 0.0))
            v = tl.where(ok_m, v, 0.0)
            acc += tl.load(gb_ptr + jy * kbx + jx) * v
    out = (oy[:, None] < OH) & (ox[None, :] < OW)
    tl.store(y_ptr + plane * OH * OW + oy[:, None] * OW + ox[None, :], acc.to(y_ptr.dtype.element_ty), mask=out)


def launch(x, b, mask, ga, gb, y, N, C, H, W, TH, TW, OH, OW, upx, upy, pax, pay, kax, kay, downx, downy, pbx, pby,
           kbx, kby, mode, gain, slope, clamp):
    """Arguments as gankern.ops.filtered_lrelu._launch gives them (NCHW contiguous tensors)."""
    grid = (N * C, triton.cdiv(OH, BLOCK_Y) * triton.cdiv(OW, BLOCK_X))
    _kernel[grid](x, b if b is not None else ga, mask, ga, gb, y, C, H, W, TH, TW, OH, OW,
                  upx, upy, pax, pay, kax, kay, downx, downy, pbx, pby, kbx, kby,
                  float(gain), float(slope), float(clamp),
                  MODE=mode, HAS_BIAS=b is not None, CLAMP=clamp >= 0,
                  TAPS_X=triton.cdiv(kax, upx), TAPS_Y=triton.cdiv(kay, upy),
                  BLOCK_Y=BLOCK_Y, BLOCK_X=BLOCK_X, num_warps=4)
    return y
