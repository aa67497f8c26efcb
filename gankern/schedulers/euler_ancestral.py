"""EulerAncestralDiscreteScheduler, diffusers-compatible: the Euler step to sigma_down plus
sigma_up-scaled Philox noise, in one fused pass."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..ops import diffusion as D
from ._base import check_num_inference_steps, spaced_timesteps
from ._sigma import SigmaScheduler
from .euler import sigma_prediction


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    _DEFAULTS = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                     trained_betas=None, prediction_type="epsilon", timestep_spacing="linspace", steps_offset=0,
                     rescale_betas_zero_snr=False)
    # diffusers raises for prediction_type="sample" here; so does gankern (parity is the contract)
    _PREDICTION_TYPES = ("epsilon", "v_prediction")

    def _build(self, cfg):
        self._alphas(cfg)
        T = cfg.num_train_timesteps
        sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy()
        sigmas = np.concatenate([sigmas[::-1], [0.0]]).astype(np.float32)
        self._store_sigmas(torch.from_numpy(sigmas))
        self.timesteps = torch.from_numpy(np.linspace(0, T - 1, T, dtype=float)[::-1].copy())
        self._ts_host = self.timesteps.tolist()
        self.is_scale_input_called = False

    @property
    def init_noise_sigma(self):
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return self.sigmas.max()
        return (self.sigmas.max() ** 2 + 1) ** 0.5

    def set_timesteps(self, num_inference_steps: int, device=None):
        num_inference_steps = check_num_inference_steps(num_inference_steps)
        self.num_inference_steps = num_inference_steps
        timesteps = spaced_timesteps(self.config, num_inference_steps, np.float32)
        acp = self.alphas_cumprod
        sigmas = (((1 - acp) / acp) ** 0.5).numpy()
        sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self._store_sigmas(torch.from_numpy(sigmas))
        self.timesteps = torch.from_numpy(timesteps).to(device=device)
        self._ts_host = self.timesteps.cpu().tolist()
        self._step_index = None
        self._begin_index = None

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """sample / sqrt(sigma^2 + 1), the divisor in float32 as diffusers computes it."""
        return self._scale_by_sigma(sample, timestep)

    def _plan(self, i: int) -> D.StepPlan:
        s_from, s_to = self._sig[i], self._sig[i + 1]
        sigma_up = math.sqrt(s_to**2 * (s_from**2 - s_to**2) / s_from**2)
        sigma_down = math.sqrt(s_to**2 - sigma_up**2)
        plan = sigma_prediction(D.StepPlan(), self.config.prediction_type, s_from, s_from)
        dt = sigma_down - s_from
        if self.config.prediction_type == "epsilon":
            plan.set(a=1.0, b=0.0, c=dt)
        else:
            plan.set(a=1.0 + dt / s_from, b=-dt / s_from, c=0.0)
        plan.stochastic = True
        return plan.set(s=sigma_up)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True, guidance_scale: float | None = None, guidance_rescale: float = 0.0):
        """One ancestral Euler step: diffusers' EulerAncestralDiscreteScheduler.step, fused, with the
        noise generated in the kernel."""
        if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise ValueError("pass one of scheduler.timesteps as the timestep, not an integer step index")
        i = self._index(timestep)
        plan = self._cached_plan(i)
        return self._step(plan, model_output, sample, return_dict, guidance_scale=guidance_scale,
                          guidance_rescale=guidance_rescale, generator=generator, variance_noise=None)
