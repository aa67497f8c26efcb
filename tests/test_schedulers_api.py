"""The behaviours diffusers' own scheduler test suite checks, for gankern's five schedulers.

diffusers' suite (tests/schedulers/test_scheduler_{ddim,ddpm,euler,euler_ancestral,dpm_multi}.py
and its base) was read to learn the contract; these are gankern's own tests of it. Where the suite
compares against hard-coded numbers, these compare against diffusers' scheduler itself with the
same inputs and the same torch.Generator, which is the stronger statement (every element, not a
sum). Every case is listed per scheduler in CASES, so a gap is visible in one place.
"""
import copy
import inspect
import json
import os
import pickle

import numpy as np
import pytest
import torch

from gankern import schedulers as GS

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install gankern[test])")

NAMES = ["DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
         "DPMSolverMultistepScheduler"]
SIGMA_NAMES = NAMES[2:]

# the suite's base configs
BASE = {
    "DDPMScheduler": dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                          variance_type="fixed_small", clip_sample=True),
    "DDIMScheduler": dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                          clip_sample=True),
    "EulerDiscreteScheduler": dict(num_train_timesteps=1100, beta_start=0.0001, beta_end=0.02,
                                   beta_schedule="linear"),
    "EulerAncestralDiscreteScheduler": dict(num_train_timesteps=1100, beta_start=0.0001, beta_end=0.02,
                                            beta_schedule="linear"),
    "DPMSolverMultistepScheduler": dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                                        beta_schedule="linear", solver_order=2, prediction_type="epsilon",
                                        thresholding=False, sample_max_value=1.0, algorithm_type="dpmsolver++",
                                        solver_type="midpoint", lower_order_final=False, euler_at_final=False,
                                        lambda_min_clipped=-float("inf"), variance_type=None,
                                        final_sigmas_type="sigma_min"),
}


def _dpm_variants():
    out = [dict(num_train_timesteps=n) for n in (25, 50, 100, 999, 1000)]
    out += [dict(prediction_type=p) for p in ("epsilon", "v_prediction", "sample")]
    for algo in ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"):
        for st in ("midpoint", "heun"):
            for order in (1, 2, 3):
                if algo == "sde-dpmsolver" and order == 3:
                    continue  # diffusers has no third-order update for it
                for pred in ("epsilon", "sample"):
                    out.append(dict(solver_order=order, solver_type=st, prediction_type=pred, algorithm_type=algo))
    for order in (1, 2, 3):
        for st in ("midpoint", "heun"):
            for smv in (0.5, 1.0, 2.0):
                out.append(dict(thresholding=True, sample_max_value=smv, solver_order=order, solver_type=st))
    out += [dict(lower_order_final=v) for v in (True, False)] + [dict(euler_at_final=v) for v in (True, False)]
    out += [dict(lambda_min_clipped=v) for v in (-float("inf"), -5.1)]
    out += [dict(variance_type=v) for v in (None, "learned_range")]
    out += [dict(rescale_betas_zero_snr=True, prediction_type="v_prediction"), dict(use_beta_sigmas=True),
            dict(use_exponential_sigmas=True), dict(use_karras_sigmas=True, prediction_type="v_prediction"),
            dict(use_lu_lambdas=True, prediction_type="v_prediction"), dict(final_sigmas_type="zero"),
            dict(thresholding=True, dynamic_thresholding_ratio=0.87, sample_max_value=0.5),
            dict(use_karras_sigmas=True, final_sigmas_type="sigma_min")]  # the h = 0 step
    return out


