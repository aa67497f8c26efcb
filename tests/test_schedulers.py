"""gankern.schedulers against diffusers' own schedulers, whole trajectories in fp32.

Each step is checked "teacher-forced": both schedulers get the same input (diffusers' previous
sample) and their prev_sample must agree within 1e-5 relative (|d| <= 1e-5 (|ref| + rms(ref))).
A free-running trajectory is checked too, looser, since float rounding compounds over steps.
Stochastic schedulers get the same noise: diffusers' randn_tensor is replaced by the Philox
reference (gankern.reference.random.randn) at the (seed, offset) gankern's kernels use.
"""
import math

import pytest
import torch

from gankern import schedulers as GS
from gankern.reference import random as ref_random

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install gankern[test])")

STEP_TOL = 1e-5
TRAJ_TOL = 1e-4
SHAPE = (2, 4, 8, 8)


def model(x, t):
    """A smooth stand-in for a UNet: depends on x and t, output of unit scale."""
    return torch.sin(1.3 * x + 1e-3 * float(t)) * 0.9 + 0.05 * x


def rel_err(out, ref):
    scale = ref.double().pow(2).mean().sqrt()
    return ((out.double() - ref.double()).abs() / (ref.double().abs() + scale)).max().item()


def rescale_noise_cfg(noise_cfg, noise_pred_text, guidance_rescale=0.0):
    """diffusers' StableDiffusionPipeline rescale_noise_cfg, verbatim (importing it needs transformers)."""
    std_text = noise_pred_text.std(dim=list(range(1, noise_pred_text.ndim)), keepdim=True)
    std_cfg = noise_cfg.std(dim=list(range(1, noise_cfg.ndim)), keepdim=True)
    noise_pred_rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * noise_pred_rescaled + (1 - guidance_rescale) * noise_cfg


class PhiloxNoise:
    """Replaces diffusers' randn_tensor: the k-th call returns randn(shape, seed, offset_k), offsets
    advancing by ceil(numel / 4), as gankern's scheduler draws its in-kernel noise."""

    def __init__(self, seed):
        self.seed, self.offset = seed, 0

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        z = ref_random.randn(tuple(shape), self.seed, self.offset, dtype=torch.float32)
        self.offset += (math.prod(shape) + 3) // 4
        return z.to(dtype or torch.float32)


def _patch_noise(monkeypatch, dcls, seed):
    mod = __import__(dcls.__module__, fromlist=["randn_tensor"])
    monkeypatch.setattr(mod, "randn_tensor", PhiloxNoise(seed))


def run_pair(dcls, gcls, cfg, n=12, step_kw=None, monkeypatch=None, seed=1234, var_channels=False,
             guidance=None, rescale=0.0, shape=SHAPE):
    step_kw = step_kw or {}
    # variance channels: in [-1, 1] for learned_range, positive for learned (a variance)
    var_fn = (lambda m: 1e-3 + 0.01 * torch.sigmoid(m)) if cfg.get("variance_type") == "learned" else torch.tanh
    d = dcls(**cfg)
    g = gcls.from_config(d.config)
    if monkeypatch is not None:
        _patch_noise(monkeypatch, dcls, seed)
        g.manual_seed(seed)
    d.set_timesteps(n)
    g.set_timesteps(n)
    assert torch.equal(d.timesteps.double(), g.timesteps.double())
    torch.manual_seed(0)
    x = torch.randn(shape) * float(d.init_noise_sigma)
    x_free = x.clone()
    worst_step = worst_traj = 0.0
    for t in d.timesteps:
        # teacher-forced: both from diffusers' sample
        xin_d = d.scale_model_input(x, t)
        xin_g = g.scale_model_input(x, t)
        assert rel_err(xin_g, xin_d) <= STEP_TOL
        mo = model(xin_d, t)
        if var_channels:
            mo = torch.cat([mo, var_fn(mo)], 1)
        if guidance is not None:
            # the model's batched output: unconditional half first
            mo_u = mo
            mo_c = model(xin_d * 0.9, t)
            if var_channels:
                mo_c = torch.cat([mo_c, var_fn(mo_c)], 1)
            mo2 = torch.cat([mo_u, mo_c])
            C = shape[1]
            guided = mo_u[:, :C] + guidance * (mo_c[:, :C] - mo_u[:, :C])
            if rescale:
                guided = rescale_noise_cfg(guided, mo_c[:, :C], guidance_rescale=rescale)
            if var_channels:  # diffusers' pipelines (DeepFloyd IF) re-attach the conditional variance
                guided = torch.cat([guided, mo_c[:, C:]], 1)
            od = d.step(guided, t, x, **step_kw)
            og = g.step(mo2, t, x, guidance_scale=guidance, guidance_rescale=rescale, **step_kw)
        else:
            od = d.step(mo, t, x, **step_kw)
            og = g.step(mo, t, x, **step_kw)
        worst_step = max(worst_step, rel_err(og.prev_sample, od.prev_sample))
        if getattr(od, "pred_original_sample", None) is not None:
            worst_step = max(worst_step, rel_err(og.pred_original_sample, od.pred_original_sample))
        x = od.prev_sample
    assert worst_step <= STEP_TOL, f"per-step error {worst_step:.3g}"
    # free-running (deterministic schedulers only: the noise streams would interleave differently)
    if monkeypatch is None and guidance is None:
        d2 = dcls(**cfg)
        g2 = gcls.from_config(d2.config)
        d2.set_timesteps(n)
        g2.set_timesteps(n)
        xd, xg = x_free.clone(), x_free.clone()
        for t in d2.timesteps:
            md = model(d2.scale_model_input(xd, t), t)
            mg = model(g2.scale_model_input(xg, t), t)
            if var_channels:
                md, mg = torch.cat([md, var_fn(md)], 1), torch.cat([mg, var_fn(mg)], 1)
            xd = d2.step(md, t, xd, **step_kw).prev_sample
            xg = g2.step(mg, t, xg, **step_kw).prev_sample
            worst_traj = max(worst_traj, rel_err(xg, xd))
        assert worst_traj <= TRAJ_TOL, f"trajectory error {worst_traj:.3g}"


