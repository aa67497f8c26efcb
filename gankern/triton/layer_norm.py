"""layer_norm in Triton: one program per row (token), the row held in registers; fp32 math.

Forward reads x (and the residual) once and writes y (and h = x + residual). Backward recomputes
the normalized row from h and (mean, rstd), writes dx, and accumulates dy * xhat and dy over the
rows of its program into one partial row per program for the weight and bias gradients.
"""
import torch
import triton
import triton.language as tl

ROWS_PER_PROGRAM = 16


@triton.jit
def _forward_kernel(x_ptr, r_ptr, w_ptr, b_ptr, y_ptr, h_ptr, mean_ptr, rstd_ptr, D, eps,
                    HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    h = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        h += tl.load(r_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(h_ptr + row * D + cols, h.to(h_ptr.dtype.element_ty), mask=mask)
        h = tl.load(h_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)  # as stored (half dtypes)
    mean = tl.sum(h, 0) / D
    d = tl.where(mask, h - mean, 0.0)
    var = tl.sum(d * d, 0) / D
    rstd = 1.0 / tl.sqrt(var + eps)
    y = d * rstd
    if HAS_W:
        y = y * tl.load(w_ptr + cols, mask=mask, other=0.0)
    if HAS_B:
        y = y + tl.load(b_ptr + cols, mask=mask, other=0.0)
    tl.store(y_ptr + row * D + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _backward_kernel(dy_ptr, dh_ptr, h_ptr, mean_ptr, rstd_ptr, w_ptr, dx_ptr, dwp_ptr, dbp_ptr, rows, D,
                     HAS_DH: tl.constexpr, HAS_W: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    dw = tl.zeros([BLOCK], tl.float32)
    db = tl.zeros([BLOCK], tl.float32)
    for i in range(ROWS):
        row = (pid * ROWS + i).to(tl.int64)
        if row < rows:
            h = tl.load(h_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
            mean = tl.load(mean_ptr + row)
            rstd = tl.load(rstd_ptr + row)
            xhat = tl.where(mask, (h - mean) * rstd, 0.0)
            g = dy * w if HAS_W else dy
            dx = rstd * (g - tl.sum(g, 0) / D - xhat * (tl.sum(g * xhat, 0) / D))
            if HAS_DH:
                dx += tl.load(dh_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(dx_ptr + row * D + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            dw += dy * xhat
            db += dy
    tl.store(dwp_ptr + pid * D + cols, dw, mask=mask)
    tl.store(dbp_ptr + pid * D + cols, db, mask=mask)


def forward(x, res, w, b, y, h, mean, rstd, rows, D, eps):
    if rows == 0 or D == 0:
        if rows and D == 0:
            mean.zero_()
            rstd.fill_(1.0 / eps ** 0.5)
        return
    _forward_kernel[(rows,)](x, res if res is not None else x, w if w is not None else x,
                             b if b is not None else x, y, h if res is not None else y, mean, rstd, D, float(eps),
                             HAS_RES=res is not None, HAS_W=w is not None, HAS_B=b is not None,
                             BLOCK=triton.next_power_of_2(D), num_warps=4)


def backward(dy, dh, h, mean, rstd, w, dx, rows, D):
    """Writes dx; returns (dweight, dbias) in fp32."""
    programs = triton.cdiv(rows, ROWS_PER_PROGRAM)
    dwp = torch.empty(max(programs, 1), D, dtype=torch.float32, device=h.device)
    dbp = torch.empty_like(dwp)
    if rows == 0 or D == 0:
        return dwp.zero_()[0], dbp.zero_()[0]
    _backward_kernel[(programs,)](dy, dh if dh is not None else dy, h, mean, rstd, w if w is not None else h, dx,
                                  dwp, dbp, rows, D, HAS_DH=dh is not None, HAS_W=w is not None,
                                  ROWS=ROWS_PER_PROGRAM, BLOCK=triton.next_power_of_2(D), num_warps=4)
    return dwp.sum(0), dbp.sum(0)