# option variants the suite runs per scheduler (check_over_configs / full loops)
CASES = {
    "DDPMScheduler": [dict(num_train_timesteps=n) for n in (5, 100, 1000)]
    + [dict(beta_start=a, beta_end=b) for a, b in zip([0.0001, 0.001, 0.01, 0.1], [0.002, 0.02, 0.2, 2])]
    + [dict(beta_schedule=s) for s in ("linear", "squaredcos_cap_v2")]
    + [dict(variance_type=v) for v in ("fixed_small", "fixed_large", "other")]
    + [dict(clip_sample=c) for c in (True, False)]
    + [dict(thresholding=True, prediction_type=p, sample_max_value=m)
       for m in (0.5, 1.0, 2.0) for p in ("epsilon", "sample", "v_prediction")]
    + [dict(prediction_type=p) for p in ("epsilon", "sample", "v_prediction")],
    "DDIMScheduler": [dict(num_train_timesteps=n) for n in (100, 500, 1000)]
    + [dict(steps_offset=o) for o in (0, 1)]
    + [dict(beta_start=a, beta_end=b) for a, b in zip([0.0001, 0.001, 0.01, 0.1], [0.002, 0.02, 0.2, 2])]
    + [dict(beta_schedule=s) for s in ("linear", "squaredcos_cap_v2")]
    + [dict(prediction_type=p) for p in ("epsilon", "v_prediction")]
    + [dict(clip_sample=c) for c in (True, False)]
    + [dict(timestep_spacing=s) for s in ("trailing", "leading")]
    + [dict(rescale_betas_zero_snr=True, prediction_type="v_prediction")]
    + [dict(thresholding=True, prediction_type=p, sample_max_value=m)
       for m in (0.5, 1.0, 2.0) for p in ("epsilon", "v_prediction")]
    + [dict(set_alpha_to_one=True, beta_start=0.01), dict(set_alpha_to_one=False, beta_start=0.01)],
    "EulerDiscreteScheduler": [dict(num_train_timesteps=n) for n in (10, 50, 100, 1000)]
    + [dict(beta_start=a, beta_end=b) for a, b in zip([0.00001, 0.0001, 0.001], [0.0002, 0.002, 0.02])]
    + [dict(beta_schedule=s) for s in ("linear", "scaled_linear")]
    + [dict(prediction_type=p) for p in ("epsilon", "v_prediction")] + [dict(use_karras_sigmas=True)],
    "EulerAncestralDiscreteScheduler": [dict(num_train_timesteps=n) for n in (10, 50, 100, 1000)]
    + [dict(beta_start=a, beta_end=b) for a, b in zip([0.00001, 0.0001, 0.001], [0.0002, 0.002, 0.02])]
    + [dict(beta_schedule=s) for s in ("linear", "scaled_linear")]
    + [dict(prediction_type=p) for p in ("epsilon", "v_prediction")],
    "DPMSolverMultistepScheduler": _dpm_variants(),
}

SHAPE = (4, 3, 8, 8)


def det_sample():
    n = int(np.prod(SHAPE))
    return (torch.arange(n).reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2).contiguous()


def det_noise():
    n = int(np.prod(SHAPE))
    return (torch.arange(n).flip(-1).reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2).contiguous()


def toy_model(x, t):
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return x * t / (t + 1)


def make(name, lib="gk", **kw):
    cls = getattr(GS if lib == "gk" else diffusers, name)
    return cls(**{**BASE[name], **kw})


def full_loop(s, n=10, generator_seed=0, sample=None, model=toy_model, start=0):
    s.set_timesteps(n)
    g = torch.manual_seed(generator_seed)
    x = det_sample() if sample is None else sample
    x = x * float(s.init_noise_sigma)
    for t in s.timesteps[start:]:
        xin = s.scale_model_input(x, t)
        x = s.step(model(xin, t), t, x, generator=g).prev_sample
    return x


def loop_steps(name):
    return 1000 if name == "DDPMScheduler" else 10


def _ddpm_loop(s, g):
    x = det_sample()
    for t in reversed(range(len(s))):
        x = s.step(toy_model(x, t), t, x, generator=g).prev_sample
    return x


def _close(a, b, tol=2e-5):
    scale = b.abs().max().item() + 1.0
    assert torch.isfinite(a).all()
    assert (a.double() - b.double()).abs().max().item() <= tol * scale, (a - b).abs().max().item()


# ---- numbers: every option variant against diffusers, same inputs and same generator -----------

@pytest.mark.parametrize("name,kw", [(n, kw) for n in NAMES for kw in CASES[n]],
                         ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()))
