"""Issue #15's reproducers, as written there, one test each (the contract suite, tests/test_contract.py,
checks the same classes for every op; these pin the reported cases)."""
import math

import pytest
import torch

import gankern
from gankern import schedulers as S

from conftest import KERNEL_BACKENDS, assert_close, skip_unless_runnable


def _acp():
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float()


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


# ---- 1. fake kernels state the real strides --------------------------------------------------

@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_compiled_add_noise_on_channels_last(backend):
    skip_unless_runnable("add_noise", backend, "cpu")
    torch._dynamo.reset()
    a, b = _cl(torch.randn(2, 4, 8, 8)), _cl(torch.randn(2, 4, 8, 8))
    t, acp = torch.tensor([10, 500]), _acp()
    f = torch.compile(lambda a, b: gankern.add_noise(a, b, t, acp) * 2, fullgraph=True)
    with gankern.use_backend(backend):
        out = f(a, b)
    assert_close(out, gankern.add_noise(a.double(), b.double(), t, acp) * 2)


def test_compiled_scheduler_step_on_channels_last():
    torch._dynamo.reset()
    s = S.DDIMScheduler()
    s.set_timesteps(10)
    t = int(s.timesteps[3])
    mo, x = _cl(torch.randn(1, 4, 8, 8)), _cl(torch.randn(1, 4, 8, 8))
    f = torch.compile(lambda mo, x: s.step(mo, t, x).prev_sample * 2, fullgraph=True)
    out = f(mo, x)
    s2 = S.DDIMScheduler()
    s2.set_timesteps(10)
    assert_close(out, s2.step(mo.double(), t, x.double()).prev_sample * 2)


@pytest.mark.parametrize("op", ["group_norm_act", "batch_norm_act"])
def test_compiled_norm_on_permuted_input(op):
    torch._dynamo.reset()
    x = torch.randn(2, 4, 5, 3).transpose(2, 3)  # (2, 4, 3, 5), dense but neither NCHW nor NHWC
    rm, rv = torch.zeros(4), torch.ones(4)
    call = {"group_norm_act": lambda x: gankern.group_norm_act(x, 2) * 2,
            "batch_norm_act": lambda x: gankern.batch_norm_act(x, rm, rv) * 2}[op]
    out = torch.compile(call, fullgraph=True)(x)
    with gankern.use_backend("reference"):
        assert_close(out, call(x.double()))


def test_opcheck_on_channels_last_and_permuted():
    """The five ops the issue names, with the inputs that made test_faketensor fail."""
    from gankern.ops import diffusion as D
    from gankern.reference import diffusion as R
    for x in (_cl(torch.randn(2, 4, 3, 5)), torch.randn(2, 4, 5, 3).transpose(2, 3)):
        ca, cn = torch.rand(2), torch.rand(2)
        torch.library.opcheck(torch.ops.gankern.add_noise.default, (x, x * 2, ca, cn))
        coefs = [0.0] * R.NCOEF
        coefs[R.C_PX], coefs[R.C_PM], coefs[R.C_A], coefs[R.C_B] = 1.0, -0.5, 0.5, 0.5
        torch.library.opcheck(torch.ops.gankern.diffusion_step.default,
                              (x * 3, x, None, None, None, None, coefs, 0, 0, 0, True))
        torch.library.opcheck(torch.ops.gankern.diffusion_loss_backward.default,
                              (torch.ones(2), x, x * 2, x * 3, ca, cn, torch.ones(2)))
        torch.library.opcheck(torch.ops.gankern.group_norm_act.default,
                              (x, 2, None, None, 1e-5, "silu", 0.0, None, None, None, None))
        torch.library.opcheck(torch.ops.gankern.batch_norm_act.default,
                              (x, None, None, torch.zeros(4), torch.ones(4), False, 1e-5, "relu", 0.0, None))
        assert D  # the module registers the ops


# ---- 2. empty tensors ----------------------------------------------------------------------

def test_group_norm_empty_batch_backward_cpu():
    skip_unless_runnable("group_norm_act", "cpu", "cpu")
    x = torch.randn(0, 8, 4, 4, requires_grad=True)
    with gankern.use_backend("cpu"):
        gankern.group_norm_act(x, 2).sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("shape", [(0, 8, 4, 4), (2, 0, 4, 4), (2, 8, 0, 4)], ids=["N=0", "C=0", "HW=0"])
def test_group_norm_empty_forward_backward(backend, shape):
    skip_unless_runnable("group_norm_act", backend, "cpu")
    x = torch.randn(shape, requires_grad=True)
    w = torch.randn(shape[1], requires_grad=True)
    with gankern.use_backend(backend):
        y = gankern.group_norm_act(x, 2, w)
        y.sum().backward()
    assert y.shape == x.shape and x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w))  # as torch.nn.functional.group_norm gives


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_diffusion_loss_empty_batch(backend):
    skip_unless_runnable("diffusion_loss", backend, "cpu")
    mo = torch.randn(0, 4, 8, 8, requires_grad=True)
    with gankern.use_backend(backend):
        loss = gankern.diffusion_loss(mo, torch.randn(0, 4, 8, 8), torch.randn(0, 4, 8, 8),
                                      torch.zeros(0, dtype=torch.long), _acp(), reduction="none")
        loss.sum().backward()
    assert loss.shape == (0,) and mo.grad.shape == mo.shape


