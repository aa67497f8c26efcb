"""EulerDiscreteScheduler (Karras et al. 2022, Algorithm 2), diffusers-compatible; one fused pass per
step, including the optional "churn" noise (s_churn > 0) generated in the kernel."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..ops import diffusion as D
from ._base import (beta_sigmas, check_num_inference_steps, exponential_sigmas, karras_sigmas, sigma_to_t, spaced_timesteps)
from ._sigma import SigmaScheduler


def sigma_prediction(plan: D.StepPlan, pred: str, sigma: float, sigma_hat: float) -> D.StepPlan:
    """x0 from the model output on the sigma (variance-exploding) scale."""
    if pred == "epsilon":
        return plan.set(px=1.0, pm=-sigma_hat, qx=0.0, qm=1.0)
    if pred == "sample":
        return plan.set(px=0.0, pm=1.0)
    # v_prediction (diffusers uses sigma, not sigma_hat, here)
    return plan.set(px=1.0 / (sigma**2 + 1), pm=-sigma / math.sqrt(sigma**2 + 1))


class EulerDiscreteScheduler(SigmaScheduler):
    _DEFAULTS = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                     trained_betas=None, prediction_type="epsilon", interpolation_type="linear",
                     use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False, sigma_min=None,
                     sigma_max=None, timestep_spacing="linspace", timestep_type="discrete", steps_offset=0,
                     rescale_betas_zero_snr=False, final_sigmas_type="zero")

    def _check_config(self, cfg):
        if sum(bool(x) for x in (cfg.use_beta_sigmas, cfg.use_exponential_sigmas, cfg.use_karras_sigmas)) > 1:
            raise ValueError("only one of use_beta_sigmas, use_exponential_sigmas, use_karras_sigmas can be set")
        if cfg.interpolation_type not in ("linear", "log_linear"):
            raise ValueError(f"interpolation_type must be 'linear' or 'log_linear', got {cfg.interpolation_type!r}")
        if cfg.final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min', got {cfg.final_sigmas_type!r}")
        if cfg.timestep_type not in ("discrete", "continuous"):
            raise ValueError(f"timestep_type must be 'discrete' or 'continuous', got {cfg.timestep_type!r}")

    def _continuous_v(self):
        return self.config.timestep_type == "continuous" and self.config.prediction_type == "v_prediction"

    def _build(self, cfg):
        self._alphas(cfg)
        T = cfg.num_train_timesteps
        sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).flip(0)
        timesteps = torch.from_numpy(np.linspace(0, T - 1, T, dtype=float)[::-1].copy()).to(dtype=torch.float32)
        if self._continuous_v():
            self.timesteps = torch.Tensor([0.25 * s.log() for s in sigmas])
        else:
            self.timesteps = timesteps
        self._ts_host = self.timesteps.tolist()
        self._store_sigmas(torch.cat([sigmas, torch.zeros(1)]))
        self.is_scale_input_called = False

    @property
    def init_noise_sigma(self):
        max_sigma = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return max_sigma
        return (max_sigma**2 + 1) ** 0.5

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps: list | None = None,
                      sigmas: list | None = None):
        cfg = self.config
        if timesteps is not None and sigmas is not None:
            raise ValueError("pass only one of timesteps or sigmas")
        if num_inference_steps is None and timesteps is None and sigmas is None:
            raise ValueError("pass exactly one of num_inference_steps, timesteps or sigmas")
        if num_inference_steps is not None and (timesteps is not None or sigmas is not None):
            raise ValueError("pass only one of num_inference_steps, timesteps or sigmas")
        if timesteps is not None and (cfg.use_karras_sigmas or cfg.use_exponential_sigmas or cfg.use_beta_sigmas):
            raise ValueError("custom timesteps cannot be combined with use_karras/exponential/beta_sigmas")
        if timesteps is not None and self._continuous_v():
            raise ValueError("custom timesteps cannot be combined with timestep_type='continuous' and v_prediction")
        if num_inference_steps is not None:
            num_inference_steps = check_num_inference_steps(num_inference_steps)
        if num_inference_steps is None:
            num_inference_steps = len(timesteps) if timesteps is not None else len(sigmas) - 1
        self.num_inference_steps = num_inference_steps
        acp = self.alphas_cumprod
        if sigmas is not None:
            log_sigmas = np.log((((1 - acp) / acp) ** 0.5).numpy())
            sigmas = np.array(sigmas).astype(np.float32)
            timesteps = np.array([sigma_to_t(s, log_sigmas) for s in sigmas[:-1]])
        else:
            if timesteps is not None:
                timesteps = np.array(timesteps).astype(np.float32)
            else:
                timesteps = spaced_timesteps(cfg, num_inference_steps, np.float32)
            sigmas = (((1 - acp) / acp) ** 0.5).numpy()
            log_sigmas = np.log(sigmas)
            if cfg.interpolation_type == "linear":
                sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)
            else:
                sigmas = torch.linspace(np.log(sigmas[-1]), np.log(sigmas[0]), num_inference_steps + 1).exp().numpy()
            if cfg.use_karras_sigmas:
                sigmas = karras_sigmas(cfg, sigmas, num_inference_steps)
                timesteps = np.array([sigma_to_t(s, log_sigmas) for s in sigmas])
            elif cfg.use_exponential_sigmas:
                sigmas = exponential_sigmas(cfg, sigmas, num_inference_steps)
                timesteps = np.array([sigma_to_t(s, log_sigmas) for s in sigmas])
            elif cfg.use_beta_sigmas:
                sigmas = beta_sigmas(cfg, sigmas, num_inference_steps)
                timesteps = np.array([sigma_to_t(s, log_sigmas) for s in sigmas])
            if cfg.final_sigmas_type == "sigma_min":
                sigma_last = ((1 - acp[0]) / acp[0]) ** 0.5
            else:
                sigma_last = 0
            sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
        sigmas = torch.from_numpy(sigmas).to(dtype=torch.float32)
        if self._continuous_v():
            self.timesteps = torch.Tensor([0.25 * s.log() for s in sigmas[:-1]]).to(device=device)
        else:
            self.timesteps = torch.from_numpy(timesteps.astype(np.float32)).to(device=device)
        self._ts_host = self.timesteps.cpu().tolist()
        self._step_index = None
        self._begin_index = None
        self._store_sigmas(sigmas)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """sample / sqrt(sigma^2 + 1), the divisor in float32 as diffusers computes it."""
        return self._scale_by_sigma(sample, timestep)

    def _plan(self, i: int, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
              s_noise: float = 1.0) -> D.StepPlan:
        sigma = self._sig[i]
        gamma = min(s_churn / (len(self._sig) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        plan = sigma_prediction(D.StepPlan(), self.config.prediction_type, sigma, sigma_hat)
        if gamma > 0:  # churn: x' = x + s_noise sqrt(sigma_hat^2 - sigma^2) z before predicting
            plan.stochastic = True
            plan.set(pre=s_noise * math.sqrt(sigma_hat**2 - sigma**2), s=0.0)
        dt = self._sig[i + 1] - sigma_hat
        if self.config.prediction_type == "epsilon":
            # derivative (x' - x0) / sigma_hat is the model output itself: prev = x' + dt * eps
            plan.set(a=1.0, b=0.0, c=dt)
        else:
            plan.set(a=1.0 + dt / sigma_hat, b=-dt / sigma_hat, c=0.0)
        return plan

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, s_churn: float = 0.0,
             s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0, generator=None,
             return_dict: bool = True, guidance_scale: float | None = None, guidance_rescale: float = 0.0):
        """One Euler step: diffusers' EulerDiscreteScheduler.step, fused."""
        if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise ValueError("pass one of scheduler.timesteps as the timestep, not an integer step index "
                             "(as diffusers' EulerDiscreteScheduler requires)")
        i = self._index(timestep)
        plan = self._cached_plan(i, float(s_churn), float(s_tmin), float(s_tmax), float(s_noise))
        return self._step(plan, model_output, sample, return_dict, guidance_scale=guidance_scale,
                          guidance_rescale=guidance_rescale, generator=generator, variance_noise=None)