def test_full_loop_matches_diffusers(name, kw):
    """The suite's check_over_configs and full-loop sums, as an element-wise comparison with
    diffusers' scheduler (including DDPM's 'other' variance, DPM third order and the deprecated
    noise-prediction algorithms, thresholding with sample_max_value < 1, zero-SNR, the h = 0 step)."""
    g_s, d_s = make(name, **kw), make(name, "d", **kw)
    if name in ("DDPMScheduler", "DDIMScheduler") and g_s.alphas_cumprod.min() <= 0:
        # alpha_prod reaches 0 (betas up to 0.2 or 2): diffusers gives NaN there, gankern refuses
        # (epsilon prediction); the suite steps at t = 0 only
        x = det_sample()
        if name == "DDIMScheduler":
            g_s.set_timesteps(50), d_s.set_timesteps(50)
        ga, da = (s.step(toy_model(x, 0), 0, x, generator=torch.manual_seed(0)).prev_sample for s in (g_s, d_s))
    elif name == "DDPMScheduler":
        ga, da = _ddpm_loop(g_s, torch.manual_seed(0)), _ddpm_loop(d_s, torch.manual_seed(0))
    else:
        steps = 25 if kw.get("use_karras_sigmas") and kw.get("final_sigmas_type") == "sigma_min" else 10
        ga = full_loop(make(name, **kw), n=steps)
        da = full_loop(make(name, "d", **kw), n=steps)
    _close(ga, da, 1e-4 if kw.get("solver_order") == 3 or kw.get("thresholding") else 2e-5)


@pytest.mark.parametrize("name", NAMES)
def test_single_steps_at_suite_timesteps_match_diffusers(name):
    """The suite's check_over_forward: one step at various timesteps / step counts / eta."""
    forward = {"DDIMScheduler": [(1, 10, 0.0), (10, 50, 0.5), (49, 500, 1.0), (3, 50, 0.0)],
               "DDPMScheduler": [(0, None, None), (500, None, None), (999, None, None)]}.get(name)
    x = torch.rand(SHAPE)
    m = 0.1 * x
    if forward is None:  # sigma schedulers: timesteps by position in the schedule
        for n in (1, 2, 3, 5, 10, 50, 100, 999, 1000):
            if name != "DPMSolverMultistepScheduler" and n > 100:
                continue
            outs = []
            for lib in ("gk", "d"):
                s = make(name, lib)
                s.set_timesteps(n)
                outs.append(s.step(m, s.timesteps[0], x, generator=torch.manual_seed(0)).prev_sample)
            _close(*outs)
        return
    for t, n, eta in forward:
        outs = []
        for lib in ("gk", "d"):
            s = make(name, lib)
            kw = {}
            if n is not None:
                s.set_timesteps(n)
                kw["eta"] = eta
            outs.append(s.step(m, t, x, generator=torch.manual_seed(0), **kw).prev_sample)
        _close(*outs)


def test_ddim_off_schedule_timestep_is_computed_as_diffusers():
    x, out = torch.rand(SHAPE), []
    for lib in ("gk", "d"):
        s = make("DDIMScheduler", lib)
        s.set_timesteps(50)
        out.append(s.step(0.1 * x, 3, x).prev_sample)  # 3 is not one of the 50 timesteps
    _close(*out)


def test_ddim_steps_offset_schedule():
    s = make("DDIMScheduler", steps_offset=1)
    s.set_timesteps(5)
    assert torch.equal(s.timesteps, torch.LongTensor([801, 601, 401, 201, 1]))


@pytest.mark.parametrize("name", NAMES)
def test_full_loop_with_noise_single_timestep_add_noise(name):
    """The suite's full_loop_with_noise: add_noise with ONE timestep for a batch of 4 broadcasts it
    (it used to read per-sample coefficients past the end for the sigma schedulers)."""
    res = []
    for lib in ("gk", "d"):
        s = make(name, lib)
        if name == "DDPMScheduler":
            ts = s.timesteps[len(s) - 2:]
        else:
            s.set_timesteps(10)
            ts = s.timesteps[{"DDIMScheduler": 8, "DPMSolverMultistepScheduler": 5}.get(name, 8):]
        x = det_sample() * float(s.init_noise_sigma)
        x = s.add_noise(x, det_noise(), ts[:1])
        g = torch.manual_seed(0)
        for t in ts:
            x = s.step(toy_model(s.scale_model_input(x, t), t), t, x, generator=g).prev_sample
        res.append(x)
    _close(*res)


