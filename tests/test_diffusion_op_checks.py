"""The diffusion custom ops are public (users, opcheck and torch.compile call torch.ops.gankern.*
directly; the schedulers call add_noise directly): each validates its own operands before a kernel
runs. Regressions: add_noise with one timestep for a batch read per-sample coefficients past their
end; dynamic thresholding with sample_max_value < 1 was wrong on the CPU backend."""
import pytest
import torch

import gankern
from gankern.reference import diffusion as R

from conftest import KERNEL_BACKENDS as BACKENDS, skip_unless_runnable

B, SHAPE = 3, (3, 4, 5, 6)
OPS = torch.ops.gankern


def _coefs():
    c = [0.0] * R.NCOEF
    c[R.C_G], c[R.C_PX], c[R.C_PM], c[R.C_A], c[R.C_B] = 1.0, 1.0, -0.5, 0.9, 0.1
    return c


def _bad_calls():
    """(name, call) pairs: each must raise TypeError / ValueError before any kernel runs."""
    x = torch.randn(SHAPE)
    mo = torch.randn(SHAPE)
    v = torch.rand(B)
    short, long2d = torch.rand(1), torch.rand(B, 2)
    c = _coefs()
    step = OPS.diffusion_step
    yield "step: coefs too short", lambda: step(mo, x, None, None, None, None, c[:4], 0, 0, 0, False)
    yield "step: unknown flag", lambda: step(mo, x, None, None, None, None, c, 1 << 20, 0, 0, False)
    yield "step: guided, batch B", lambda: step(mo, x, None, None, None, None, c, R.GUIDED, 0, 0, False)
    yield "step: unguided, batch 2B", lambda: step(torch.randn(2 * B, *SHAPE[1:]), x, None, None, None, None, c, 0,
                                                   0, 0, False)
    yield "step: shape", lambda: step(mo[:, :2], x, None, None, None, None, c, 0, 0, 0, False)
    yield "step: VAR without 2C", lambda: step(mo, x, None, None, None, None, c, R.VAR_LEARNED_RANGE, 0, 0, False)
    yield "step: HIST without history", lambda: step(mo, x, None, None, None, None, c, R.HIST, 0, 0, False)
    yield "step: history shape", lambda: step(mo, x, x[:1], None, None, None, c, R.HIST, 0, 0, False)
    yield "step: noise shape", lambda: step(mo, x, None, x[:, :1], None, None, c, R.NOISE_TENSOR, 0, 0, False)
    yield "step: NOISE_TENSOR without noise", lambda: step(mo, x, None, None, None, None, c, R.NOISE_TENSOR, 0, 0,
                                                           False)
    yield "step: rescale length", lambda: step(torch.randn(2 * B, *SHAPE[1:]), x, None, None, short, None, c,
                                               R.GUIDED | R.RESCALE, 0, 0, False)
    yield "step: thresh length", lambda: step(mo, x, None, None, None, short, c, R.THRESH, 0, 0, False)
    yield "step: thresh 2-D", lambda: step(mo, x, None, None, None, long2d, c, R.THRESH, 0, 0, False)
    yield "step: THRESH without scales", lambda: step(mo, x, None, None, None, None, c, R.THRESH, 0, 0, False)
    yield "step: integer sample", lambda: step(mo.long(), x.long(), None, None, None, None, c, 0, 0, 0, False)
    yield "step: dtype mismatch", lambda: step(mo.double(), x, None, None, None, None, c, 0, 0, 0, False)
    yield "rescale: odd batch", lambda: OPS.guidance_rescale_factors(mo, 5.0, 0.5)
    yield "rescale: integer", lambda: OPS.guidance_rescale_factors(torch.ones(2 * B, 4, dtype=torch.int32), 5.0, 0.5)
    th = OPS.diffusion_threshold_scales
    yield "thresh: rank past the end", lambda: th(mo, x, None, c, 0, x[0].numel(), 0.0, 1.0)
    yield "thresh: weight", lambda: th(mo, x, None, c, 0, 0, 1.5, 1.0)
    yield "thresh: rescale length", lambda: th(torch.randn(2 * B, *SHAPE[1:]), x, short, c, R.GUIDED | R.RESCALE, 0,
                                               0.0, 1.0)
    yield "thresh: shape", lambda: th(mo[:, :1], x, None, c, 0, 0, 0.0, 1.0)
    an = OPS.add_noise
    yield "add_noise: ca length 1 (the out-of-bounds read)", lambda: an(x, mo, short, v)
    yield "add_noise: cn length 1", lambda: an(x, mo, v, short)
    yield "add_noise: ca too long", lambda: an(x, mo, torch.rand(B + 1), v)
    yield "add_noise: ca 2-D", lambda: an(x, mo, long2d, v)
    yield "add_noise: noise shape", lambda: an(x, mo[:, :1], v, v)
    yield "add_noise: noise dtype", lambda: an(x, mo.double(), v, v)
    yield "add_noise: integer ca", lambda: an(x, mo, torch.ones(B, dtype=torch.int64), v)
    yield "add_noise: integer x0", lambda: an(x.long(), mo.long(), v, v)
    loss = OPS.diffusion_loss
    yield "loss: tx length", lambda: loss(mo, x, x, short, v, v)
    yield "loss: weight length", lambda: loss(mo, x, x, v, v, short)
    yield "loss: x0 shape", lambda: loss(mo, x[:, :1], x, v, v, v)
    yield "loss: noise dtype", lambda: loss(mo, x, x.double(), v, v, v)
    lb = OPS.diffusion_loss_backward
    yield "loss backward: grad length", lambda: lb(short, mo, x, x, v, v, v)
    yield "loss backward: tn length", lambda: lb(v, mo, x, x, v, short, v)
    dev = OPS.diffusion_step_dev
    ct, rng = torch.tensor(c), torch.tensor([1, 0])
    yield "step_dev: coefs length", lambda: dev(mo, x, None, ct[:3], rng, 0, False)
    yield "step_dev: rng dtype", lambda: dev(mo, x, None, ct, rng.float(), 0, False)
    yield "step_dev: rng length", lambda: dev(mo, x, None, ct, torch.tensor([1]), 0, False)
    yield "step_dev: HIST without history", lambda: dev(mo, x, None, ct, rng, R.HIST, False)
    yield "step_dev: shape", lambda: dev(mo[:, :1], x, None, ct, rng, 0, False)