PREDS = ["epsilon", "v_prediction", "sample"]
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


# ---- DDIM -------------------------------------------------------------------------------------

DDIM_OPTIONS = [
    {},
    dict(clip_sample=False),
    dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1, **SD),
    dict(clip_sample=False, timestep_spacing="trailing", rescale_betas_zero_snr=True, **SD),
    dict(clip_sample=False, timestep_spacing="linspace", beta_schedule="squaredcos_cap_v2"),
    dict(thresholding=True, sample_max_value=1.5, dynamic_thresholding_ratio=0.9),
    dict(clip_sample=True, clip_sample_range=0.7, trained_betas=torch.linspace(1e-4, 0.02, 1000).tolist()),
]


@pytest.mark.parametrize("pred", PREDS)
@pytest.mark.parametrize("opts", DDIM_OPTIONS, ids=lambda o: ",".join(sorted(o)) or "default")
def test_ddim(pred, opts):
    if opts.get("rescale_betas_zero_snr") and pred != "v_prediction":
        pytest.skip("zero terminal SNR needs v_prediction (diffusers returns NaN otherwise)")
    run_pair(diffusers.DDIMScheduler, GS.DDIMScheduler, dict(prediction_type=pred, **opts))


@pytest.mark.parametrize("pred", PREDS)
def test_ddim_clipped_model_output(pred):
    run_pair(diffusers.DDIMScheduler, GS.DDIMScheduler, dict(prediction_type=pred, clip_sample_range=0.8),
             step_kw=dict(use_clipped_model_output=True))


@pytest.mark.parametrize("pred", PREDS)
def test_ddim_eta(pred, monkeypatch):
    run_pair(diffusers.DDIMScheduler, GS.DDIMScheduler, dict(prediction_type=pred, clip_sample=False),
             step_kw=dict(eta=0.7), monkeypatch=monkeypatch)


@pytest.mark.parametrize("rescale", [0.0, 0.7])
def test_ddim_guidance(rescale):
    run_pair(diffusers.DDIMScheduler, GS.DDIMScheduler, dict(clip_sample=False, **SD), guidance=7.5, rescale=rescale)


# ---- DDPM -------------------------------------------------------------------------------------

@pytest.mark.parametrize("pred", PREDS)
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large", "learned",
                                           "learned_range"])
def test_ddpm(pred, variance_type, monkeypatch):
    run_pair(diffusers.DDPMScheduler, GS.DDPMScheduler, dict(prediction_type=pred, variance_type=variance_type),
             monkeypatch=monkeypatch, var_channels=variance_type.startswith("learned"))


DDPM_OPTIONS = [
    dict(clip_sample=False, timestep_spacing="trailing", **SD),
    dict(thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=2.0),
    dict(clip_sample=False, beta_schedule="sigmoid", timestep_spacing="linspace"),
    dict(clip_sample=False, rescale_betas_zero_snr=True, timestep_spacing="trailing"),
]


@pytest.mark.parametrize("opts", DDPM_OPTIONS, ids=lambda o: ",".join(sorted(o)))
def test_ddpm_options(opts, monkeypatch):
    if opts.get("rescale_betas_zero_snr"):
        opts = dict(opts, prediction_type="v_prediction")
    run_pair(diffusers.DDPMScheduler, GS.DDPMScheduler, opts, monkeypatch=monkeypatch)