@pytest.mark.parametrize("name", NAMES)
def test_add_noise_broadcasts_one_timestep(name):
    s = make(name)
    s.set_timesteps(100)
    x, z = torch.rand(SHAPE), torch.randn(SHAPE)
    t = s.timesteps[5]
    one = s.add_noise(x, z, t[None])
    each = s.add_noise(x, z, t.repeat(SHAPE[0]))
    assert torch.equal(one, each)
    ref = make(name, "d")
    ref.set_timesteps(100)
    _close(one, ref.add_noise(x, z, t[None]))
    if name in SIGMA_NAMES:  # wrong count: a clean error, never a read past the end
        with pytest.raises(ValueError, match="one timestep per sample"):
            s.add_noise(x, z, s.timesteps[:2])


# ---- config and files --------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_round_trip(name, tmp_path):
    s = make(name, trained_betas=None)
    s.save_config(tmp_path / "a")
    s2 = type(s).from_pretrained(tmp_path / "a")
    assert s2.config == s.config and type(s2) is type(s)
    assert os.path.isfile(tmp_path / "a" / "scheduler_config.json")
    s.save_pretrained(tmp_path / "b")
    assert type(s).from_pretrained(tmp_path / "b").config == s.config
    # same steps after the round trip
    x = torch.rand(SHAPE)
    outs = []
    for sch in (s, s2):
        sch.set_timesteps(20)
        outs.append(sch.step(0.1 * x, sch.timesteps[1], x, generator=torch.manual_seed(0)).prev_sample)
    assert torch.equal(*outs)
    # files interchange with diffusers both ways
    d = getattr(diffusers, name).from_pretrained(tmp_path / "a")
    assert {k: v for k, v in d.config.items() if not k.startswith("_")} == \
        {k: v for k, v in s.config.items() if k in d.config}
    d.save_config(tmp_path / "c")
    assert type(s).from_pretrained(tmp_path / "c").config == s.config
    assert json.load(open(tmp_path / "a" / "scheduler_config.json"))["_class_name"] == name


@pytest.mark.parametrize("name", NAMES)
def test_trained_betas_round_trip(name, tmp_path):
    s = make(name, trained_betas=np.array([0.1, 0.3]))
    s.save_pretrained(tmp_path)
    s2 = type(s).from_pretrained(tmp_path)
    assert s.betas.tolist() == s2.betas.tolist() == make(name, "d", trained_betas=np.array([0.1, 0.3])).betas.tolist()


@pytest.mark.parametrize("name", NAMES)
def test_compatibles_convert_without_losing_options(name):
    s = make(name)
    comps = s.compatibles
    assert type(s) in comps and all(c is not None for c in comps)
    for c in comps:
        other = c.from_config(s.config)
        back = type(s).from_config(other.config)
        assert {k: v for k, v in back.config.items() if k in s.config} == dict(s.config)
        extra = set(back.config) - set(s.config)
        assert not extra & set(type(s)._DEFAULTS)
    # diffusers' classes read gankern's config and the other way round (the suite's test_switch)
    d = diffusers.DPMSolverSinglestepScheduler.from_config(s.config)
    d = diffusers.UniPCMultistepScheduler.from_config(d.config)
    assert type(s).from_config(d.config).config["num_train_timesteps"] == s.config.num_train_timesteps


