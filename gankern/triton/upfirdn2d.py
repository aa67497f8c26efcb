"""upfirdn2d in Triton: one kernel for every up/down factor, padding and filter size.

Each program computes a BLOCK_Y x BLOCK_X tile of one (n, c) plane. Output sample o (per axis)
is the polyphase sum  y[o] = sum_t g[k0 + t*up] * x[i0 + t],  where k0 = (p0 - o*down) mod up is
the first filter tap that lands on a real (not inserted-zero) input sample and
i0 = (o*down + k0 - p0) / up that sample: ceil(k / up) taps per axis instead of k, and no
zero-inserted or padded intermediate. Taps outside the image read as zero (masked loads).
Strides are arguments, so NCHW and channels_last run the same code; math in fp32.

Bytes: reads x (once from DRAM; the tap overlap is served by cache) and writes y.
"""
import triton
import triton.language as tl

BLOCK_Y = 16
BLOCK_X = 32


@triton.jit
def _upfirdn2d_kernel(x_ptr, g_ptr, y_ptr, C, H, W, OH, OW,
                      sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                      upx, upy, downx, downy, px0, py0, kw, kh,
                      TAPS_X: tl.constexpr, TAPS_Y: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):
    tiles_x = tl.cdiv(OW, BLOCK_X)
    plane = tl.program_id(0).to(tl.int64)  # planes on axis 0: up to 2^31 of them
    pid = tl.program_id(1)
    n = plane // C
    c = plane % C
    oy = (pid // tiles_x) * BLOCK_Y + tl.arange(0, BLOCK_Y)
    ox = (pid % tiles_x) * BLOCK_X + tl.arange(0, BLOCK_X)
    # first real tap and its input sample, per output row / column
    ty = oy * downy - py0
    tx = ox * downx - px0
    k0y = ((-ty) % upy + upy) % upy
    k0x = ((-tx) % upx + upx) % upx
    iy0 = (ty + k0y) // upy  # exact: ty + k0y is a multiple of upy
    ix0 = (tx + k0x) // upx
    x_base = x_ptr + n * sxn + c * sxc
    acc = tl.zeros((BLOCK_Y, BLOCK_X), dtype=tl.float32)
    for t in tl.static_range(TAPS_Y):
        ky = k0y + t * upy
        iy = iy0 + t
        ok_y = (ky < kh) & (iy >= 0) & (iy < H)
        for s in tl.static_range(TAPS_X):
            kx = k0x + s * upx
            ix = ix0 + s
            ok_x = (kx < kw) & (ix >= 0) & (ix < W)
            ok = ok_y[:, None] & ok_x[None, :]
            w = tl.load(g_ptr + ky[:, None] * kw + kx[None, :], mask=ok, other=0.0)
            v = tl.load(x_base + iy[:, None].to(tl.int64) * sxh + ix[None, :].to(tl.int64) * sxw, mask=ok, other=0.0)
            acc += w * v.to(tl.float32)
    out = (oy[:, None] < OH) & (ox[None, :] < OW)
    y_off = n * syn + c * syc + oy[:, None].to(tl.int64) * syh + ox[None, :].to(tl.int64) * syw
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=out)


def launch(x, g, y, N, C, H, W, OH, OW, sxn, sxc, sxh, sxw, syn, syc, syh, syw,
           upx, upy, downx, downy, px0, py0, kw, kh, channels_last):
    """y = upfirdn2d(x) with the fp32 correlation kernel g [kh, kw]; arguments as
    gankern.ops.upfirdn2d._geometry gives them (the layout is in the strides)."""
    grid = (N * C, triton.cdiv(OH, BLOCK_Y) * triton.cdiv(OW, BLOCK_X))
    _upfirdn2d_kernel[grid](x, g, y, C, H, W, OH, OW, sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                            upx, upy, downx, downy, px0, py0, kw, kh,
                            TAPS_X=triton.cdiv(kw, upx), TAPS_Y=triton.cdiv(kh, upy),
                            BLOCK_Y=BLOCK_Y, BLOCK_X=BLOCK_X, num_warps=4)
    return y
