"""What every gankern scheduler shares: diffusers-compatible configuration, the beta / sigma schedule
math (a line-by-line port of diffusers', in the same float32 / numpy dtypes, so timesteps and sigmas
come out bit-identical), step-index bookkeeping and the call into the fused step.

A scheduler's own module only says how one step maps onto the generic step (its `_plan`): the
coefficients, computed here on the host in float64 from the float32 schedule values.
"""
from __future__ import annotations

import math
import sys
import warnings
from typing import Any, Mapping

import numpy as np
import torch

from ..ops import _validate as V
from ..ops import diffusion as D
from ._config import _META_KEYS, Config, ConfigIO, _plain


class StepOutput:
    """diffusers' SchedulerOutput: .prev_sample and .pred_original_sample, and dict-like as
    diffusers' BaseOutput is (out["prev_sample"], .keys(), .values(), .items(), out[0], to_tuple(),
    the tuple return_dict=False gives). pred_original_sample is computed on first access when the
    fused step did not write it (a pipeline that never reads it pays nothing)."""

    def __init__(self, prev_sample, pred_original_sample=None, x0_fn=None, as_tuple_len=2):
        self.prev_sample = prev_sample
        self._x0 = pred_original_sample
        self._x0_fn = x0_fn
        self._n = as_tuple_len

    @property
    def pred_original_sample(self):
        if self._x0 is None and self._x0_fn is not None:
            self._x0, self._x0_fn = self._x0_fn(), None
        return self._x0

    def keys(self):
        names = ("prev_sample", "pred_original_sample")[: self._n]
        return [k for k in names if k == "prev_sample" or self._x0 is not None or self._x0_fn is not None]

    def values(self):
        return [getattr(self, k) for k in self.keys()]

    def items(self):
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_tuple(self):
        return tuple(self.values())

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key):
        return key in self.keys()

    def __iter__(self):  # a dict iterates its keys, as diffusers' BaseOutput (an OrderedDict) does
        return iter(self.keys())

    def __len__(self):
        return len(self.keys())

    def __repr__(self):
        return f"StepOutput({', '.join(self.keys())})"


# ---- schedule math (ports of diffusers' functions, same dtypes) ------------------------------

def betas_for_alpha_bar(num_diffusion_timesteps: int, max_beta: float = 0.999, alpha_transform_type: str = "cosine"):
    if alpha_transform_type == "cosine":
        def alpha_bar_fn(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    elif alpha_transform_type == "laplace":
        def alpha_bar_fn(t):
            lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
            snr = math.exp(lmb)
            return math.sqrt(snr / (1 + snr))
    else:
        raise ValueError(f"unsupported alpha_transform_type {alpha_transform_type!r}")
    betas = []
    for i in range(num_diffusion_timesteps):
        t1 = i / num_diffusion_timesteps
        t2 = (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar_fn(t2) / alpha_bar_fn(t1), max_beta))
    return torch.tensor(betas, dtype=torch.float32)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    alphas_bar_sqrt = alphas_cumprod.sqrt()
    a0 = alphas_bar_sqrt[0].clone()
    aT = alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= aT
    alphas_bar_sqrt *= a0 / (a0 - aT)
    alphas_bar = alphas_bar_sqrt**2
    alphas = alphas_bar[1:] / alphas_bar[:-1]
    alphas = torch.cat([alphas_bar[0:1], alphas])
    return 1 - alphas


def make_betas(cfg, extra_schedules: tuple = ()) -> torch.Tensor:
    n = cfg.num_train_timesteps
    if cfg.trained_betas is not None:
        return torch.tensor(np.asarray(cfg.trained_betas), dtype=torch.float32)
    s = cfg.beta_schedule
    if s == "linear":
        return torch.linspace(cfg.beta_start, cfg.beta_end, n, dtype=torch.float32)
    if s == "scaled_linear":
        return torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, n, dtype=torch.float32) ** 2
    if s == "squaredcos_cap_v2":
        return betas_for_alpha_bar(n)
    if s == "laplace" and s in extra_schedules:
        return betas_for_alpha_bar(n, alpha_transform_type="laplace")
    if s == "sigmoid" and s in extra_schedules:
        b = torch.linspace(-6, 6, n)
        return torch.sigmoid(b) * (cfg.beta_end - cfg.beta_start) + cfg.beta_start
    ok = ("linear", "scaled_linear", "squaredcos_cap_v2") + tuple(extra_schedules)
    raise ValueError(f"beta_schedule must be one of {', '.join(ok)}, got {s!r}")


