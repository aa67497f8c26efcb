"""Fused VAE sampling: reparameterize, kl_normal, reparameterize_kl, DiagonalGaussian and the
Reparameterize layer, on every backend against the float64 reference and the plain torch formula."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import gankern
from gankern import _native
from gankern.backends import use_backend
from gankern.ops._validate import seed_bits
from gankern.reference import vae as ref

from conftest import DEVICES, KERNEL_BACKENDS, assert_close, skip_unless_runnable

REDUCTIONS = ("none", "sum", "mean", "batchmean")
CLAMP = (-30.0, 20.0)


def inputs(shape, device="cpu", dtype=torch.float32, seed=0, spread=2.0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=g, dtype=torch.float64)
    lv = torch.randn(shape, generator=g, dtype=torch.float64) * spread
    return mu.to(device, dtype), lv.to(device, dtype)


def torch_formula(mu, lv, eps, lo=-30.0, hi=20.0):
    """The eager PyTorch idiom the fused ops replace (given the same eps)."""
    lvc = lv.clamp(lo, hi)
    z = mu + torch.exp(0.5 * lvc) * eps
    kl = 0.5 * (mu.pow(2) + torch.exp(lvc) - 1.0 - lvc)
    return z, kl


def ref64(mu, lv, seed, offset, reduction, clamp=CLAMP):
    lo, hi = clamp if clamp is not None else (-math.inf, math.inf)
    m, v = mu.detach().double().cpu(), lv.detach().double().cpu()
    return (ref.reparameterize(m, v, seed_bits(seed), seed_bits(offset), lo, hi),
            ref.kl_normal(m, v, reduction, lo, hi))


def ref64_grads(mu, lv, seed, offset, reduction, dz, gkl, clamp=CLAMP):
    m = mu.detach().double().cpu().requires_grad_()
    v = lv.detach().double().cpu().requires_grad_()
    lo, hi = clamp if clamp is not None else (-math.inf, math.inf)
    z = ref.reparameterize(m, v, seed_bits(seed), seed_bits(offset), lo, hi)
    kl = ref.kl_normal(m, v, reduction, lo, hi)
    torch.autograd.backward([z, kl], [dz.double().cpu(), gkl.double().cpu()])
    return m.grad, v.grad


SHAPES = [(1,), (7,), (3, 5), (2, 3, 5, 7), (3, 7001), ()]


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_forward_backward_vs_reference(backend, device, shape, reduction):
    skip_unless_runnable("reparameterize_kl", backend, device)
    if reduction == "batchmean" and shape == ():
        pytest.skip("batchmean needs a batch dimension")
    mu, lv = inputs(shape, device, spread=8.0)  # wide enough that the clamp engages
    lv.view(-1)[0] = 25.0 if lv.numel() else 0.0  # one element clamped from above
    seed, offset = 1234567, 2**32 + 3
    with use_backend(backend):
        m, v = mu.clone().requires_grad_(), lv.clone().requires_grad_()
        z, kl = gankern.reparameterize_kl(m, v, seed, offset, reduction)
        z_only = gankern.reparameterize(mu, lv, seed, offset)
        kl_only = gankern.kl_normal(mu, lv, reduction, logvar_clamp=CLAMP)
        dz = torch.randn_like(z)
        gkl = torch.randn_like(kl)
        torch.autograd.backward([z, kl], [dz, gkl])
    zr, klr = ref64(mu, lv, seed, offset, reduction)
    assert_close(z, zr, what="z")
    assert_close(kl, klr, what="kl")
    assert torch.equal(z_only, z) and torch.equal(kl_only, kl), "fused and separate ops differ"
    gm, gv = ref64_grads(mu, lv, seed, offset, reduction, dz, gkl)
    assert_close(m.grad, gm, what="dmu")
    assert_close(v.grad, gv, what="dlogvar")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("device", DEVICES)
def test_separate_backwards(backend, device):
    """reparameterize alone and kl_normal alone (no KL / no z term in the backward kernel)."""
    skip_unless_runnable("reparameterize_kl", backend, device)
    mu, lv = inputs((4, 37), device)
    with use_backend(backend):
        m, v = mu.clone().requires_grad_(), lv.clone().requires_grad_()
        z = gankern.reparameterize(m, v, 5, 6)
        dz = torch.randn_like(z)
        z.backward(dz)
        m2, v2 = mu.clone().requires_grad_(), lv.clone().requires_grad_()
        gankern.kl_normal(m2, v2, "mean").backward()
    mr, vr = mu.double().cpu().requires_grad_(), lv.double().cpu().requires_grad_()
    ref.reparameterize(mr, vr, 5, 6, *CLAMP).backward(dz.double().cpu())
    assert_close(m.grad, mr.grad, what="dmu")
    assert_close(v.grad, vr.grad, what="dlogvar")
    mr, vr = mu.double().cpu().requires_grad_(), lv.double().cpu().requires_grad_()
    ref.kl_normal(mr, vr, "mean", -math.inf, math.inf).backward()
    assert_close(m2.grad, mr.grad, what="kl dmu")
    assert_close(v2.grad, vr.grad, what="kl dlogvar")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(max_examples=10, deadline=None)
@given(shape=st.lists(st.integers(1, 23), min_size=1, max_size=3), seed=st.integers(0, 2**64 - 1),
       offset=st.integers(0, 2**64 - 1), reduction=st.sampled_from(REDUCTIONS))
def test_drawn_shapes(backend, shape, seed, offset, reduction):
    device = DEVICES[-1]
    skip_unless_runnable("reparameterize_kl", backend, device)
    mu, lv = inputs(shape, device)
    with use_backend(backend):
        z, kl = gankern.reparameterize_kl(mu, lv, seed, offset, reduction)
    zr, klr = ref64(mu, lv, seed, offset, reduction)
    assert_close(z, zr, what="z")
    assert_close(kl, klr, what="kl")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("device", DEVICES)
def test_matches_torch_formula_with_same_eps(backend, device):
    skip_unless_runnable("reparameterize_kl", backend, device)
    mu, lv = inputs((8, 4, 9, 9), device, spread=15.0)
    seed, offset = 99, 2**40
    eps = gankern.randn(mu.shape, seed, offset, device=device)
    mt, vt = mu.clone().requires_grad_(), lv.clone().requires_grad_()
    zt, klt = torch_formula(mt, vt, eps)
    klt = klt.sum() / mu.shape[0]
    dz = torch.randn_like(mu)
    torch.autograd.backward([zt, klt], [dz, torch.tensor(0.3, device=device)])
    with use_backend(backend):
        m, v = mu.clone().requires_grad_(), lv.clone().requires_grad_()
        z, kl = gankern.reparameterize_kl(m, v, seed, offset, "batchmean")
        torch.autograd.backward([z, kl], [dz, torch.tensor(0.3, device=device)])
    # The formula's eps comes from the default randn backend: compare at fp32 rounding of eps.
    for got, want, what in ((z, zt, "z"), (kl, klt, "kl"), (m.grad, mt.grad, "dmu"), (v.grad, vt.grad, "dlogvar")):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item()), what


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pshape", [(3, 10, 5, 7), (3, 8, 4, 6)])  # rows of 175 (odd) and 96 (vector) elements
def test_channel_chunks_read_in_place(backend, device, pshape):
    """mean/logvar as the two channel halves of one tensor (DiagonalGaussian), and transposed
    (non-contiguous) inputs: the noise follows the logical row-major order either way."""
    skip_unless_runnable("reparameterize_kl", backend, device)
    params = torch.randn(*pshape, device=device)
    mu, lv = params.chunk(2, dim=1)
    assert not mu.is_contiguous()
    mt, lt = torch.randn(9, 6, device=device).t(), torch.randn(9, 6, device=device).t()
    with use_backend(backend):
        z, kl = gankern.reparameterize_kl(mu, lv, 3, 4, "none")
        zc, klc = gankern.reparameterize_kl(mu.contiguous(), lv.contiguous(), 3, 4, "none")
        zt = gankern.reparameterize(mt, lt, 3, 4)
        ztc = gankern.reparameterize(mt.contiguous(), lt.contiguous(), 3, 4)
    assert torch.equal(z, zc) and torch.equal(kl, klc)
    assert torch.equal(zt, ztc)
    zr, klr = ref64(mu, lv, 3, 4, "none")
    assert_close(z, zr, what="z")
    with use_backend(backend):  # and the backward through the views
        p = params.clone().requires_grad_()
        m, v = p.chunk(2, dim=1)
        z, kl = gankern.reparameterize_kl(m, v, 3, 4, "sum")
        (z.sum() + kl).backward()
    gm, gv = ref64_grads(mu, lv, 3, 4, "sum", torch.ones(mu.shape), torch.tensor(1.0))
    half = pshape[1] // 2
    assert_close(p.grad[:, :half], gm, what="dmu")
    assert_close(p.grad[:, half:], gv, what="dlogvar")


@pytest.mark.parametrize("backend", ("cpu", "triton", "cuda", "reference"))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,reduction", [((5, 33), "sum"), ((3, 1501), "none")])  # 1501: rows cross the CPU's tiles
def test_half_precision(backend, dtype, shape, reduction):
    """Half inputs: outputs and gradients in the input dtype, each within a few units of the format's
    rounding (conftest.TOL) of the float64 reference evaluated on the same (rounded) inputs."""
    device = DEVICES[-1]
    skip_unless_runnable("reparameterize_kl", backend, device, dtype)
    mu, lv = inputs(shape, device, dtype)
    with use_backend(backend):
        m, v = mu.clone().requires_grad_(), lv.clone().requires_grad_()
        z, kl = gankern.reparameterize_kl(m, v, 7, 8, reduction)
        gkl = torch.linspace(-1, 1, mu.numel()).reshape(shape) if reduction == "none" else torch.tensor(1.0)
        (z.float().sum() + (kl.float() * gkl.to(device)).sum()).backward()
    assert z.dtype == dtype and kl.dtype == dtype and m.grad.dtype == dtype and v.grad.dtype == dtype
    zr, klr = ref64(mu, lv, 7, 8, reduction)
    assert_close(z, zr, dtype, what="z")
    assert_close(kl, klr, dtype, what="kl")
    gm, gv = ref64_grads(mu, lv, 7, 8, reduction, torch.ones(shape), gkl.to(dtype))  # kl's gradient as autograd rounds it
    assert_close(m.grad, gm, dtype, what="dmu")
    assert_close(v.grad, gv, dtype, what="dlogvar")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_cpu_half_channel_chunks_and_separate_ops(dtype, reduction):
    """The CPU half kernels on latent diffusion's layout (mu and logvar the channel halves of one
    [B, 2C, H, W] tensor, read in place through row strides) and through each op on its own."""
    skip_unless_runnable("reparameterize_kl", "cpu", "cpu", dtype)
    g = torch.Generator().manual_seed(3)
    p64 = torch.randn(3, 8, 13, 11, generator=g, dtype=torch.float64)
    p = p64.to(dtype)
    mu, lv = p[:, :4], p[:, 4:]
    with use_backend("cpu"):
        z = gankern.reparameterize(mu, lv, 5, 6)
        kl = gankern.kl_normal(mu, lv, reduction)
        pg = p.clone().requires_grad_()
        zz, kk = gankern.reparameterize_kl(pg[:, :4], pg[:, 4:], 5, 6, reduction)
        (zz.float().sum() + kk.float().sum()).backward()
    zr, klr = ref64(mu, lv, 5, 6, reduction)
    assert z.dtype == dtype and kl.dtype == dtype and pg.grad.dtype == dtype
    assert_close(z, zr, dtype, what="z")
    assert_close(kl, klr, dtype, what="kl")
    assert torch.equal(zz, z) and torch.equal(kk, kl)
    gm, gv = ref64_grads(mu, lv, 5, 6, reduction, torch.ones(mu.shape), torch.ones(klr.shape))
    assert_close(pg.grad[:, :4], gm, dtype, what="dmu")
    assert_close(pg.grad[:, 4:], gv, dtype, what="dlogvar")


# ---- clamp, NaN, empty ----------------------------------------------------------------------

@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_clamp_gradient_is_torch_clamps(backend):
    device = DEVICES[-1]
    skip_unless_runnable("reparameterize_kl", backend, device)
    lv = torch.tensor([-40.0, -30.0, 0.5, 20.0, 25.0], device=device)
    mu = torch.zeros(5, device=device)
    with use_backend(backend):
        v = lv.clone().requires_grad_()
        z, kl = gankern.reparameterize_kl(mu, v, 1, 0, "sum")
        (z.sum() + kl).backward()
    vt = lv.clone().requires_grad_()
    eps = gankern.randn((5,), 1, 0, device=device)
    zt, klt = torch_formula(mu, vt, eps)
    (zt.sum() + klt.sum()).backward()
    assert v.grad[0] == 0 and v.grad[4] == 0, "gradient must be zero where the clamp is active"
    assert torch.allclose(v.grad, vt.grad, rtol=1e-5, atol=1e-30)
    assert torch.all(v.grad[1:4] != 0), "the clamp passes gradients at its bounds (torch.clamp)"


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_no_clamp_and_nan_propagate(backend):
    device = DEVICES[-1]
    skip_unless_runnable("reparameterize_kl", backend, device)
    mu = torch.tensor([0.0, float("nan"), 1.0, 2.0], device=device)
    lv = torch.tensor([50.0, 0.0, float("nan"), -50.0], device=device)
    with use_backend(backend):
        z = gankern.reparameterize(mu, lv, 3, 0, logvar_clamp=None)
        kl = gankern.kl_normal(mu, lv, "none")
    zr, klr = ref64(mu, lv, 3, 0, "none", clamp=None)
    assert torch.equal(torch.isnan(z).cpu(), torch.isnan(zr)) and torch.equal(torch.isnan(kl).cpu(), torch.isnan(klr))
    assert_close(z, zr.float().double(), what="z")
    assert_close(kl, klr, what="kl")


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # numpy, in the Triton interpreter
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_exp_range_edges(backend):
    """No clamp: exp(logvar) stays finite up to log(FLT_MAX) and underflows to 0 like torch.exp,
    on every path (the CPU's AVX2 and portable exp included)."""
    device = DEVICES[-1]
    skip_unless_runnable("reparameterize_kl", backend, device)
    lv = torch.tensor([88.0, 88.5, 88.72, 88.8, 120.0, -87.0, -88.0, -104.0, -200.0, 3.0], device=device)
    mu = torch.zeros_like(lv)
    paths = (True, False) if backend == "cpu" else (True,)
    for simd in paths:
        if backend == "cpu":
            _native.cpu.random.set_simd(0, enabled=simd)
        try:
            with use_backend(backend):
                kl = gankern.kl_normal(mu, lv, "none")
        finally:
            if backend == "cpu":
                _native.cpu.random.set_simd(0, enabled=True)
        lvc = lv.cpu()
        # fp32 math overflows where exp(lv) exceeds FLT_MAX; decided in float64, not by torch's own
        # float32 exp, whose last ulp near the overflow threshold depends on the CPU's vector path
        exact = 0.5 * (torch.exp(lvc.double()) - 1.0 - lvc.double())
        overflows = torch.exp(lvc.double()) > torch.finfo(torch.float32).max
        assert torch.equal(torch.isinf(kl.cpu()), overflows), (simd, kl)
        fin = ~overflows
        assert torch.allclose(kl.cpu()[fin].double(), exact[fin], rtol=1e-5), (simd, kl)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_empty(backend):
    device = DEVICES[-1]
    skip_unless_runnable("reparameterize_kl", backend, device)
    mu = torch.empty(0, 4, device=device)
    with use_backend(backend):
        z, kl_sum = gankern.reparameterize_kl(mu, mu, 1, 0, "sum")
        kl_none = gankern.kl_normal(mu, mu, "none")
    assert z.shape == (0, 4) and kl_none.shape == (0, 4) and kl_sum.item() == 0.0


# ---- determinism, reproducibility, seeds -------------------------------------------------------

def test_kl_is_deterministic_across_thread_counts():
    if _native.cpu is None:
        pytest.skip("no cpu backend")
    mu, lv = inputs((5, 40000))
    old = torch.get_num_threads()
    outs = []
    for n in (1, 2, 1):
        _native.cpu.set_num_threads(n)
        outs.append(gankern.kl_normal(mu, lv, "sum"))
    _native.cpu.set_num_threads(old)
    assert all(torch.equal(outs[0], o) for o in outs)


def test_seed_none_follows_torch_manual_seed():
    mu, lv = inputs((6, 9))
    torch.manual_seed(7)
    a = gankern.reparameterize(mu, lv)
    torch.manual_seed(7)
    b = gankern.reparameterize(mu, lv)
    c = gankern.reparameterize(mu, lv)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_backward_regenerates_eps():
    """dlogvar = dz * eps * std / 2: eps recomputed from (seed, offset) equals the forward's."""
    mu, lv = inputs((3, 50))
    v = lv.clone().requires_grad_()
    z = gankern.reparameterize(mu, v, 11, 2**35, logvar_clamp=None)
    z.backward(torch.ones_like(z))
    eps = (z.detach() - mu) / torch.exp(0.5 * lv)
    assert torch.allclose(v.grad, eps * 0.5 * torch.exp(0.5 * lv), rtol=1e-5, atol=1e-6)


def test_simd_and_portable_cpu_paths_agree():
    """The generator's AVX2 Philox path (csrc/random/cpu.cpp) and its portable auto-vectorized one
    (non-AVX2 CPUs) give the same VAE results and normals."""
    if _native.cpu is None:
        pytest.skip("no cpu backend")
    mu, lv = inputs((7, 333))
    outs = []
    for simd in (True, False):
        _native.cpu.random.set_simd(0, enabled=simd)
        try:
            outs.append(gankern.reparameterize_kl(mu, lv, 4, 5, "none") + (gankern.randn((1001,), 4, 2**32 - 7),))
        finally:
            _native.cpu.random.set_simd(0, enabled=True)
    for a, b in zip(outs[0], outs[1]):
        assert torch.allclose(a, b, rtol=2e-6, atol=2e-6)


# ---- gradcheck, opcheck, compile ---------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_reference(reduction):
    mu, lv = inputs((3, 4), dtype=torch.float64)
    lv[0, 0] = -35.0  # inside the clamped region: gradient zero, still smooth locally
    m, v = mu.requires_grad_(), lv.requires_grad_()
    with use_backend("reference"):
        assert torch.autograd.gradcheck(lambda a, b: gankern.reparameterize_kl(a, b, 3, 4, reduction), (m, v))
        assert torch.autograd.gradcheck(lambda a, b: gankern.kl_normal(a, b, reduction), (m, v))
        assert torch.autograd.gradcheck(lambda a, b: gankern.reparameterize(a, b, 3, 4), (m, v))


def test_gradcheck_reference_closed_form_backward():
    """The closed-form backward of the reference (what the kernels implement) vs autograd."""
    mu, lv = inputs((4, 6), dtype=torch.float64)
    dz, gkl = torch.randn(4, 6, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    for reduction in ("sum", "mean", "batchmean"):
        dmu, dlv = ref.vae_backward(dz, gkl, mu, lv, 3, 4, *CLAMP, reduction)
        gm, gv = ref64_grads(mu, lv, 3, 4, reduction, dz, gkl)
        assert torch.allclose(dmu, gm) and torch.allclose(dlv, gv)


def test_opcheck():
    mu, lv = inputs((4, 9))
    mu.requires_grad_()
    lv.requires_grad_()
    ops = torch.ops.gankern
    torch.library.opcheck(ops.reparameterize.default, (mu, lv, 3, 2**33, -30.0, 20.0))
    for reduction in REDUCTIONS:
        torch.library.opcheck(ops.kl_normal.default, (mu, lv, reduction, -math.inf, math.inf))
        torch.library.opcheck(ops.reparameterize_kl.default, (mu, lv, 3, 4, -30.0, 20.0, reduction))
    d = mu.detach()
    torch.library.opcheck(ops.vae_backward.default, (d, torch.tensor(1.0), d, lv.detach(), 3, 4, -30.0, 20.0, "sum"))
    torch.library.opcheck(ops.vae_backward.default, (None, torch.ones(4, 9), d, lv.detach(), 3, 4, -30.0, 20.0, "none"))
    torch.library.opcheck(ops.reparameterize_backward.default, (d, d, lv.detach(), 3, 4, -30.0, 20.0))


def test_torch_compile_fullgraph():
    mu, lv = inputs((6, 10))
    f = torch.compile(lambda a, b: gankern.reparameterize_kl(a, b, 3, 4, "batchmean"), fullgraph=True)
    z, kl = f(mu, lv)
    ze, kle = gankern.reparameterize_kl(mu, lv, 3, 4, "batchmean")
    assert torch.equal(z, ze) and torch.equal(kl, kle)
    layer = torch.compile(gankern.nn.Reparameterize(kl_reduction="sum"), fullgraph=True)
    m, v = mu.clone().requires_grad_(), lv.clone().requires_grad_()
    z, kl = layer(m, v, 5, 0)
    (z.sum() + kl).backward()
    assert m.grad is not None and v.grad is not None


def test_torch_compile_fullgraph_seed_none():
    """seed=None under torch.compile(fullgraph=True): the seed draw is traced (no graph break) and
    torch.manual_seed still makes runs reproducible (inductor draws it with its own generator, so
    compiled and eager seeds differ)."""
    mu, lv = inputs((4, 5))
    f = torch.compile(lambda a, b: gankern.reparameterize(a, b), fullgraph=True)
    torch.manual_seed(0)
    a = f(mu, lv)
    torch.manual_seed(0)
    b = f(mu, lv)
    c = f(mu, lv)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---- bad inputs ---------------------------------------------------------------------------------

def test_seed_range_edges():
    # the range every seeded op shares (ops/_validate.py: seed_bits); the ends equal their
    # two's-complement twins and match gankern.randn's noise
    mu, lv = torch.zeros(7), torch.zeros(7)
    for seed, twin in [(-(2**63), 2**63), (2**64 - 1, -1)]:
        z = gankern.reparameterize(mu, lv, seed=seed, offset=2**64 - 1)
        assert torch.equal(z, gankern.reparameterize(mu, lv, seed=twin, offset=-1))
        assert torch.equal(z, gankern.randn((7,), seed, 2**64 - 1))


@pytest.mark.parametrize("call,exc", [
    (lambda: gankern.reparameterize(torch.zeros(3), torch.zeros(4)), ValueError),
    (lambda: gankern.reparameterize(torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64)), TypeError),
    (lambda: gankern.kl_normal(torch.zeros(3, dtype=torch.int32), torch.zeros(3)), TypeError),
    (lambda: gankern.reparameterize(torch.zeros(3), torch.zeros(3, dtype=torch.float64)), TypeError),
    (lambda: gankern.kl_normal(torch.zeros(3), torch.zeros(3), "avg"), ValueError),
    (lambda: gankern.kl_normal(torch.zeros(()), torch.zeros(()), "batchmean"), ValueError),
    (lambda: gankern.reparameterize(torch.zeros(3), torch.zeros(3), logvar_clamp=(5.0, -5.0)), ValueError),
    (lambda: gankern.reparameterize(torch.zeros(3), torch.zeros(3), logvar_clamp=3.0), TypeError),
    (lambda: gankern.reparameterize(torch.zeros(3), torch.zeros(3), seed="x"), TypeError),
    (lambda: gankern.reparameterize(torch.zeros(3), torch.zeros(3), offset=-(2**64)), ValueError),
    (lambda: gankern.reparameterize(torch.zeros(3), torch.zeros(3), seed=2**64), ValueError),
    (lambda: gankern.reparameterize_kl(torch.zeros(3), torch.zeros(3), seed=-(2**63) - 1), ValueError),
    (lambda: gankern.reparameterize_kl(torch.zeros(3), torch.zeros(3), offset=2**64), ValueError),
    (lambda: gankern.reparameterize([1.0], torch.zeros(1)), TypeError),
    (lambda: gankern.randn((4, -2), 1), ValueError),
    (lambda: gankern.DiagonalGaussian(torch.zeros(2, 3)), ValueError),
    (lambda: gankern.nn.Reparameterize(kl_reduction="avg"), ValueError),
])
def test_bad_inputs(call, exc):
    with pytest.raises(exc):
        call()


# ---- DiagonalGaussian and the layer ------------------------------------------------------------

class LdmDiagonalGaussian:
    """latent diffusion's DiagonalGaussianDistribution (ldm/modules/distributions), with eps given."""

    def __init__(self, parameters):
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(self.logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, eps):
        return self.mean + self.std * eps

    def kl(self, other=None):
        if other is None:
            return 0.5 * torch.sum(torch.pow(self.mean, 2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])
        return 0.5 * torch.sum(torch.pow(self.mean - other.mean, 2) / other.var + self.var / other.var - 1.0
                               - self.logvar + other.logvar, dim=[1, 2, 3])

    def nll(self, sample, dims=(1, 2, 3)):
        return 0.5 * torch.sum(math.log(2.0 * math.pi) + self.logvar + torch.pow(sample - self.mean, 2) / self.var,
                               dim=list(dims))


def test_diagonal_gaussian_matches_latent_diffusion():
    params = torch.randn(2, 8, 6, 6) * 3
    params[0, 5, 0, 0] = 40.0  # clamped
    other = torch.randn(2, 8, 6, 6)
    d, o = gankern.DiagonalGaussian(params), gankern.DiagonalGaussian(other)
    ld, lo = LdmDiagonalGaussian(params), LdmDiagonalGaussian(other)
    eps = gankern.randn(d.mean.shape, 21, 2**33)
    assert torch.allclose(d.sample(21, 2**33), ld.sample(eps), rtol=1e-5, atol=1e-5)
    assert torch.equal(d.mode(), ld.mean)
    assert torch.allclose(d.kl(), ld.kl(), rtol=1e-5)
    assert torch.allclose(d.kl(o), ld.kl(lo), rtol=1e-5)
    x = torch.randn(2, 4, 6, 6)
    assert torch.allclose(d.nll(x), ld.nll(x), rtol=1e-5)
    assert torch.allclose(d.std, ld.std) and torch.allclose(d.var, ld.var)
    z, kl = d.sample_kl(21, 2**33, "none")
    assert torch.equal(z, d.sample(21, 2**33))
    assert torch.allclose(kl.flatten(1).sum(1), ld.kl(), rtol=1e-5)


def test_diagonal_gaussian_dim_and_deterministic():
    params = torch.randn(5, 3, 8)
    d = gankern.DiagonalGaussian(params, dim=-1)
    assert d.mean.shape == (5, 3, 4)
    assert torch.equal(d.mean, params[..., :4])
    det = gankern.DiagonalGaussian(params, dim=2, deterministic=True)
    assert torch.equal(det.sample(), det.mean) and torch.equal(det.std, torch.zeros_like(det.mean))


def test_diagonal_gaussian_seed_none_and_grad():
    params = torch.randn(2, 4, 3, 3, requires_grad=True)
    torch.manual_seed(3)
    a = gankern.DiagonalGaussian(params).sample()
    torch.manual_seed(3)
    b = gankern.DiagonalGaussian(params).sample()
    assert torch.equal(a, b)
    (a.sum() + gankern.DiagonalGaussian(params).kl().sum()).backward()
    assert params.grad is not None and torch.isfinite(params.grad).all()


def test_reparameterize_layer():
    layer = gankern.nn.Reparameterize()
    assert layer.state_dict() == {}
    mu, lv = inputs((4, 6))
    assert torch.equal(layer(mu, lv, 3, 0), gankern.reparameterize(mu, lv, 3, 0))
    layer.eval()
    assert torch.equal(layer(mu, lv, 3, 0), mu)
    kl_layer = gankern.nn.Reparameterize(kl_reduction="batchmean").train()
    z, kl = kl_layer(mu, lv, 3, 0)
    assert torch.equal(kl, gankern.kl_normal(mu, lv, "batchmean", logvar_clamp=CLAMP))
    assert "kl_reduction='batchmean'" in repr(kl_layer)