def test_ddpm_guided_learned_range(monkeypatch):
    run_pair(diffusers.DDPMScheduler, GS.DDPMScheduler, dict(variance_type="learned_range"), monkeypatch=monkeypatch,
             var_channels=True, guidance=4.0)


# ---- Euler ------------------------------------------------------------------------------------

EULER_OPTIONS = [
    dict(**SD),
    dict(use_karras_sigmas=True, **SD),
    dict(use_exponential_sigmas=True),
    dict(use_beta_sigmas=True),
    dict(interpolation_type="log_linear"),
    dict(final_sigmas_type="sigma_min", timestep_spacing="leading", steps_offset=1, **SD),
    dict(timestep_spacing="trailing", rescale_betas_zero_snr=True),
    dict(use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0),
]


@pytest.mark.parametrize("pred", PREDS)
@pytest.mark.parametrize("opts", EULER_OPTIONS, ids=lambda o: ",".join(sorted(o)))
def test_euler(pred, opts):
    if opts.get("use_beta_sigmas"):
        pytest.importorskip("scipy", reason="use_beta_sigmas needs scipy")
    run_pair(diffusers.EulerDiscreteScheduler, GS.EulerDiscreteScheduler, dict(prediction_type=pred, **opts))


def test_euler_continuous_v():
    run_pair(diffusers.EulerDiscreteScheduler, GS.EulerDiscreteScheduler,
             dict(prediction_type="v_prediction", timestep_type="continuous", use_karras_sigmas=True))


@pytest.mark.parametrize("pred", PREDS)
def test_euler_churn(pred, monkeypatch):
    run_pair(diffusers.EulerDiscreteScheduler, GS.EulerDiscreteScheduler, dict(prediction_type=pred),
             step_kw=dict(s_churn=4.0, s_tmin=0.5, s_tmax=50.0, s_noise=1.003), monkeypatch=monkeypatch)


def test_euler_guidance():
    run_pair(diffusers.EulerDiscreteScheduler, GS.EulerDiscreteScheduler, dict(**SD), guidance=5.0, rescale=0.3)


# ---- Euler ancestral --------------------------------------------------------------------------

@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("opts", [dict(**SD), dict(timestep_spacing="leading", steps_offset=1),
                                  dict(timestep_spacing="trailing", rescale_betas_zero_snr=True)],
                         ids=lambda o: ",".join(sorted(o)))
def test_euler_ancestral(pred, opts, monkeypatch):
    run_pair(diffusers.EulerAncestralDiscreteScheduler, GS.EulerAncestralDiscreteScheduler,
             dict(prediction_type=pred, **opts), monkeypatch=monkeypatch)


def test_euler_ancestral_guidance(monkeypatch):
    run_pair(diffusers.EulerAncestralDiscreteScheduler, GS.EulerAncestralDiscreteScheduler, dict(**SD),
             monkeypatch=monkeypatch, guidance=7.5)


# ---- DPM-Solver++ -----------------------------------------------------------------------------

DPM_OPTIONS = [
    dict(),
    dict(solver_type="heun"),
    dict(use_karras_sigmas=True, **SD),
    dict(use_lu_lambdas=True),
    dict(use_exponential_sigmas=True, solver_type="heun"),
    dict(thresholding=True, sample_max_value=1.2),
    dict(solver_order=1),
    dict(final_sigmas_type="sigma_min", lower_order_final=False),
    dict(euler_at_final=True, timestep_spacing="trailing"),
    dict(timestep_spacing="leading", steps_offset=1, lambda_min_clipped=-5.1),
]


@pytest.mark.parametrize("pred", PREDS)
@pytest.mark.parametrize("opts", DPM_OPTIONS, ids=lambda o: ",".join(sorted(o)) or "default")
def test_dpm_solver(pred, opts):
    run_pair(diffusers.DPMSolverMultistepScheduler, GS.DPMSolverMultistepScheduler, dict(prediction_type=pred, **opts))


@pytest.mark.parametrize("n", [8, 20])
def test_dpm_solver_lengths(n):
    run_pair(diffusers.DPMSolverMultistepScheduler, GS.DPMSolverMultistepScheduler, {}, n=n)


@pytest.mark.parametrize("pred", PREDS)
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_dpm_solver_sde(pred, solver_type, monkeypatch):
    run_pair(diffusers.DPMSolverMultistepScheduler, GS.DPMSolverMultistepScheduler,
             dict(prediction_type=pred, algorithm_type="sde-dpmsolver++", solver_type=solver_type),
             monkeypatch=monkeypatch)


def test_dpm_solver_guidance():
    run_pair(diffusers.DPMSolverMultistepScheduler, GS.DPMSolverMultistepScheduler, dict(use_karras_sigmas=True, **SD),
             guidance=7.5, rescale=0.5)