def sigma_to_t(sigma, log_sigmas):
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low = log_sigmas[low_idx]
    high = log_sigmas[high_idx]
    w = (low - log_sigma) / (low - high)
    w = np.clip(w, 0, 1)
    t = (1 - w) * low_idx + w * high_idx
    return t.reshape(sigma.shape)


def _range(cfg, in_sigmas):
    smin = getattr(cfg, "sigma_min", None)
    smax = getattr(cfg, "sigma_max", None)
    smin = smin if smin is not None else in_sigmas[-1].item()
    smax = smax if smax is not None else in_sigmas[0].item()
    return smin, smax


def karras_sigmas(cfg, in_sigmas, n):
    smin, smax = _range(cfg, in_sigmas)
    rho = 7.0
    ramp = np.linspace(0, 1, n)
    min_inv_rho = smin ** (1 / rho)
    max_inv_rho = smax ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(cfg, in_sigmas, n):
    smin, smax = _range(cfg, in_sigmas)
    return np.exp(np.linspace(math.log(smax), math.log(smin), n))


def beta_sigmas(cfg, in_sigmas, n, alpha=0.6, beta=0.6):
    try:
        import scipy.stats
    except ImportError as e:  # diffusers has the same requirement
        raise ValueError("use_beta_sigmas=True needs scipy (pip install scipy)") from e
    smin, smax = _range(cfg, in_sigmas)
    return np.array([smin + ppf * (smax - smin) for ppf in
                     [scipy.stats.beta.ppf(t, alpha, beta) for t in 1 - np.linspace(0, 1, n)]])


def spaced_timesteps(cfg, n: int, dtype, last: int | None = None):
    """The "linspace" / "leading" / "trailing" timestep spacings as DDPM / DDIM / Euler compute them."""
    T = cfg.num_train_timesteps
    if cfg.timestep_spacing == "linspace":
        if dtype == np.float32:
            return np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
        return np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
    if cfg.timestep_spacing == "leading":
        step_ratio = T // n
        ts = (np.arange(0, n) * step_ratio).round()[::-1].copy().astype(dtype)
        ts += cfg.steps_offset
        return ts
    if cfg.timestep_spacing == "trailing":
        step_ratio = T / n
        ts = np.round(np.arange(T, 0, -step_ratio)).astype(dtype)
        ts -= 1
        return ts
    raise ValueError(f"timestep_spacing must be 'linspace', 'leading' or 'trailing', got {cfg.timestep_spacing!r}")


# ---- the scheduler base ----------------------------------------------------------------------

def randn_tensor(shape: tuple, generator, device, dtype) -> torch.Tensor:
    """Normal noise from `generator` drawn the way diffusers' randn_tensor draws it: a CPU generator
    draws on the CPU and the tensor moves to `device`; a list of generators draws one sample each
    (a list of one is one generator)."""
    device = torch.device(device)
    if isinstance(generator, (list, tuple)):
        if len(generator) == 1:
            generator = generator[0]
        elif len(generator) != shape[0]:
            raise ValueError(f"a list of generators must hold one per sample ({shape[0]}), got {len(generator)}")
    gens = generator if isinstance(generator, (list, tuple)) else [generator]
    for g in gens:
        if not isinstance(g, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(g).__name__}")
    gen_type = gens[0].device.type
    rand_device = device
    if gen_type != device.type:
        if gen_type != "cpu":
            raise ValueError(f"cannot generate a {device} tensor from a generator on {gen_type}")
        rand_device = torch.device("cpu")
    if isinstance(generator, (list, tuple)):
        one = (1,) + tuple(shape[1:])
        parts = [torch.randn(one, generator=g, device=rand_device, dtype=dtype) for g in generator]
        return torch.cat(parts, dim=0).to(device)
    return torch.randn(shape, generator=generator, device=rand_device, dtype=dtype).to(device)