# ---- 3. the weighting gradient ----------------------------------------------------------------

@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
def test_diffusion_loss_weighting_gradient(backend, pred):
    skip_unless_runnable("diffusion_loss", backend, "cpu")
    g = torch.Generator().manual_seed(0)
    mo, x0, noise = (torch.randn(3, 4, 5, 5, generator=g) for _ in range(3))
    t = torch.tensor([3, 400, 999])
    acp = _acp().requires_grad_()  # a learned schedule gets its gradient too
    w = (torch.rand(3, generator=g) + 0.5).requires_grad_()
    with gankern.use_backend(backend):
        gankern.diffusion_loss(mo, x0, noise, t, acp, pred, weighting=w).backward()
    # torch's own formulation
    w2, acp2 = w.detach().double().requires_grad_(), acp.detach().double().requires_grad_()
    a = acp2[t]
    target = noise.double() if pred == "epsilon" else (a.sqrt()[:, None, None, None] * noise.double()
                                                       - (1 - a).sqrt()[:, None, None, None] * x0.double())
    ((mo.double() - target).pow(2).mean((1, 2, 3)) * w2).mean().backward()
    assert_close(w.grad, w2.grad, what="weighting grad")
    if pred == "epsilon":  # the target does not involve the schedule
        assert acp.grad is None and acp2.grad is None
    else:
        assert_close(acp.grad, acp2.grad, what="alphas_cumprod grad")


# ---- 4. the residual device check -------------------------------------------------------------

def test_batch_norm_residual_on_another_device():
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="residual"):
        gankern.batch_norm_act(x, torch.zeros(4), torch.ones(4), residual=torch.randn(2, 4, 3, 3, device="meta"))


# ---- 5. inf/NaN: terms with a zero coefficient -----------------------------------------------

@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_ddpm_last_step_with_inf_model_output(backend):
    skip_unless_runnable("diffusion_step", backend, "cpu")
    s = S.DDPMScheduler()
    s.set_timesteps(10)
    mo, x = torch.full((1, 4, 4, 4), math.inf), torch.randn(1, 4, 4, 4)
    with gankern.use_backend(backend):
        prev = s.step(mo, s.timesteps[-1], x).prev_sample
    assert torch.equal(prev, torch.full_like(prev, -1.0))  # x0 clipped to -1, no x_t term: as diffusers


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("cls", [S.EulerDiscreteScheduler, S.DPMSolverMultistepScheduler])
def test_sample_prediction_with_inf_model_output(backend, cls):
    skip_unless_runnable("diffusion_step", backend, "cpu")
    mo, x = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    mo[0, 0, 0, 0] = math.inf

    def step(be, mo, x):
        s = cls(prediction_type="sample")
        s.set_timesteps(10)
        with gankern.use_backend(be):
            return s.step(mo, s.timesteps[2], x).prev_sample
    got, want = step(backend, mo, x), step("reference", mo.double(), x.double())
    assert torch.isinf(want[0, 0, 0, 0]) and not torch.isnan(want).any()
    assert_close(got, want)


# ---- 6. torch.export of the sampling layer with a drawn seed ------------------------------------

@pytest.mark.parametrize("strict", [False, True])
def test_export_reparameterize_train(strict):
    m = gankern.nn.Reparameterize().train()
    mu, logvar = torch.randn(2, 8), torch.randn(2, 8)
    ep = torch.export.export(m, (mu, logvar), strict=strict)
    torch.manual_seed(5)
    got = ep.module()(mu, logvar)
    torch.manual_seed(5)
    assert_close(got, m(mu, logvar))


# ---- 7. clear errors ----------------------------------------------------------------------------

def test_diffusion_loss_weighting_list():
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(TypeError, match="weighting"):
        gankern.diffusion_loss(x, x, x, torch.tensor([1, 2]), _acp(), weighting=[1.0, 1.0])


def test_step_guidance_scale_inf():
    s = S.DDIMScheduler()
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="guidance_scale"):
        s.step(torch.randn(2, 4, 3, 3), s.timesteps[0], torch.randn(1, 4, 3, 3), guidance_scale=math.inf)


@pytest.mark.parametrize("cls", [S.DDIMScheduler, S.DDPMScheduler])
def test_step_nan_timestep(cls):
    s = cls()
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="timestep"):
        s.step(torch.randn(1, 4, 3, 3), float("nan"), torch.randn(1, 4, 3, 3))


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "0", "abc"])
def test_cli_bench_budget(value, capsys):
    from gankern.cli import main
    with pytest.raises(SystemExit) as e:
        main(["bench", "--budget", value])
    assert e.value.code == 2  # argparse's usage error: a message, not a traceback
    assert "--budget" in capsys.readouterr().err


def test_bench_run_budget():
    from gankern.bench.runner import run
    with pytest.raises(ValueError, match="budget"):
        run("cpu", ["bias_act"], budget=-1.0)
