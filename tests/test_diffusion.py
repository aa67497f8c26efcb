"""Diffusion ops: every backend against the float64 reference, the per-sample helpers, the training
ops (forward and backward), the sampling loop, custom-op checks and bad inputs."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

import gankern
from gankern.backends import why_not
from gankern.ops import diffusion as D
from gankern.reference import diffusion as R

from conftest import DEVICES, KERNEL_DEVICE, KERNEL_ONLY_BACKENDS, assert_close, skip_unless_runnable

SHAPES = [(2, 4, 64, 64), (2, 3, 32, 32), (3, 5, 7, 9), (1, 1, 1, 3)]


def make_plan(kind):
    """Plans covering every feature of the generic step (coefficients of plausible size)."""
    p = D.StepPlan().set(px=1.3, pm=-0.4, qx=0.2, qm=0.9, q0=0.1, a=0.5, b=0.7, c=0.3)
    if kind == "clip":
        p.flags |= R.CLIP
        p.set(clip=0.8)
    elif kind == "hist":
        p.flags |= R.HIST
        p.set(d=-0.35)
    elif kind == "noise":
        p.stochastic = True
        p.set(s=0.6, pre=0.1)
    elif kind == "learned_range":
        p.stochastic = True
        p.flags |= R.VAR_LEARNED_RANGE
        p.set(e0=-1.0, e1=0.3)
    elif kind == "learned":
        p.stochastic = True
        p.flags |= R.VAR_LEARNED
        p.set(s=0.5)
    elif kind == "thresh":
        p.threshold = (0.9, 1.5)
    return p


KINDS = ["plain", "clip", "hist", "noise", "learned_range", "learned", "thresh"]


def inputs(shape, kind, guided, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = shape[0]
    mo_shape = list(shape)
    if kind.startswith("learned"):
        mo_shape[1] *= 2
    mo = torch.randn([(2 if guided else 1) * B] + mo_shape[1:], generator=g)
    if kind == "learned":
        mo[:, shape[1]:] = mo[:, shape[1]:].abs()  # a variance
    x = 2 * torch.randn(shape, generator=g)
    h = torch.randn(shape, generator=g)
    return [t.to(device=device, dtype=dtype) for t in (mo, x, h)]


def run(backend, mo, x, h, plan, guided, rescale=0.0, noise=None, want_x0=True):
    with gankern.use_backend(backend):
        return D.fused_step(mo, x, plan, guidance_scale=6.0 if guided else None, guidance_rescale=rescale,
                            history=h if plan.flags & R.HIST else None, noise=noise, seed=1234, offset=77,
                            want_x0=want_x0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", KERNEL_ONLY_BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("guided", [False, True])
def test_step_matches_reference(backend, device, kind, guided):
    skip_unless_runnable("diffusion_step", backend, device)
    for shape in SHAPES[1:] if backend == "triton" and device == "cpu" else SHAPES:
        mo, x, h = inputs(shape, kind, guided, device)
        plan = make_plan(kind)
        rescale = 0.6 if guided and kind in ("plain", "noise") else 0.0
        prev, x0 = run(backend, mo, x, h, plan, guided, rescale)
        rp, rx = run("reference", mo.double(), x.double(), h.double(), plan, guided, rescale)
        assert_close(prev, rp, what=f"prev {kind} {shape}")
        assert_close(x0, rx, what=f"x0 {kind} {shape}")


@pytest.mark.parametrize("backend", KERNEL_ONLY_BACKENDS)
def test_step_explicit_noise_and_no_x0(backend):
    skip_unless_runnable("diffusion_step", backend, "cpu")
    mo, x, h = inputs((2, 3, 8, 8), "noise", False, "cpu")
    z = torch.randn_like(x)
    plan = make_plan("noise")
    prev, x0 = run(backend, mo, x, h, plan, False, noise=z, want_x0=False)
    rp, _ = run("reference", mo.double(), x.double(), h.double(), plan, False, noise=z.double())
    assert x0 is None
    assert_close(prev, rp)


def test_philox_noise_is_gankern_randn():
    """Noise element i of a step is gankern.randn(sample.shape, seed, offset)[i]."""
    x = torch.zeros(2, 3, 5, 7)
    plan = D.StepPlan().set(s=1.0)
    plan.stochastic = True
    prev, _ = D.fused_step(torch.zeros_like(x), x, plan, seed=99, offset=5)
    assert_close(prev, gankern.randn(x.shape, seed=99, offset=5))


@settings(max_examples=10, deadline=None)
@given(B=st.integers(1, 3), C=st.integers(1, 5), H=st.integers(1, 13), W=st.integers(1, 11),
       kind=st.sampled_from(KINDS), guided=st.booleans())
def test_step_random_shapes(B, C, H, W, kind, guided):
    mo, x, h = inputs((B, C, H, W), kind, guided, "cpu")
    plan = make_plan(kind)
    rp, rx = run("reference", mo.double(), x.double(), h.double(), plan, guided)
    for backend in KERNEL_ONLY_BACKENDS:
        if why_not("diffusion_step", backend, "cpu", torch.float32) is None:
            prev, x0 = run(backend, mo, x, h, plan, guided)
            assert_close(prev, rp, what=backend)
            assert_close(x0, rx, what=backend)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_step_half_precision(backend, dtype):
    skip_unless_runnable("diffusion_step", backend, KERNEL_DEVICE, dtype)
    mo, x, h = inputs((2, 4, 16, 16), "noise", True, KERNEL_DEVICE, dtype)
    plan = make_plan("noise")
    prev, x0 = run(backend, mo, x, h, plan, True)
    rp, rx = run("reference", mo.double(), x.double(), h.double(), plan, True)
    assert_close(prev, rp, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS + ["noise_tensor"])
@pytest.mark.parametrize("guided", [False, True])
def test_cpu_step_half_precision(dtype, kind, guided):
    """The CPU step on bf16/fp16 tensors (loads and stores in the dtype, math in fp32), every feature,
    samples of 1500 elements (tiles of 1024 and a tail): prev and x0 within a few units of the format's
    rounding (conftest.TOL) of the float64 reference on the same rounded inputs."""
    skip_unless_runnable("diffusion_step", "cpu", "cpu", dtype)
    shape = (2, 4, 15, 25)
    mo, x, h = inputs(shape, kind.replace("_tensor", ""), guided, "cpu", dtype)
    plan = make_plan(kind.replace("_tensor", ""))
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(9)).to(dtype) if kind == "noise_tensor" else None
    rescale = 0.7 if guided else 0.0
    prev, x0 = run("cpu", mo, x, h, plan, guided, rescale=rescale, noise=noise)
    rp, rx = run("reference", mo.double(), x.double(), h.double(), plan, guided, rescale=rescale,
                 noise=None if noise is None else noise.double())
    assert prev.dtype == dtype and x0.dtype == dtype
    assert_close(prev, rp, dtype=dtype, what="prev")
    assert_close(x0, rx, dtype=dtype, what="x0")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_half_training_side(dtype):
    """add_noise and the diffusion loss (forward and backward) on bf16/fp16 CPU tensors: the dtypes of
    the fp32 path's contract (loss fp32, gradients in the input dtype), values within the format's
    rounding of the float64 reference; per-sample factors of the sampling side too."""
    skip_unless_runnable("diffusion_loss", "cpu", "cpu", dtype)
    g = torch.Generator().manual_seed(0)
    shape = (3, 4, 19, 27)  # 2052 elements per sample: two conversion chunks and a tail
    mo, x0, n = (torch.randn(shape, generator=g).to(dtype) for _ in range(3))
    t = torch.tensor([5, 500, 990])
    w = torch.rand(3, generator=g) + 0.5
    with gankern.use_backend("cpu"):
        y = gankern.add_noise(x0, n, t, _acp())
        m1 = mo.clone().requires_grad_()
        l1 = gankern.diffusion_loss(m1, x0, n, t, _acp(), "v_prediction", w)
        l1.backward()
        k = torch.ops.gankern.guidance_rescale_factors(torch.cat([mo, n]), 7.5, 0.7)
        lo, wr = R.quantile_rank(0.995, mo[0].numel())
        s = torch.ops.gankern.diffusion_threshold_scales(mo, mo, None, D.StepPlan().set(px=1.0).coefs, 0, lo, wr, 2.5)
    with gankern.use_backend("reference"):
        y64 = gankern.add_noise(x0.double(), n.double(), t, _acp())
        m2 = mo.double().requires_grad_()
        l2 = gankern.diffusion_loss(m2, x0.double(), n.double(), t, _acp(), "v_prediction", w.double())
        l2.backward()
    assert y.dtype == dtype and m1.grad.dtype == dtype
    assert_close(y, y64, dtype, what="add_noise")
    assert_close(l1.detach(), l2.detach(), dtype, what="loss")
    assert_close(m1.grad, m2.grad, dtype, what="dloss/dmodel_output")
    assert_close(k, R.guidance_rescale_factors(torch.cat([mo, n]).double(), 7.5, 0.7), dtype, what="rescale factors")
    assert torch.allclose(s.double(), R.threshold_scales(mo.double(), 0.995, 2.5), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_half_rounding_is_torchs(dtype):
    """The CPU's fp32 -> bf16/fp16 rounding (csrc/common/cpu_convert.h: conversion instructions where
    the CPU has them) is torch's, bit for bit: ties to even, subnormal results, overflow to inf, NaN.
    add_noise with cn = 0 stores round(ca * x) in fp32, then in the dtype."""
    skip_unless_runnable("add_noise", "cpu", "cpu", dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 5000, generator=g).to(dtype)
    x[0, :7] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1.0, -3.0])
    tiny = torch.finfo(dtype).tiny
    # scales: ties and plain rounding, subnormal results (bf16 and fp32 subnormals), overflow
    ca = torch.tensor([1.0 + 2.0 ** -9 + 2.0 ** -12, tiny * 0.37, 1e-39, 3e4 if dtype == torch.float16 else 3e37])
    cn = torch.zeros(4)
    with gankern.use_backend("cpu"):
        y = torch.ops.gankern.add_noise(x, torch.zeros_like(x), ca, cn)
    want = (ca.reshape(-1, 1) * x.float()).to(dtype)
    assert torch.equal(y.isnan(), want.isnan())
    fin = ~want.isnan()
    assert torch.equal(y[fin], want[fin])


@pytest.mark.parametrize("backend", KERNEL_ONLY_BACKENDS)
def test_threshold_scales_match_quantile(backend):
    skip_unless_runnable("diffusion_threshold_scales", backend, "cpu")
    torch.manual_seed(0)
    x0 = 3 * torch.randn(3, 4, 9, 11)
    plan = D.StepPlan().set(px=1.0)  # x0 = sample
    lo, w = R.quantile_rank(0.995, x0[0].numel())
    with gankern.use_backend(backend):
        s = torch.ops.gankern.diffusion_threshold_scales(x0, x0, None, plan.coefs, 0, lo, w, 2.5)
    want = R.threshold_scales(x0, 0.995, 2.5)  # diffusers' torch.quantile formula
    assert torch.allclose(s, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", KERNEL_ONLY_BACKENDS)
def test_guidance_rescale_factors(backend):
    skip_unless_runnable("guidance_rescale_factors", backend, "cpu")
    torch.manual_seed(0)
    mo = torch.randn(6, 4, 10, 10)
    with gankern.use_backend(backend):
        k = torch.ops.gankern.guidance_rescale_factors(mo, 7.5, 0.7)
    assert_close(k, R.guidance_rescale_factors(mo.double(), 7.5, 0.7))


# ---- training side -----------------------------------------------------------------------------

def _acp():
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)


@pytest.mark.parametrize("backend", KERNEL_ONLY_BACKENDS)
@pytest.mark.parametrize("shape", [(4, 4, 16, 16), (3, 3, 5, 7)])
def test_add_noise(backend, shape):
    skip_unless_runnable("add_noise", backend, "cpu")
    torch.manual_seed(0)
    x0, n = torch.randn(shape), torch.randn(shape)
    t = torch.randint(0, 1000, (shape[0],))
    with gankern.use_backend(backend):
        y = gankern.add_noise(x0, n, t, _acp())
    a = _acp().double()[t].reshape(-1, 1, 1, 1)
    assert_close(y, a.sqrt() * x0.double() + (1 - a).sqrt() * n.double())


@pytest.mark.parametrize("backend", KERNEL_ONLY_BACKENDS)
@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
def test_diffusion_loss_forward_backward(backend, pred):
    skip_unless_runnable("diffusion_loss", backend, "cpu")
    torch.manual_seed(0)
    shape = (3, 4, 9, 7)
    mo, x0, n = torch.randn(shape), torch.randn(shape), torch.randn(shape)
    t = torch.randint(0, 1000, (3,))
    w = torch.rand(3) + 0.5

    def loss_of(m, be, dtype):
        with gankern.use_backend(be):
            return gankern.diffusion_loss(m, x0.to(dtype), n.to(dtype), t, _acp(), pred, w.to(dtype))

    m1 = mo.clone().requires_grad_()
    l1 = loss_of(m1, backend, torch.float32)
    l1.backward()
    m2 = mo.double().requires_grad_()
    l2 = loss_of(m2, "reference", torch.float64)
    l2.backward()
    assert_close(l1.detach(), l2.detach())
    assert_close(m1.grad, m2.grad)
    # the plain-torch formula
    a = _acp().double()[t].reshape(-1, 1, 1, 1)
    tgt = {"epsilon": n.double(), "v_prediction": a.sqrt() * n.double() - (1 - a).sqrt() * x0.double(),
           "sample": x0.double()}[pred]
    want = (w.double() * (mo.double() - tgt).pow(2).mean((1, 2, 3))).mean()
    assert_close(l1.detach(), want)


def test_diffusion_loss_gradcheck():
    torch.manual_seed(0)
    mo, x0, n = (torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True) for _ in range(3))
    t = torch.tensor([10, 900])
    with gankern.use_backend("reference"):
        assert torch.autograd.gradcheck(
            lambda m, a, b: gankern.diffusion_loss(m, a, b, t, _acp(), "v_prediction", reduction="none"),
            (mo, x0, n))
        assert torch.autograd.gradcheck(lambda a, b: gankern.add_noise(a, b, t, _acp()), (x0, n))


def test_opcheck():
    torch.manual_seed(0)
    mo, x, h = inputs((2, 3, 4, 5), "clip", True, "cpu")
    plan = make_plan("clip")
    c = list(plan.coefs)
    c[R.C_G] = 5.0
    torch.library.opcheck(torch.ops.gankern.diffusion_step,
                          (mo, x, h, None, None, None, c, plan.flags | R.GUIDED | R.HIST, 1, 2, True))
    torch.library.opcheck(torch.ops.gankern.guidance_rescale_factors, (mo, 5.0, 0.5))
    ca, cn = torch.rand(2), torch.rand(2)
    torch.library.opcheck(torch.ops.gankern.add_noise, (x.requires_grad_(), h, ca, cn))
    w = torch.rand(2)
    torch.library.opcheck(torch.ops.gankern.diffusion_loss, (x, h, h * 2, ca, cn, w))


# ---- the sampling loop -----------------------------------------------------------------------

def tiny_model(x, t):
    return torch.tanh(x) * 0.8 + 1e-4 * t.float()


def var_model(x, t):
    """Prediction then variance channels (learned_range's v in [-1, 1])."""
    return torch.cat([tiny_model(x, t), torch.tanh(0.5 * x)], 1)


@pytest.mark.parametrize("backend", KERNEL_ONLY_BACKENDS)
@pytest.mark.parametrize("cls", ["DDIMScheduler", "DDPMScheduler", "EulerAncestralDiscreteScheduler",
                                 "DPMSolverMultistepScheduler", "EulerDiscreteScheduler", "DDPM learned_range"])
def test_sample_deterministic_and_table_path(cls, backend):
    """Same seed -> same result; the graph-replay tables (coefficients and noise offsets per step,
    read by the kernel from device buffers) reproduce the eager loop (run here without capture)."""
    skip_unless_runnable("diffusion_step_dev", backend, KERNEL_DEVICE)
    from gankern.sampling import step_tables
    model = tiny_model
    if cls == "DDPM learned_range":
        cls, model = "DDPMScheduler", var_model
        kw = dict(variance_type="learned_range")
    else:
        kw = dict(algorithm_type="sde-dpmsolver++") if cls.startswith("DPM") else {}
    mk = getattr(gankern.schedulers, cls)
    a = gankern.sample(model, mk(**kw), (2, 3, 8, 8), num_inference_steps=6, guidance_scale=3.0, seed=5,
                       progress=False)
    b = gankern.sample(model, mk(**kw), (2, 3, 8, 8), num_inference_steps=6, guidance_scale=3.0, seed=5,
                       progress=False)
    assert torch.equal(a, b)
    s = mk(**kw)
    s.set_timesteps(6)
    s.manual_seed(5)
    s._offset = D.noise_counters(2 * 3 * 8 * 8)
    coefs, offsets, scales, flags = step_tables(s, 2 * 3 * 8 * 8)
    x = gankern.randn((2, 3, 8, 8), seed=5) * float(s.init_noise_sigma)
    hist = torch.zeros_like(x)
    flags = (flags | R.GUIDED) & ~R.HAS_VAR_CHANNELS
    for i, t in enumerate(s.timesteps):
        c = coefs[i].clone()
        c[R.C_G] = 3.0
        out = model(torch.cat([x, x]) * float(scales[i]), t)
        rng = torch.tensor([5, int(offsets[i])])
        with gankern.use_backend(backend):
            x, x0 = torch.ops.gankern.diffusion_step_dev(out, x, hist if flags & R.HIST else None, c.float(), rng,
                                                         flags, bool(flags & R.HIST))
        if flags & R.HIST:
            hist = x0
    assert_close(x, a)


def test_seed_range_edges():
    # the one seed check of every seeded op: [-2^63, 2^64), negative = two's complement
    x = torch.randn(2, 3, 4, 4)
    plan = make_plan("noise")
    a, _ = D.fused_step(x, x, plan, seed=2**64 - 1, offset=2**64 - 1)
    b, _ = D.fused_step(x, x, plan, seed=-1, offset=-1)
    assert torch.equal(a, b)
    for seed, offset in [(2**64, 0), (-(2**63) - 1, 0), (0, 2**64)]:
        with pytest.raises(ValueError, match="seed|offset"):
            D.fused_step(x, x, plan, seed=seed, offset=offset)
    with pytest.raises(TypeError, match="seed"):
        D.fused_step(x, x, plan, seed=1.0)
    s = gankern.schedulers.DDPMScheduler()
    s.manual_seed(2**64 - 1)
    with pytest.raises(ValueError, match="seed"):
        s.manual_seed(2**64)


def test_sample_errors():
    with pytest.raises(ValueError, match="cuda_graph"):
        gankern.sample(tiny_model, gankern.schedulers.DDIMScheduler(), (1, 3, 4, 4), 2, cuda_graph=True,
                       progress=False)
    with pytest.raises(TypeError, match="scheduler"):
        gankern.sample(tiny_model, object(), (1, 3, 4, 4), 2, progress=False)


@pytest.mark.gpu
def test_sample_cuda_graph():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    s1, s2 = gankern.schedulers.DPMSolverMultistepScheduler(), gankern.schedulers.DPMSolverMultistepScheduler()
    a = gankern.sample(tiny_model, s1, (2, 4, 16, 16), 8, guidance_scale=4.0, seed=3, progress=False,
                       device="cuda")
    b = gankern.sample(tiny_model, s2, (2, 4, 16, 16), 8, guidance_scale=4.0, seed=3, progress=False,
                       device="cuda", cuda_graph=True)
    assert_close(b, a)


# ---- bad inputs --------------------------------------------------------------------------------

def test_bad_inputs():
    x = torch.randn(2, 3, 4, 4)
    plan = make_plan("plain")
    with pytest.raises(ValueError, match="2\\*B"):
        D.fused_step(x, x, plan, guidance_scale=5.0)
    with pytest.raises(ValueError, match="does not match"):
        D.fused_step(torch.randn(2, 3, 4, 5), x, plan)
    with pytest.raises(ValueError, match="history"):
        D.fused_step(x, x, plan, history=torch.randn(2, 3, 4, 5))
    with pytest.raises(TypeError, match="sample"):
        D.fused_step(x, x.long(), plan)
    with pytest.raises(ValueError, match="guidance_rescale"):
        D.fused_step(torch.cat([x, x]), x, plan, guidance_scale=5.0, guidance_rescale=2.0)
    with pytest.raises(ValueError, match="prediction_type"):
        gankern.diffusion_loss(x, x, x, torch.tensor([1, 2]), _acp(), prediction_type="score")
    with pytest.raises(TypeError, match="timesteps"):
        gankern.add_noise(x, x, torch.tensor([1.0, 2.0]), _acp())
    with pytest.raises(ValueError, match="noise shape"):
        gankern.add_noise(x, x[:1], torch.tensor([1, 2]), _acp())
    with pytest.raises(ValueError, match="weighting"):
        gankern.diffusion_loss(x, x, x, torch.tensor([1, 2]), _acp(), weighting=torch.ones(3))


def test_compile_fullgraph():
    """Under torch.compile the step goes through the gankern::diffusion_step custom op."""
    mo, x, h = inputs((2, 3, 8, 8), "clip", True, "cpu")
    plan = make_plan("clip")

    def f(mo, x):
        return D.fused_step(mo, x, plan, guidance_scale=4.0)[0]

    out = torch.compile(f, fullgraph=True)(mo, x)
    assert_close(out, f(mo, x))


@pytest.mark.parametrize("backend", KERNEL_ONLY_BACKENDS)
def test_layouts_and_empty(backend):
    """channels_last / sliced inputs give the reference's result; empty batches give empty outputs."""
    skip_unless_runnable("diffusion_step", backend, "cpu")
    mo, x, h = inputs((2, 4, 6, 5), "hist", True, "cpu")
    plan = make_plan("hist")
    rp, rx = run("reference", mo.double(), x.double(), h.double(), plan, True)
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (mo, x, h)]
    prev, x0 = run(backend, *cl, plan, True)
    assert_close(prev, rp)
    wide = torch.cat([x, x], 3)[..., :5]  # a strided view
    prev, _ = run(backend, mo, wide, h, plan, True)
    assert_close(prev, rp)
    e = torch.zeros(0, 4, 6, 5)
    prev, x0 = run(backend, torch.zeros(0, 4, 6, 5), e, e, plan, True)
    assert prev.shape == e.shape and x0.shape == e.shape