def test_dpm_switch_through_diffusers_classes_keeps_results():
    s = make("DPMSolverMultistepScheduler")
    a = full_loop(s)
    d = diffusers.DPMSolverSinglestepScheduler.from_config(s.config)
    d = diffusers.UniPCMultistepScheduler.from_config(d.config)
    d = diffusers.DEISMultistepScheduler.from_config(d.config)
    b = full_loop(GS.DPMSolverMultistepScheduler.from_config(d.config))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_config_is_read_only_and_state_copies(name):
    s = make(name)
    for mutate in (lambda c: c.update(beta_end=0.5), lambda c: c.__setitem__("beta_end", 0.5),
                   lambda c: c.pop("beta_end"), lambda c: c.setdefault("x", 1), lambda c: c.clear(),
                   lambda c: setattr(c, "beta_end", 0.5), lambda c: c.__delitem__("beta_end")):
        with pytest.raises(TypeError, match="read-only"):
            mutate(s.config)
    assert s.config.beta_end == BASE[name]["beta_end"]
    s.set_timesteps(10)
    x = torch.rand(SHAPE)
    s.step(0.1 * x, s.timesteps[0], x, generator=torch.manual_seed(0))
    s = copy.deepcopy(s)  # mid-trajectory state, copied
    s.set_timesteps(10)
    s.step(0.1 * x, s.timesteps[0], x, generator=torch.manual_seed(0))
    b = s.step(0.1 * x, s.timesteps[1], x, generator=torch.manual_seed(1)).prev_sample
    for c in (copy.deepcopy(s), pickle.loads(pickle.dumps(s))):
        assert type(c) is type(s) and c.config == s.config and c.step_index == s.step_index
        c.set_timesteps(10)
        c.step(0.1 * x, c.timesteps[0], x, generator=torch.manual_seed(0))
        a = c.step(0.1 * x, c.timesteps[1], x, generator=torch.manual_seed(1)).prev_sample
        assert torch.equal(a, b)
    assert pickle.loads(pickle.dumps(s.config)) == s.config


@pytest.mark.parametrize("name", NAMES)
def test_register_to_config_and_attribute_access(name):
    s = make(name)
    s.dummy_attribute = 5
    assert s.dummy_attribute == 5
    s.register_to_config(test_attribute=5)
    with pytest.warns(FutureWarning):
        assert s.test_attribute == 5
    with pytest.raises(AttributeError, match=f"'{name}' object has no attribute 'does_not_exist'"):
        s.does_not_exist
    with pytest.raises(ValueError, match="num_train_timesteps"):
        s.register_to_config(num_train_timesteps=7)
    assert s._deprecated_kwargs == [] and "kwargs" not in inspect.signature(type(s).__init__).parameters


