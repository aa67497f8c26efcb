"""DDIMScheduler (Song et al., 2020), diffusers-compatible: eta = 0 is the deterministic DDIM update,
eta > 0 adds in-kernel Philox noise; one fused pass per step."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..ops import diffusion as D
from ._alpha import AlphaScheduler
from ._base import check_num_inference_steps, spaced_timesteps


class DDIMScheduler(AlphaScheduler):
    _DEFAULTS = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                     trained_betas=None, clip_sample=True, set_alpha_to_one=True, steps_offset=0,
                     prediction_type="epsilon", thresholding=False, dynamic_thresholding_ratio=0.995,
                     clip_sample_range=1.0, sample_max_value=1.0, timestep_spacing="leading",
                     rescale_betas_zero_snr=False)

    def _build(self, cfg):
        super()._build(cfg)
        self.final_alpha_cumprod = torch.tensor(1.0) if cfg.set_alpha_to_one else self.alphas_cumprod[0]
        self._final_acp = float(self.final_alpha_cumprod)

    def set_timesteps(self, num_inference_steps: int, device=None):
        num_inference_steps = check_num_inference_steps(num_inference_steps, self.config.num_train_timesteps)
        self.num_inference_steps = num_inference_steps
        self._set_schedule(spaced_timesteps(self.config, num_inference_steps, np.int64), device)

    def _get_variance(self, timestep: int, prev_timestep: int) -> torch.Tensor:
        """DDIM's sigma_t^2 / eta^2 between two training timesteps (diffusers' formula)."""
        a_t = self.alphas_cumprod[timestep]
        a_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        return (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)

    def _plan(self, t: int, eta: float = 0.0, use_clipped_model_output: bool = False) -> D.StepPlan:
        cfg = self.config
        # diffusers steps back by T // n whatever the spacing
        prev_t = t - cfg.num_train_timesteps // self.num_inference_steps
        a_t = self._acp[t]
        a_prev = self._acp[prev_t] if prev_t >= 0 else self._final_acp
        b_t = 1.0 - a_t
        plan = self._prediction(D.StepPlan(), cfg.prediction_type, a_t)
        self._clamping(plan)
        variance = (1.0 - a_prev) / b_t * (1.0 - a_t / a_prev)
        std = eta * math.sqrt(variance)
        if use_clipped_model_output:  # eps re-derived from the clipped x0
            plan.set(qx=1.0 / math.sqrt(b_t), qm=0.0, q0=-math.sqrt(a_t) / math.sqrt(b_t))
        plan.set(a=0.0, b=math.sqrt(a_prev), c=math.sqrt(1.0 - a_prev - std**2))
        if eta > 0:
            plan.stochastic = True
            plan.set(s=std)
        return plan

    def _resolve_t(self, timestep) -> int:
        """The timestep as an int. Timesteps off the schedule are computed as diffusers computes
        them (alphas at t and t - T // num_inference_steps); only a CUDA tensor timestep is not
        read (that would synchronize): the schedule position is used instead."""
        self._require_timesteps()
        v = self._timestep_value(timestep)
        if v is None:
            if self._step_index is None or self._step_index >= len(self._ts_host):
                self._step_index = 0
            return self._ts_host[self._step_index]
        if float(v) != int(v):
            raise ValueError(f"DDIMScheduler timesteps are integers, got {v}")
        v = int(v)
        self._step_index = self._ts_index.get(v)  # None off the schedule
        if self._step_index is None and not 0 <= v < self.config.num_train_timesteps:
            raise ValueError(f"timestep {v} is outside [0, num_train_timesteps = {self.config.num_train_timesteps})")
        return v

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator=None, variance_noise: torch.Tensor | None = None,
             return_dict: bool = True, guidance_scale: float | None = None, guidance_rescale: float = 0.0):
        """One DDIM step: diffusers' DDIMScheduler.step, fused; with guidance_scale the model output
        is the batched [unconditional, conditional] prediction (2B samples)."""
        t = self._resolve_t(timestep)
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or eta < 0 or math.isnan(eta):
            raise ValueError(f"eta must be a number >= 0, got {eta!r}")
        plan = self._cached_plan(t, float(eta), bool(use_clipped_model_output))
        return self._step(plan, model_output, sample, return_dict, guidance_scale=guidance_scale,
                          guidance_rescale=guidance_rescale, generator=generator, variance_noise=variance_noise)