CALLS = list(_bad_calls())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(CALLS)), ids=[name for name, _ in CALLS])
def test_every_diffusion_op_refuses_bad_operands(case, backend):
    skip_unless_runnable("diffusion_step", backend, torch.device("cpu"))
    name, call = CALLS[case]
    with gankern.use_backend(backend), pytest.raises((TypeError, ValueError)):
        call()


def test_every_custom_op_is_covered():
    """Each diffusion custom op appears in the bad-operand table above."""
    covered = {"step": "diffusion_step", "rescale": "guidance_rescale_factors", "thresh": "diffusion_threshold_scales",
               "add_noise": "add_noise", "loss": "diffusion_loss", "loss backward": "diffusion_loss_backward",
               "step_dev": "diffusion_step_dev"}
    names = {covered[n.split(":")[0]] for n, _ in CALLS}
    ops = {"diffusion_step", "guidance_rescale_factors", "diffusion_threshold_scales", "add_noise", "diffusion_loss",
           "diffusion_loss_backward", "diffusion_step_dev"}
    assert names == ops
    for op in ops:
        assert hasattr(OPS, op)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigma_scheduler_add_noise_one_timestep_regression(backend):
    """Euler / Euler ancestral / DPM-Solver add_noise with one timestep for a batch of 4: every
    sample noised with that timestep (samples 1-3 used to be garbage read past the coefficients)."""
    skip_unless_runnable("add_noise", backend, torch.device("cpu"))
    from gankern import schedulers as GS
    x, z = torch.rand(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    for cls in (GS.EulerDiscreteScheduler, GS.EulerAncestralDiscreteScheduler, GS.DPMSolverMultistepScheduler,
                GS.DDPMScheduler, GS.DDIMScheduler):
        s = cls()
        s.set_timesteps(10)
        t = s.timesteps[3]
        with gankern.use_backend(backend):
            one = s.add_noise(x, z, t[None])
            each = s.add_noise(x, z, t.repeat(4))
        torch.testing.assert_close(one, each, rtol=0, atol=0)
        torch.testing.assert_close(one[1:], s.add_noise(x[1:], z[1:], t.repeat(3)), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("max_value", [0.5, 0.9, 1.0, 2.0])
def test_threshold_scales_clamp_like_torch(backend, max_value):
    """s_b = torch.clamp(quantile, min=1, max=sample_max_value): below 1 the max wins (diffusers'
    _threshold_sample); the CPU kernel gave 1 there."""
    skip_unless_runnable("diffusion_threshold_scales", backend, torch.device("cpu"))
    torch.manual_seed(0)
    x = torch.randn(B, 4, 8, 8) * 3
    mo = torch.randn(B, 4, 8, 8)
    c = _coefs()
    lo, w = R.quantile_rank(0.9, x[0].numel())
    with gankern.use_backend(backend):
        s = OPS.diffusion_threshold_scales(mo, x, None, c, 0, lo, w, max_value)
    x0 = x * c[R.C_PX] + mo * c[R.C_PM]
    want = torch.quantile(x0.reshape(B, -1).abs(), 0.9, dim=1).clamp(min=1.0, max=max_value)
    torch.testing.assert_close(s.float(), want, rtol=1e-6, atol=1e-6)
    if max_value < 1:
        assert torch.all(s == max_value)
