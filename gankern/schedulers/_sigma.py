"""Shared by the sigma-parameterized schedulers (Euler, Euler ancestral, DPM-Solver): the schedule
in diffusers' float32 values, step-index bookkeeping, input scaling and noising."""
from __future__ import annotations

import numpy as np
import torch

from ..ops import diffusion as D
from ._base import Scheduler, make_betas, rescale_zero_terminal_snr


class SigmaScheduler(Scheduler):
    def _alphas(self, cfg):
        betas = make_betas(cfg)
        if cfg.rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        if cfg.rescale_betas_zero_snr:
            # diffusers: keep the last sigma finite
            self.alphas_cumprod[-1] = 2 ** (-24)

    def _store_sigmas(self, sigmas: torch.Tensor):
        self.sigmas = sigmas.to("cpu")
        self._sig = self.sigmas.tolist()
        self._plans = {}

    def _scale_by_sigma(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """sample / sqrt(sigma^2 + 1) at the current step (Euler's input scaling), the divisor in
        float32 as diffusers computes it."""
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = np.float32(self._sig[self._step_index])
        self.is_scale_input_called = True
        return sample / float(np.sqrt(sigma * sigma + np.float32(1.0)))

    def _index(self, timestep) -> int:
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index >= len(self._sig) - 1:
            raise ValueError(f"step {self._step_index} is past the end of the schedule "
                             f"({len(self._sig) - 1} steps); call set_timesteps again")
        return self._step_index

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x0 + sigma * noise in one fused pass (Euler's parameterization; DPM-Solver overrides)."""
        idx = self._sigma_step_indices(timesteps, original_samples.shape[0])
        sigma = self.sigmas[idx].flatten().to(original_samples.device)
        return D._add_noise(original_samples, noise.to(original_samples.dtype),
                                           torch.ones_like(sigma), sigma)

    def _sigma_step_indices(self, timesteps, n: int) -> list:
        """One schedule index per sample, as diffusers' add_noise picks them: by timestep lookup, or
        the current / begin index once set_begin_index was called; one timestep broadcasts to all
        n samples (diffusers broadcasts it too)."""
        if self._begin_index is None:
            ts = torch.as_tensor(timesteps).reshape(-1).cpu().tolist()
            idx = [self.index_for_timestep(t) for t in ts]
        elif self._step_index is not None:
            idx = [self._step_index]
        else:
            idx = [self._begin_index]
        if len(idx) == 1:
            idx = idx * n
        if len(idx) != n:
            raise ValueError(f"timesteps must hold one timestep per sample ({n}) or one for all, got {len(idx)}")
        return idx
