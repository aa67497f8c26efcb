"""DDPMScheduler: ancestral sampling of Ho et al. (2020), diffusers-compatible, one fused pass per
step (x0 prediction, clip / threshold, posterior mean and in-kernel noise)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..ops import diffusion as D
from ..reference import diffusion as R
from ._alpha import AlphaScheduler
from ._base import check_num_inference_steps, spaced_timesteps

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range")


class DDPMScheduler(AlphaScheduler):
    _DEFAULTS = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                     trained_betas=None, variance_type="fixed_small", clip_sample=True, prediction_type="epsilon",
                     thresholding=False, dynamic_thresholding_ratio=0.995, clip_sample_range=1.0,
                     sample_max_value=1.0, timestep_spacing="leading", steps_offset=0, rescale_betas_zero_snr=False)
    _EXTRA_SCHEDULES = ("sigmoid", "laplace")

    def _check_config(self, cfg):
        super()._check_config(cfg)
        if cfg.variance_type == "fixed_large_log":
            # diffusers multiplies the noise by sqrt(log(beta_t)), the square root of a negative number
            raise ValueError("variance_type='fixed_large_log' is not supported (diffusers' formula gives NaN); "
                             f"use one of {', '.join(VARIANCE_TYPES)}")
        if cfg.variance_type not in VARIANCE_TYPES:
            # diffusers accepts any other name and then samples with the fixed_small variance; so does
            # gankern (parity), but says so
            warnings.warn(f"variance_type={cfg.variance_type!r} is not one of {', '.join(VARIANCE_TYPES)}; "
                          "diffusers and gankern sample with the 'fixed_small' variance for it", stacklevel=3)

    def _build(self, cfg):
        super()._build(cfg)
        self.custom_timesteps = False
        self.variance_type = cfg.variance_type

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps: list | None = None):
        T = self.config.num_train_timesteps
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("pass either num_inference_steps or timesteps, not both")
        if timesteps is not None:
            for i in range(1, len(timesteps)):
                if timesteps[i] >= timesteps[i - 1]:
                    raise ValueError("timesteps must be in descending order")
            if timesteps[0] >= T:
                raise ValueError(f"timesteps must start below num_train_timesteps = {T}")
            ts = np.array(timesteps, dtype=np.int64)
            self.custom_timesteps = True
            self.num_inference_steps = len(ts)
        else:
            num_inference_steps = check_num_inference_steps(num_inference_steps, T)
            self.num_inference_steps = num_inference_steps
            self.custom_timesteps = False
            ts = spaced_timesteps(self.config, num_inference_steps, np.int64)
        self._set_schedule(ts, device)

    def previous_timestep(self, timestep):
        """The timestep after `timestep` in the schedule (-1 after the last), a tensor as in diffusers
        when a schedule is set; timestep - 1 before set_timesteps."""
        if self.custom_timesteps or self.num_inference_steps:
            t = int(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
            return torch.tensor(self._prev_t(t))
        return timestep - 1

    def _prev_t(self, t: int) -> int:
        if self.custom_timesteps or self.num_inference_steps:
            i = self._ts_index.get(t)
            if i is None:
                raise ValueError(f"timestep {t} is not in the schedule; pass one of scheduler.timesteps")
            return -1 if i == len(self._ts_host) - 1 else self._ts_host[i + 1]
        return t - 1

    def _get_variance(self, t: int, predicted_variance=None, variance_type=None) -> torch.Tensor:
        """The posterior variance at t (diffusers' formula, clamped at 1e-20) for the fixed types."""
        prev_t = self._prev_t(int(t))
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        beta = 1 - a_t / a_prev
        var = torch.clamp((1 - a_prev) / (1 - a_t) * beta, min=1e-20)
        vt = variance_type or self.config.variance_type
        if vt == "fixed_small_log":
            return torch.exp(0.5 * torch.log(var))
        if vt == "fixed_large":
            return beta
        if vt in ("learned", "learned_range"):
            raise ValueError(f"_get_variance of variance_type={vt!r} depends on the model output; see step()")
        return var

    def _plan(self, t: int, has_var_channels: bool = False) -> D.StepPlan:
        cfg = self.config
        prev_t = self._prev_t(t)
        a_t = self._acp[t]
        a_prev = self._acp[prev_t] if prev_t >= 0 else 1.0
        b_t, b_prev = 1.0 - a_t, 1.0 - a_prev
        # alpha_t / alpha_prev rounded to float32 as diffusers computes it: beta = 1 - that ratio is
        # tiny near t = 0, so its rounding shows in the trajectory (float64 here moved a 2-step
        # trajectory by 5e-5 relative from diffusers')
        cur_alpha = float(np.float32(a_t) / np.float32(a_prev))
        cur_beta = 1.0 - cur_alpha
        plan = self._prediction(D.StepPlan(), cfg.prediction_type, a_t)
        self._clamping(plan)
        # posterior mean: prev = cb x0 + ca x (eq. 7 of the DDPM paper)
        plan.set(a=math.sqrt(cur_alpha) * b_prev / b_t, b=math.sqrt(a_prev) * cur_beta / b_t, c=0.0)
        vt = cfg.variance_type
        if vt in ("learned", "learned_range"):
            plan.flags |= R.HAS_VAR_CHANNELS
        if t > 0:
            plan.stochastic = True
            var = max(b_prev / b_t * cur_beta, 1e-20)  # diffusers clamps at 1e-20
            if vt == "fixed_large":
                plan.set(s=math.sqrt(cur_beta))
            elif vt == "learned":
                plan.flags |= R.VAR_LEARNED
                plan.set(s=1.0)
            elif vt == "learned_range":  # log-variance interpolated by the model's v in [-1, 1]
                min_log, max_log = math.log(var), math.log(cur_beta)
                plan.flags |= R.VAR_LEARNED_RANGE
                plan.set(e0=0.5 * min_log + 0.25 * (max_log - min_log), e1=0.25 * (max_log - min_log))
            else:  # fixed_small, fixed_small_log (the same std) and, as in diffusers, any other name
                plan.set(s=math.sqrt(var))
        return plan

    def _resolve_t(self, timestep) -> int:
        v = self._timestep_value(timestep)
        if v is None:  # CUDA tensor: follow the schedule without reading it
            if self._step_index is None or self._step_index >= len(self._ts_host):
                self._step_index = 0
            return self._ts_host[self._step_index]
        if float(v) != int(v):
            raise ValueError(f"DDPMScheduler timesteps are integers, got {v}")
        v = int(v)
        if self.num_inference_steps is None and not self.custom_timesteps:
            if not 0 <= v < self.config.num_train_timesteps:
                raise ValueError(f"timestep {v} is outside [0, {self.config.num_train_timesteps})")
            return v
        i = self._ts_index.get(v)
        if i is None:
            raise ValueError(f"timestep {v} is not in the schedule {self._ts_host[:4]}...; pass one of "
                             "scheduler.timesteps")
        self._step_index = i
        return v

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True, guidance_scale: float | None = None, guidance_rescale: float = 0.0,
             variance_noise: torch.Tensor | None = None):
        """One DDPM step: diffusers' DDPMScheduler.step, fused; with guidance_scale the model output
        is the batched [unconditional, conditional] prediction (2B samples)."""
        t = self._resolve_t(timestep)
        plan = self._cached_plan(t)
        if self.variance_type in ("learned", "learned_range") and not (
                model_output.ndim >= 2 and sample.ndim >= 2 and model_output.shape[1] == 2 * sample.shape[1]):
            raise ValueError(f"variance_type={self.variance_type!r} needs model_output with 2*C channels "
                             f"(prediction then variance), got shape {tuple(model_output.shape)} for sample "
                             f"{tuple(sample.shape)}")
        return self._step(plan, model_output, sample, return_dict, guidance_scale=guidance_scale,
                          guidance_rescale=guidance_rescale, generator=generator, variance_noise=variance_noise)
