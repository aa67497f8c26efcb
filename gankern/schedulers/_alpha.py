"""Shared by the alpha-parameterized schedulers (DDPM, DDIM): schedule construction, prediction
type -> (x0, eps) coefficients, clip / threshold options, q_sample."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..ops import diffusion as D
from ..reference import diffusion as R
from ._base import Scheduler, make_betas, rescale_zero_terminal_snr


class AlphaScheduler(Scheduler):
    _EXTRA_SCHEDULES: tuple = ()

    def _check_config(self, cfg):
        if cfg.thresholding and not 0 < cfg.dynamic_thresholding_ratio <= 1:
            raise ValueError(f"dynamic_thresholding_ratio must be in (0, 1], got {cfg.dynamic_thresholding_ratio}")

    def _build(self, cfg):
        betas = make_betas(cfg, self._EXTRA_SCHEDULES)
        if cfg.rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self._acp = self.alphas_cumprod.tolist()  # host copy (float32 values as Python floats)
        self.timesteps = torch.from_numpy(np.arange(0, cfg.num_train_timesteps)[::-1].copy().astype(np.int64))
        self._ts_host = self.timesteps.tolist()

    def _set_schedule(self, timesteps: np.ndarray, device):
        self.timesteps = torch.from_numpy(timesteps).to(device)
        self._ts_host = [int(t) for t in timesteps.tolist()]
        self._ts_index = {}
        for i, t in enumerate(self._ts_host):
            self._ts_index.setdefault(t, i)
        self._plans = {}
        self._step_index = None

    @staticmethod
    def _prediction(plan: D.StepPlan, pred: str, a_t: float) -> D.StepPlan:
        """x0 = px x + pm m and eps = qx x + qm m for the prediction type, at alpha_prod_t = a_t."""
        sa, sb = math.sqrt(a_t), math.sqrt(1.0 - a_t)
        if a_t == 0.0 and pred == "epsilon":
            # diffusers divides by zero here and returns NaN samples
            raise ValueError("alpha_prod_t is 0 at this timestep (rescale_betas_zero_snr=True): x0 cannot be "
                             "recovered from an epsilon prediction; use prediction_type='v_prediction'")
        if pred == "epsilon":
            return plan.set(px=1.0 / sa, pm=-sb / sa, qx=0.0, qm=1.0)
        if pred == "sample":
            return plan.set(px=0.0, pm=1.0, qx=1.0 / sb, qm=-sa / sb)
        return plan.set(px=sa, pm=-sb, qx=sb, qm=sa)  # v_prediction

    def _clamping(self, plan: D.StepPlan) -> D.StepPlan:
        cfg = self.config
        if cfg.thresholding:  # takes precedence over clip_sample, as in diffusers
            plan.threshold = (float(cfg.dynamic_thresholding_ratio), float(cfg.sample_max_value))
        elif cfg.clip_sample:
            plan.flags |= R.CLIP
            plan.set(clip=cfg.clip_sample_range)
        return plan

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """q_sample with this schedule's alphas_cumprod (one fused pass)."""
        return D.add_noise(original_samples, noise, timesteps, self.alphas_cumprod)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(a_t) noise - sqrt(1 - a_t) sample: q_sample with the roles swapped."""
        a = self.alphas_cumprod.to(sample.device)[timesteps.to(sample.device).long()]
        ca, cn = (1 - a).sqrt().neg(), a.sqrt()
        return D._add_noise(sample, noise.to(sample.dtype), ca.to(torch.float32), cn.to(torch.float32))