# ---- step outputs and the public API --------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_step_output_is_dict_like_and_equals_tuple(name):
    s = make(name)
    s.set_timesteps(50)
    x = torch.rand(SHAPE)
    t = s.timesteps[0]
    out = s.step(0.1 * x, t, x, generator=torch.manual_seed(0))
    s.set_timesteps(50)
    tup = s.step(0.1 * x, t, x, generator=torch.manual_seed(0), return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == len(out) == len(out.keys())
    ref = make(name, "d")
    ref.set_timesteps(50)
    dref = ref.step(0.1 * x, t, x, generator=torch.manual_seed(0))
    assert list(out.keys()) == list(dref.keys())
    for k, a, b in zip(out.keys(), out.values(), tup):
        assert torch.equal(out[k], a) and torch.equal(a, b) and torch.equal(out[0], tup[0])
        _close(a, dref[k])
    assert "prev_sample" in out and dict(out.items())["prev_sample"] is out.prev_sample
    assert out.to_tuple()[0] is out.prev_sample


@pytest.mark.parametrize("name", NAMES)
def test_public_api_and_step_shape(name):
    s = make(name)
    assert hasattr(s, "init_noise_sigma") and hasattr(s, "scale_model_input") and hasattr(s, "step")
    x = torch.rand(SHAPE)
    s.set_timesteps(25)
    assert s.scale_model_input(x, s.timesteps[0]).shape == x.shape
    o0 = s.step(0.1 * x, s.timesteps[5], x).prev_sample
    o1 = s.step(0.1 * x, s.timesteps[6], x).prev_sample
    assert o0.shape == o1.shape == x.shape


def test_ddpm_custom_timesteps_and_previous_timestep():
    s = make("DDPMScheduler")
    ts = [100, 87, 50, 1, 0]
    s.set_timesteps(timesteps=ts)
    for i, t in enumerate(s.timesteps):
        p = s.previous_timestep(t)
        assert isinstance(p, torch.Tensor) and p.item() == (ts[i + 1] if i + 1 < len(ts) else -1)
    for bad, kw in (([100, 87, 50, 51, 0], {}), ([100, 87, 50, 1, 0], dict(num_inference_steps=5)),
                    ([1000], {})):
        with pytest.raises(ValueError):
            s.set_timesteps(timesteps=bad, **kw)


def test_dpm_duplicated_timesteps_custom_timesteps_and_fp16():
    s = make("DPMSolverMultistepScheduler")
    s.set_timesteps(s.config.num_train_timesteps)
    assert len(s.timesteps) == s.num_inference_steps
    for algo in ("dpmsolver++", "sde-dpmsolver++"):
        for pred in ("epsilon", "sample", "v_prediction"):
            for fin in ("sigma_min", "zero"):
                kw = dict(algorithm_type=algo, prediction_type=pred, final_sigmas_type=fin)
                a = full_loop(make("DPMSolverMultistepScheduler", **kw))
                s = make("DPMSolverMultistepScheduler", **kw)
                s.set_timesteps(10)
                ts = s.timesteps
                s2 = make("DPMSolverMultistepScheduler", **kw)
                s2.set_timesteps(num_inference_steps=None, timesteps=ts)
                g, x = torch.manual_seed(0), det_sample()
                for t in s2.timesteps:
                    x = s2.step(toy_model(x, t), t, x, generator=g).prev_sample
                assert torch.equal(a, x)
    s = make("DPMSolverMultistepScheduler", thresholding=True, dynamic_thresholding_ratio=0)
    s.set_timesteps(10)
    x = det_sample().half()
    for t in s.timesteps:
        x = s.step(toy_model(x, t), t, x).prev_sample
    assert x.dtype == torch.float16 and torch.isfinite(x).all()


def test_dpm_zero_step_size_regression():
    """Karras sigmas with final_sigmas_type='sigma_min' at 25 steps end with two equal sigmas
    (h = 0): this raised ZeroDivisionError; diffusers returns finite values, and so must gankern."""
    for solver_type in ("midpoint", "heun"):
        kw = dict(use_karras_sigmas=True, final_sigmas_type="sigma_min", solver_type=solver_type)
        s = make("DPMSolverMultistepScheduler", **kw)
        s.set_timesteps(25)
        assert s.sigmas[-1] == s.sigmas[-2]
        a = full_loop(make("DPMSolverMultistepScheduler", **kw), n=25)
        assert torch.isfinite(a).all()
        if solver_type == "midpoint":  # diffusers' heun divides 0 by 0 there (NaN); gankern takes the limit
            _close(a, full_loop(make("DPMSolverMultistepScheduler", "d", **kw), n=25))


def test_dpm_learned_range_with_prediction_channels_only():
    """variance_type='learned_range' with a model output of C channels (no variance channels)."""
    s = make("DPMSolverMultistepScheduler", variance_type="learned_range")
    d = make("DPMSolverMultistepScheduler", "d", variance_type="learned_range")
    _close(full_loop(s), full_loop(d))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [0, -1, -5, 2.5, True, "3", None])
def test_set_timesteps_refuses_bad_counts(name, bad):
    s = make(name)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(bad)


# ---- noise from a torch.Generator ---------------------------------------------------------------