def test_dpm_learned_variance_channels():
    run_pair(diffusers.DPMSolverMultistepScheduler, GS.DPMSolverMultistepScheduler,
             dict(variance_type="learned_range"), var_channels=True, shape=(2, 3, 8, 8))  # diffusers slices [:, :3]


# ---- the rest of the scheduler API ------------------------------------------------------------

@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler",
                                  "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_add_noise_and_attributes(name):
    d = getattr(diffusers, name)(**SD)
    g = getattr(GS, name).from_config(d.config)
    d.set_timesteps(10)
    g.set_timesteps(10)
    assert float(g.init_noise_sigma) == pytest.approx(float(d.init_noise_sigma), rel=1e-6)
    torch.manual_seed(0)
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = d.timesteps[[2, 5]]
    assert rel_err(g.add_noise(x0, noise, t), d.add_noise(x0, noise, t)) <= STEP_TOL
    assert len(g) == len(d)
    assert g.config.beta_schedule == "scaled_linear"


def test_from_config_drops_foreign_options():
    cfg = dict(diffusers.PNDMScheduler(skip_prk_steps=True, steps_offset=1).config)
    g = GS.DDIMScheduler.from_config(cfg)
    assert g.config.steps_offset == 1


def test_pipeline_drop_in(monkeypatch):
    """DDPMPipeline runs with a gankern scheduler in place of diffusers' and gives its result."""
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    d = diffusers.DDPMScheduler(num_train_timesteps=50)
    g = GS.DDPMScheduler.from_config(d.config)
    g.manual_seed(7)
    _patch_noise(monkeypatch, diffusers.DDPMScheduler, 7)
    gen = torch.Generator().manual_seed(0)
    ref = diffusers.DDPMPipeline(unet=unet, scheduler=d)(batch_size=1, generator=gen, num_inference_steps=5,
                                                            output_type="np").images
    # generator=None in the pipeline's step call keeps the scheduler's own Philox stream
    monkeypatch.setattr(g, "step", _drop_generator(g.step))
    gen = torch.Generator().manual_seed(0)
    out = diffusers.DDPMPipeline(unet=unet, scheduler=g)(batch_size=1, generator=gen, num_inference_steps=5,
                                                            output_type="np").images
    assert abs(out - ref).max() < 1e-4


def _drop_generator(step):
    def wrapped(*args, generator=None, **kw):
        return step(*args, **kw)
    return wrapped


# ---- errors -----------------------------------------------------------------------------------

def test_bad_config_and_inputs():
    with pytest.raises(ValueError, match="prediction_type"):
        GS.DDIMScheduler(prediction_type="flow")
    with pytest.raises(ValueError, match="prediction_type"):
        GS.EulerAncestralDiscreteScheduler(prediction_type="sample")
    with pytest.raises(ValueError, match="solver_order"):
        GS.DPMSolverMultistepScheduler(solver_order=4)
    with pytest.raises(ValueError, match="algorithm_type"):
        GS.DPMSolverMultistepScheduler(algorithm_type="dpmsolver3")
    with pytest.raises(ValueError, match="final_sigmas_type"):  # diffusers refuses this pair too
        GS.DPMSolverMultistepScheduler(algorithm_type="dpmsolver", final_sigmas_type="zero")
    with pytest.raises(ValueError, match="fixed_large_log"):
        GS.DDPMScheduler(variance_type="fixed_large_log")
    with pytest.raises(ValueError, match="beta_schedule"):
        GS.DDIMScheduler(beta_schedule="cubic")
    with pytest.raises(ValueError, match="unknown config"):
        GS.DDIMScheduler(not_an_option=1)
    s = GS.DDIMScheduler()
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, 1, x)
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="outside"):
        s.step(x, 1000, x)
    t = s.timesteps[0]
    with pytest.raises(ValueError, match="2\\*B"):
        s.step(x, t, x, guidance_scale=7.5)
    with pytest.raises(ValueError, match="does not match"):
        s.step(x[:, :3], t, x)
    with pytest.raises(ValueError, match="eta"):
        s.step(x, t, x, eta=-1.0)
    with pytest.raises(TypeError, match="model_output"):
        s.step(x.long(), t, x)
    e = GS.EulerDiscreteScheduler()
    e.set_timesteps(10)
    with pytest.raises(ValueError, match="not in the schedule"):
        e.step(x, torch.tensor(3.5), x)


def test_pipeline_config_patch():
    """Stable Diffusion's pipeline rewrites outdated configs through scheduler._internal_dict."""
    g = GS.DDIMScheduler(clip_sample=True, steps_offset=0)
    new = dict(g.config)
    new["steps_offset"], new["clip_sample"] = 1, False
    g._internal_dict = diffusers.configuration_utils.FrozenDict(new)
    assert g.config.steps_offset == 1 and g.config.clip_sample is False
    g.set_timesteps(10)
    assert int(g.timesteps[-1]) == 1
