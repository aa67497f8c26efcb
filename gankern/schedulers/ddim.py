"""DDIMScheduler (Song et al., 2020), diffusers-compatible: eta = 0 is the deterministic DDIM update,
eta > 0 adds in-kernel Philox noise; one fused pass per step."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..ops import diffusion as D
from ._alpha import AlphaScheduler
from ._base import StepOutput, spaced_timesteps


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
        T = self.config.num_train_timesteps
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
        if num_inference_steps > T:
            raise ValueError(f"num_inference_steps = {num_inference_steps} cannot exceed num_train_timesteps = {T}")
        self.num_inference_steps = num_inference_steps
        self._set_schedule(spaced_timesteps(self.config, num_inference_steps, np.int64), device)

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
        self._require_timesteps()
        v = self._timestep_value(timestep)
        if v is None:
            if self._step_index is None or self._step_index >= len(self._ts_host):
                self._step_index = 0
            return self._ts_host[self._step_index]
        i = self._ts_index.get(v) if float(v) == int(v) else None
        if i is None:
            raise ValueError(f"timestep {v} is not in the schedule (first ones: {self._ts_host[:4]}); pass one of "
                             "scheduler.timesteps")
        self._step_index = i
        return int(v)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator=None, variance_noise: torch.Tensor | None = None,
             return_dict: bool = True, guidance_scale: float | None = None, guidance_rescale: float = 0.0):
        """One DDIM step: diffusers' DDIMScheduler.step, fused; with guidance_scale the model output
        is the batched [unconditional, conditional] prediction (2B samples)."""
        t = self._resolve_t(timestep)
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or eta < 0 or math.isnan(eta):
            raise ValueError(f"eta must be a number >= 0, got {eta!r}")
        plan = self._cached_plan(t, float(eta), bool(use_clipped_model_output))
        prev, x0, x0_fn = self._run(plan, model_output, sample, guidance_scale=guidance_scale,
                                    guidance_rescale=guidance_rescale, generator=generator,
                                    variance_noise=variance_noise)
        self._step_index += 1
        out = StepOutput(prev, x0, x0_fn)
        return out if return_dict else out.to_tuple()
