"""The diffusion ops under contract: the training ops and, through the schedulers, the fused step."""
import torch

import gankern
from gankern import schedulers as S
from contract import Case, fused_step_trace

SHAPE = (2, 4, 3, 5)
STEP_OPS = ("diffusion_step",)
_NOT_DIFFERENTIABLE = "the fused sampling step is not differentiable; sample under torch.no_grad() or detach()"


def _acp():
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float()


def _train_make(shape, gen):
    r = lambda: torch.randn(shape, generator=gen)  # noqa: E731
    B = shape[0]
    return {"model_output": r(), "x0": r(), "noise": r(),
            "timesteps": torch.randint(0, 1000, (B,), generator=gen), "alphas_cumprod": _acp(),
            "weighting": torch.rand(B, generator=gen) + 0.5}


def _add_noise_make(shape, gen):
    t = _train_make(shape, gen)
    return {k: t[k] for k in ("x0", "noise", "timesteps", "alphas_cumprod")}


def _add_noise(x0, noise, timesteps, alphas_cumprod):
    return gankern.add_noise(x0, noise, timesteps, alphas_cumprod)


def _loss(prediction_type, reduction):
    def call(model_output, x0, noise, timesteps, alphas_cumprod, weighting):
        return gankern.diffusion_loss(model_output, x0, noise, timesteps, alphas_cumprod, prediction_type,
                                      weighting=weighting, reduction=reduction)
    return call


def _step_make(guided=False):
    def make(shape, gen):
        B = shape[0]
        mo_shape = ((2 * B) if guided else B,) + tuple(shape[1:])
        return {"model_output": torch.randn(mo_shape, generator=gen), "sample": 2 * torch.randn(shape, generator=gen)}
    return make


def _step(cls, step_at, config=None, steps=1, **step_kw):
    """A fresh scheduler (steps are stateful) set to 10 steps; `steps` steps from step `step_at`, each
    with the same model output; returns (prev_sample, pred_original_sample) of the last."""
    def call(model_output, sample):
        s = cls(**(config or {}))
        s.set_timesteps(10)
        x = sample
        for i in range(steps):
            kw = dict(step_kw)
            if "generator" in kw:
                kw["generator"] = torch.Generator().manual_seed(3 + i)
            out = s.step(model_output, s.timesteps[step_at + i], x, **kw)
            x = out.prev_sample
        return out.prev_sample, out.pred_original_sample
    return call


def _step_case(id, call, make=None, ops=()):
    return Case(id, call, make or _step_make(), SHAPE, STEP_OPS + ops, layout_args=("sample", "model_output"),
                no_grad={"model_output": _NOT_DIFFERENTIABLE, "sample": _NOT_DIFFERENTIABLE},
                trace=fused_step_trace(call))


CASES = [
    Case("add_noise", _add_noise, _add_noise_make, SHAPE, ("add_noise",), layout_args=("x0", "noise"),
         int_args=("timesteps",), host_args=("timesteps", "alphas_cumprod"), expand=("noise",),
         nonfinite_args=("x0", "noise")),
    Case("diffusion_loss_v_none", _loss("v_prediction", "none"), _train_make, SHAPE,
         ("diffusion_loss", "diffusion_loss_backward"), layout_args=("model_output", "x0", "noise"),
         int_args=("timesteps",), host_args=("timesteps", "alphas_cumprod"), expand=("x0",),
         nonfinite_args=("model_output", "x0", "noise", "weighting")),
    Case("diffusion_loss_eps_mean", _loss("epsilon", "mean"), _train_make, SHAPE,
         ("diffusion_loss", "diffusion_loss_backward"), layout_args=("model_output", "x0", "noise"),
         int_args=("timesteps",), host_args=("timesteps", "alphas_cumprod"),
         nonfinite_args=("model_output", "noise", "weighting")),
    # the last DDPM step: the coefficient of x_t is exactly 0 and x0 is clipped (issue #15, item 5)
    _step_case("ddpm_last_step", _step(S.DDPMScheduler, 9)),
    _step_case("ddpm_stochastic_thresholding",
               _step(S.DDPMScheduler, 3, dict(thresholding=True, dynamic_thresholding_ratio=0.9,
                                              sample_max_value=1.5), generator=True),
               ops=("diffusion_threshold_scales",)),
    _step_case("ddim_guided_rescaled", _step(S.DDIMScheduler, 4, guidance_scale=5.0, guidance_rescale=0.5),
               _step_make(guided=True), ops=("guidance_rescale_factors",)),
    # prediction_type="sample": the epsilon term's coefficient is exactly 0 (issue #15, item 5)
    _step_case("euler_sample_prediction", _step(S.EulerDiscreteScheduler, 2, dict(prediction_type="sample"))),
    _step_case("dpm_solver_sample_prediction",
               _step(S.DPMSolverMultistepScheduler, 0, dict(prediction_type="sample"), steps=2)),
]