def check_num_inference_steps(n, num_train_timesteps: int | None = None) -> int:
    """set_timesteps' step count: a positive int (not a bool, not a float), at most
    num_train_timesteps where the schedule picks distinct training timesteps."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"num_inference_steps must be a positive int, got {n!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {n}")
    if num_train_timesteps is not None and n > num_train_timesteps:
        raise ValueError(f"num_inference_steps = {n} cannot exceed num_train_timesteps = {num_train_timesteps} "
                         "(the schedule picks distinct training timesteps)")
    return n


_DIFFUSERS_REGISTERED = False


def _register_with_diffusers_if_loaded() -> None:
    """Once diffusers is imported, teach its pipelines to save and load gankern schedulers (see
    gankern.schedulers._diffusers.register_with_diffusers); never imports diffusers itself."""
    global _DIFFUSERS_REGISTERED
    if not _DIFFUSERS_REGISTERED and "diffusers" in sys.modules:
        from ._diffusers import register_with_diffusers
        _DIFFUSERS_REGISTERED = register_with_diffusers()


class Scheduler(ConfigIO):
    """Base of the drop-in schedulers. Subclasses define _DEFAULTS (diffusers' config names and
    defaults), _check_config (raise ValueError naming an unsupported option), _build, set_timesteps
    and _plan."""

    _DEFAULTS: dict = {}
    order = 1
    init_noise_sigma = 1.0

    def __init__(self, **config):
        unknown = set(config) - set(self._DEFAULTS) - _META_KEYS
        if unknown:
            raise ValueError(f"{type(self).__name__} got unknown config option(s) {sorted(unknown)}; "
                             f"known options: {sorted(self._DEFAULTS)}")
        cfg = dict(self._DEFAULTS)
        cfg.update({k: _plain(v) for k, v in config.items() if k not in _META_KEYS})
        self._config = Config(cfg)
        if cfg.get("prediction_type", "epsilon") not in self._PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {', '.join(self._PREDICTION_TYPES)} for "
                             f"{type(self).__name__}, got {cfg['prediction_type']!r}")
        self._check_config(self._config)
        self.num_inference_steps = None
        self._step_index = None
        self._begin_index = None
        self._seed = None
        self._offset = 0
        self._plans = {}
        self._build(self._config)
        _register_with_diffusers_if_loaded()

    _PREDICTION_TYPES = D.PREDICTION_TYPES

    def __getattr__(self, name):
        # only reached when normal lookup fails: config entries read as attributes still work, with
        # diffusers' FutureWarning (use scheduler.config.<name>)
        cfg = self.__dict__.get("_config")
        if cfg is not None and name in cfg and not name.startswith("__"):
            warnings.warn(f"Accessing config attribute `{name}` directly via '{type(self).__name__}' object "
                          f"attribute is deprecated. Please access '{name}' over '{type(self).__name__}'s config "
                          f"object instead, e.g. 'scheduler.config.{name}'.", FutureWarning, stacklevel=2)
            return cfg[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    @property
    def config(self) -> Config:
        return self._config

    # diffusers' pipelines patch outdated configs by assigning scheduler._internal_dict (e.g. Stable
    # Diffusion sets steps_offset=1 and clip_sample=False); honour that the way diffusers does.
    @property
    def _internal_dict(self) -> Config:
        return self._config

    @_internal_dict.setter
    def _internal_dict(self, value) -> None:
        cfg = {k: _plain(v) for k, v in dict(value).items() if k not in _META_KEYS}
        for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                    "rescale_betas_zero_snr"):
            if key in cfg and cfg[key] != self._config.get(key):
                raise ValueError(f"changing {key} after construction is not supported; build a new scheduler "
                                 "with from_config")
        self._config = Config({**self._config, **cfg})
        self._plans = {}

    def _check_config(self, cfg) -> None:
        pass

    def __len__(self):
        return self.config.num_train_timesteps

    # -- random numbers --------------------------------------------------------------------------
    def manual_seed(self, seed: int) -> "Scheduler":
        """Fix the Philox seed of the stochastic steps (offsets restart at 0)."""
        self._seed, self._offset = V.seed_bits(seed), 0
        return self

    def _next_noise(self, sample: torch.Tensor) -> tuple[int, int]:
        """(seed, offset) of the next in-kernel Philox draw of sample's size: one seed (manual_seed,
        or drawn from torch's global generator on first use), offsets advancing so draws never
        overlap."""
        if self._seed is None:
            self._seed = D.draw_seed(None)
        offset = self._offset
        self._offset += D.noise_counters(sample.numel())
        return self._seed, offset

    # -- step indices ----------------------------------------------------------------------------
    @property
    def step_index(self):
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        self._begin_index = begin_index

    def _host_timesteps(self) -> list:
        return self._ts_host

    @staticmethod
    def _timestep_value(timestep):
        """The timestep as a Python number, or None for a CUDA tensor (reading it would synchronize
        the device; the step counter is used instead). NaN and infinities are refused."""
        v = Scheduler._timestep_number(timestep)
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"timestep must be a finite number (one of scheduler.timesteps), got {v}")
        return v

    @staticmethod
    def _timestep_number(timestep):
        if type(timestep) is torch.Tensor and timestep.ndim == 0 and timestep.device.type == "cpu":
            return timestep.item()  # the common case, first
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise ValueError(f"timestep must be a single value, got shape {tuple(timestep.shape)}")
            if timestep.device.type != "cpu":
                return None
            return timestep.item()
        if isinstance(timestep, (int, float, np.integer, np.floating)) and not isinstance(timestep, bool):
            return timestep.item() if hasattr(timestep, "item") else timestep
        raise TypeError(f"timestep must be a number or a one-element tensor, got {type(timestep).__name__}")

    def index_for_timestep(self, timestep, schedule_timesteps=None) -> int:
        ts = self._ts_host if schedule_timesteps is None else list(np.asarray(schedule_timesteps.cpu()).tolist())
        hits = [i for i, t in enumerate(ts) if t == timestep]
        if not hits:
            raise ValueError(f"timestep {timestep} is not in the schedule; call set_timesteps and pass one of "
                             f"scheduler.timesteps")
        return hits[1] if len(hits) > 1 else hits[0]

    def _init_step_index(self, timestep):
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        v = self._timestep_value(timestep)
        self._step_index = 0 if v is None else self.index_for_timestep(v)

    def _require_timesteps(self):
        if self.num_inference_steps is None:
            raise ValueError("the number of inference steps is not set: call set_timesteps() before step()")

    # -- the step --------------------------------------------------------------------------------
    def _run(self, plan: D.StepPlan, model_output, sample, *, guidance_scale, guidance_rescale, generator,
             variance_noise, history=None, want_x0=False, noise_dtype=None):
        """The fused step for `plan`; returns (prev, x0 or None, x0_fn computing x0 on demand).

        Noise of a stochastic step: `variance_noise` if given; else, with a `generator`, a tensor
        drawn from it exactly as diffusers draws it (randn_tensor of the sample's shape, in
        noise_dtype: same generator -> same images as diffusers); else in-kernel Philox noise (the
        fast path: no noise tensor in memory)."""
        seed = offset = 0
        if generator is not None and variance_noise is not None:
            raise ValueError("pass either generator or variance_noise, not both")
        noise = None
        if plan.stochastic:
            if variance_noise is not None:
                noise = variance_noise
            elif generator is not None:
                noise = randn_tensor(tuple(sample.shape), generator, sample.device, noise_dtype or sample.dtype)
            else:
                seed, offset = self._next_noise(sample)
        if noise is not None:
            if not isinstance(noise, torch.Tensor):
                raise TypeError(f"variance_noise must be a tensor, got {type(noise).__name__}")
            noise = noise.to(device=sample.device, dtype=sample.dtype)
        kw = dict(guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, history=history, noise=noise,
                  seed=seed, offset=offset)
        prev, x0 = D.fused_step(model_output, sample, plan, want_x0=want_x0, **kw)

        def x0_fn():
            return D.fused_step(model_output, sample, plan, want_x0=True, **kw)[1]

        return prev, x0, x0_fn

    def _step(self, plan: D.StepPlan, model_output, sample, return_dict: bool, *, guidance_scale, guidance_rescale,
              generator, variance_noise):
        """The public step of the single-history schedulers: run `plan`, advance the step index
        (when it is tracked) and return a StepOutput, or its tuple form."""
        prev, x0, x0_fn = self._run(plan, model_output, sample, guidance_scale=guidance_scale,
                                    guidance_rescale=guidance_rescale, generator=generator,
                                    variance_noise=variance_noise, noise_dtype=model_output.dtype)
        if self._step_index is not None:
            self._step_index += 1
        out = StepOutput(prev, x0, x0_fn)
        return out if return_dict else out.to_tuple()

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def _cached_plan(self, *key, **kwargs) -> D.StepPlan:
        """_plan(*key, **kwargs), memoized until the next set_timesteps (plans are pure host math and
        never mutated after creation; fused_step copies the coefficients)."""
        k = key + tuple(kwargs.values())
        plan = self._plans.get(k)
        if plan is None:
            plan = self._plans[k] = self._plan(*key, **kwargs)
        return plan

    def plan(self, step_index: int, **step_kwargs) -> D.StepPlan:
        """The generic-step plan of step `step_index` (host math only; gankern.sample's CUDA-graph
        path builds a coefficient table from it)."""
        return self._plan(step_index, **step_kwargs)