@pytest.mark.parametrize("name,kw,step_kw", [
    ("DDPMScheduler", {}, {}), ("DDIMScheduler", {}, dict(eta=1.0)),
    ("EulerDiscreteScheduler", {}, dict(s_churn=1.0)), ("EulerAncestralDiscreteScheduler", {}, {}),
    ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++"), {}),
    ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver"), {})])
@pytest.mark.parametrize("gen_list", [False, True])
def test_generator_noise_equals_diffusers(name, kw, step_kw, gen_list):
    """With a generator (a list of per-sample generators too), the noise is drawn as diffusers
    draws it, so the trajectories are the same."""
    res = []
    for lib in ("gk", "d"):
        s = make(name, lib, **kw)
        s.set_timesteps(8)
        g = [torch.Generator().manual_seed(i) for i in range(SHAPE[0])] if gen_list else torch.manual_seed(3)
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9)) * float(s.init_noise_sigma)
        for t in s.timesteps:
            x = s.step(toy_model(s.scale_model_input(x, t), t), t, x, generator=g, **step_kw).prev_sample
        res.append(x)
    _close(*res)


def test_philox_path_without_generator_is_reproducible():
    """No generator: in-kernel Philox noise, fixed by manual_seed (the fast path)."""
    outs = []
    for _ in range(2):
        s = make("EulerAncestralDiscreteScheduler").manual_seed(5)
        s.set_timesteps(5)
        x = det_sample()
        for t in s.timesteps:
            x = s.step(toy_model(x, t), t, x).prev_sample
        outs.append(x)
    assert torch.equal(*outs)


# ---- pipelines --------------------------------------------------------------------------------

def _tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()


@pytest.mark.parametrize("name", NAMES)
def test_pipeline_images_equal_diffusers(name):
    """A real diffusers pipeline (tiny random UNet2DModel, nothing downloaded) with each gankern
    scheduler gives the images it gives with diffusers' scheduler, for the same generator."""
    unet = _tiny_unet()
    pipe_cls = diffusers.DDIMPipeline if name == "DDIMScheduler" else diffusers.DDPMPipeline
    images = []
    for lib in ("gk", "d"):
        pipe = pipe_cls(unet=unet, scheduler=make(name, "d"))
        pipe.scheduler = make(name, lib)  # after construction: DDIMPipeline converts in __init__
        pipe.set_progress_bar_config(disable=True)
        kw = dict(eta=1.0) if name == "DDIMScheduler" else {}
        out = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=6,
                   output_type="np", **kw).images
        images.append(torch.from_numpy(out))
    assert isinstance(pipe.scheduler, getattr(diffusers, name))  # the last run is diffusers'
    assert (images[0] - images[1]).abs().max().item() < 2e-4


def test_pipeline_saves_and_reloads_gankern_scheduler(tmp_path):
    unet = _tiny_unet()
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=make("DDPMScheduler", "d"))
    pipe.scheduler = make("DDPMScheduler", clip_sample=False)
    pipe.save_pretrained(tmp_path)
    index = json.load(open(tmp_path / "model_index.json"))
    assert index["scheduler"] == ["gankern.schedulers", "DDPMScheduler"]
    again = diffusers.DDPMPipeline.from_pretrained(tmp_path)
    assert type(again.scheduler) is GS.DDPMScheduler and again.scheduler.config == pipe.scheduler.config


def test_ddim_pipeline_constructor_converts_and_from_diffusers_converts_back():
    """diffusers' DDIMPipeline.__init__ rebuilds its scheduler with diffusers' DDIMScheduler; the
    documented way is to assign a gankern scheduler after construction (gankern.optimize does),
    and from_diffusers gives the gankern equivalent of any of the five."""
    pipe = diffusers.DDIMPipeline(unet=_tiny_unet(), scheduler=GS.DDIMScheduler())
    assert type(pipe.scheduler) is diffusers.DDIMScheduler
    g = GS.from_diffusers(pipe.scheduler)
    assert type(g) is GS.DDIMScheduler and g.config == {k: v for k, v in pipe.scheduler.config.items()
                                                        if not k.startswith("_")}
    pipe.scheduler = g
    assert pipe.scheduler is g and pipe.config["scheduler"][0] == "gankern.schedulers"
    assert GS.from_diffusers(g) is g
    assert GS.from_diffusers(diffusers.LMSDiscreteScheduler()) is None
    d = diffusers.EulerDiscreteScheduler()
    d.set_timesteps(7)
    assert GS.from_diffusers(d).num_inference_steps == 7
