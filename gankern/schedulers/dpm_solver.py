"""DPMSolverMultistepScheduler, diffusers-compatible, for DPM-Solver++ (2M) and its SDE variant:
each step is one fused pass that converts the model output to x0, applies the first- or second-order
multistep update using the previous step's x0 (written by the kernel as it goes) and, for the SDE
variant, adds in-kernel Philox noise."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..ops import diffusion as D
from ..reference import diffusion as R
from ._base import (StepOutput, beta_sigmas, check_num_inference_steps, exponential_sigmas, karras_sigmas,
                    randn_tensor, sigma_to_t)
from ._sigma import SigmaScheduler


class DPMSolverMultistepScheduler(SigmaScheduler):
    _DEFAULTS = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                     trained_betas=None, solver_order=2, prediction_type="epsilon", thresholding=False,
                     dynamic_thresholding_ratio=0.995, sample_max_value=1.0, algorithm_type="dpmsolver++",
                     solver_type="midpoint", lower_order_final=True, euler_at_final=False, use_karras_sigmas=False,
                     use_exponential_sigmas=False, use_beta_sigmas=False, use_lu_lambdas=False,
                     use_flow_sigmas=False, flow_shift=1.0, final_sigmas_type="zero",
                     lambda_min_clipped=-float("inf"), variance_type=None, timestep_spacing="linspace",
                     steps_offset=0, rescale_betas_zero_snr=False, use_dynamic_shifting=False,
                     time_shift_type="exponential")

    # algorithm types computed by the fused kernel; the others (and solver_order=3) by torch ops
    _FUSED_ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++")

    def _check_config(self, cfg):
        if sum(bool(x) for x in (cfg.use_beta_sigmas, cfg.use_exponential_sigmas, cfg.use_karras_sigmas)) > 1:
            raise ValueError("only one of use_beta_sigmas, use_exponential_sigmas, use_karras_sigmas can be set")
        algo = cfg.algorithm_type
        if algo == "deis":  # diffusers maps it to dpmsolver++
            self._config = type(cfg)({**cfg, "algorithm_type": "dpmsolver++"})
        elif algo not in ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"):
            raise ValueError(f"algorithm_type must be one of 'dpmsolver++', 'sde-dpmsolver++', 'dpmsolver', "
                             f"'sde-dpmsolver' (or 'deis', mapped to 'dpmsolver++' as diffusers does), got {algo!r}")
        st = cfg.solver_type
        if st in ("logrho", "bh1", "bh2"):  # diffusers maps these to midpoint
            self._config = type(cfg)({**self._config, "solver_type": "midpoint"})
        elif st not in ("midpoint", "heun"):
            raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {st!r}")
        if isinstance(cfg.solver_order, bool) or cfg.solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {cfg.solver_order!r}")
        if cfg.use_flow_sigmas or cfg.prediction_type == "flow_prediction":
            raise ValueError("use_flow_sigmas / prediction_type='flow_prediction' are not supported by gankern "
                             "(flow-matching models: use diffusers' scheduler)")
        if cfg.use_dynamic_shifting:
            raise ValueError("use_dynamic_shifting=True is not supported by gankern (it applies to flow sigmas, "
                             "which gankern does not implement)")
        if cfg.final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min', got {cfg.final_sigmas_type!r}")
        if self._config.algorithm_type not in self._FUSED_ALGORITHMS and cfg.final_sigmas_type == "zero":
            raise ValueError(f"final_sigmas_type='zero' is not supported with algorithm_type="
                             f"{cfg.algorithm_type!r} (its update divides by the final sigma, as in diffusers); "
                             "use final_sigmas_type='sigma_min'")
        # variance_type: only "learned" / "learned_range" change anything (the model output carries
        # variance channels); diffusers ignores any other value, e.g. DDPM's "fixed_small" when a DDPM
        # config is converted, and so does gankern
        if cfg.thresholding and not 0 <= cfg.dynamic_thresholding_ratio <= 1:
            raise ValueError(f"dynamic_thresholding_ratio must be in [0, 1] (a quantile), got "
                             f"{cfg.dynamic_thresholding_ratio}")

    def index_for_timestep(self, timestep, schedule_timesteps=None) -> int:
        """As diffusers' DPM-Solver: a timestep missing from the schedule maps to the last step."""
        try:
            return super().index_for_timestep(timestep, schedule_timesteps)
        except ValueError:
            return len(self._ts_host) - 1 if schedule_timesteps is None else len(schedule_timesteps) - 1

    def _fused(self) -> bool:
        """Whether steps run the fused kernel (DPM-Solver++ / SDE-DPM-Solver++ of order <= 2); the
        deprecated noise-prediction algorithms and third order run on torch ops, as in diffusers."""
        return self.config.algorithm_type in self._FUSED_ALGORITHMS and self.config.solver_order <= 2

    def _build(self, cfg):
        self._alphas(cfg)
        acp = self.alphas_cumprod
        self.alpha_t = torch.sqrt(acp)
        self.sigma_t = torch.sqrt(1 - acp)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self._store_sigmas(((1 - acp) / acp) ** 0.5)
        T = cfg.num_train_timesteps
        self.timesteps = torch.from_numpy(np.linspace(0, T - 1, T, dtype=np.float32)[::-1].copy())
        self._ts_host = self.timesteps.tolist()
        self.model_outputs = [None] * cfg.solver_order
        self.lower_order_nums = 0

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, mu: float | None = None,
                      timesteps: list | None = None):
        cfg = self.config
        if mu is not None:
            raise ValueError("mu (dynamic shifting of flow sigmas) is not supported by gankern")
        if num_inference_steps is None and timesteps is None:
            raise ValueError("pass exactly one of num_inference_steps or timesteps")
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("pass only one of num_inference_steps or timesteps")
        if num_inference_steps is not None:
            num_inference_steps = check_num_inference_steps(num_inference_steps)
        if timesteps is not None and (cfg.use_karras_sigmas or cfg.use_lu_lambdas or cfg.use_exponential_sigmas
                                      or cfg.use_beta_sigmas):
            raise ValueError("custom timesteps cannot be combined with karras / lu / exponential / beta sigmas")
        if timesteps is not None:
            timesteps = np.array(timesteps).astype(np.int64)
        else:
            T = cfg.num_train_timesteps
            clipped_idx = torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped)
            last = (T - clipped_idx).numpy().item()
            n = num_inference_steps
            if cfg.timestep_spacing == "linspace":
                timesteps = np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
            elif cfg.timestep_spacing == "leading":
                step_ratio = last // (n + 1)
                timesteps = (np.arange(0, n + 1) * step_ratio).round()[::-1][:-1].copy().astype(np.int64)
                timesteps += cfg.steps_offset
            elif cfg.timestep_spacing == "trailing":
                step_ratio = T / n
                timesteps = np.arange(last, 0, -step_ratio).round().copy().astype(np.int64)
                timesteps -= 1
            else:
                raise ValueError(f"timestep_spacing must be 'linspace', 'leading' or 'trailing', got "
                                 f"{cfg.timestep_spacing!r}")
        acp = self.alphas_cumprod
        sigmas = (((1 - acp) / acp) ** 0.5).numpy()
        log_sigmas = np.log(sigmas)
        if cfg.use_karras_sigmas:
            sigmas = karras_sigmas(cfg, np.flip(sigmas).copy(), num_inference_steps)
            timesteps = np.array([sigma_to_t(s, log_sigmas) for s in sigmas])
            if cfg.beta_schedule != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        elif cfg.use_lu_lambdas:
            lambdas = np.flip(log_sigmas.copy())
            lmin, lmax = lambdas[-1].item(), lambdas[0].item()
            lambdas = lmax + np.linspace(0, 1, num_inference_steps) * (lmin - lmax)
            sigmas = np.exp(lambdas)
            timesteps = np.array([sigma_to_t(s, log_sigmas) for s in sigmas])
            if cfg.beta_schedule != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        elif cfg.use_exponential_sigmas:
            sigmas = exponential_sigmas(cfg, np.flip(sigmas).copy(), num_inference_steps)
            timesteps = np.array([sigma_to_t(s, log_sigmas) for s in sigmas])
        elif cfg.use_beta_sigmas:
            sigmas = beta_sigmas(cfg, np.flip(sigmas).copy(), num_inference_steps)
            timesteps = np.array([sigma_to_t(s, log_sigmas) for s in sigmas])
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)
        if cfg.final_sigmas_type == "sigma_min":
            sigma_last = ((1 - acp[0]) / acp[0]) ** 0.5
        else:
            sigma_last = 0
        sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
        self._store_sigmas(torch.from_numpy(sigmas))
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self._ts_host = self.timesteps.cpu().tolist()
        self.num_inference_steps = len(timesteps)
        self.model_outputs = [None] * cfg.solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None

    @staticmethod
    def _alpha_sigma(sigma: float) -> tuple[float, float]:
        alpha = 1.0 / math.sqrt(sigma**2 + 1)
        return alpha, sigma * alpha

    def _order(self, i: int) -> int:
        """The order diffusers' step uses at step i (given how many steps came before)."""
        cfg, n = self.config, len(self._ts_host)
        lower_final = i == n - 1 and (cfg.euler_at_final or (cfg.lower_order_final and n < 15)
                                      or cfg.final_sigmas_type == "zero")
        lower_second = i == n - 2 and cfg.lower_order_final and n < 15
        if cfg.solver_order == 1 or self.lower_order_nums < 1 or lower_final:
            return 1
        if cfg.solver_order == 2 or self.lower_order_nums < 2 or lower_second:
            return 2
        return 3

    def _plan(self, i: int, order: int | None = None, var_channels: bool = True) -> D.StepPlan:
        cfg = self.config
        order = self._order(i) if order is None else order
        a_s0, s_s0 = self._alpha_sigma(self._sig[i])
        sig_t = self._sig[i + 1]
        a_t, s_t = self._alpha_sigma(sig_t)
        plan = D.StepPlan()
        pred = cfg.prediction_type
        if pred == "epsilon":
            plan.set(px=1.0 / a_s0, pm=-s_s0 / a_s0)
            if cfg.variance_type in ("learned", "learned_range") and var_channels:
                plan.flags |= R.HAS_VAR_CHANNELS
        elif pred == "sample":
            plan.set(px=0.0, pm=1.0)
        else:
            plan.set(px=a_s0, pm=-s_s0)
        if cfg.thresholding:
            plan.threshold = (float(cfg.dynamic_thresholding_ratio), float(cfg.sample_max_value))
        sde = cfg.algorithm_type == "sde-dpmsolver++"
        lam_s0 = math.log(a_s0) - math.log(s_s0)
        if sig_t == 0.0:  # final sigma zero: lambda_t = +inf, exp(-h) = 0
            h, emh = math.inf, 0.0
        else:
            h = (math.log(a_t) - math.log(s_t)) - lam_s0
            emh = math.exp(-h)
        if sde:
            ca = s_t / s_s0 * emh
            c0 = a_t * (1.0 - emh * emh)           # alpha_t (1 - e^{-2h})
            plan.stochastic = True
            plan.set(s=s_t * math.sqrt(1.0 - emh * emh))
        else:
            ca = s_t / s_s0
            c0 = -a_t * (emh - 1.0)                # -alpha_t (e^{-h} - 1)
        cb, cd = c0, 0.0
        if order == 2 and h != 0.0:
            # D1 = (m0 - m1) / r0, r0 = h_0 / h: its weight goes to x0 (m0) and, negated, to the history (m1)
            a_s1, s_s1 = self._alpha_sigma(self._sig[i - 1])
            h0 = lam_s0 - (math.log(a_s1) - math.log(s_s1))
            # (h is finite here: a zero final sigma always takes a first-order step)
            inv_r0 = h / h0 if h0 != 0.0 else math.inf  # h0 = 0: diffusers' D1 is inf as well
            if cfg.solver_type == "midpoint":
                w = 0.5 * c0
            elif sde:
                w = a_t * ((1.0 - emh * emh) / (-2.0 * h) + 1.0)
            else:
                w = a_t * ((emh - 1.0) / h + 1.0)
            cb, cd = c0 + w * inv_r0, -w * inv_r0
            plan.flags |= R.HIST
        elif order == 2:
            # h = 0 (two equal sigmas, e.g. Karras sigmas ending at sigma_min with final_sigmas_type=
            # "sigma_min"): the step is the identity and every D1 term vanishes (diffusers: D1 = 0)
            plan.flags |= R.HIST
        return plan.set(a=ca, b=cb, c=0.0, d=cd)

    def convert_model_output(self, model_output: torch.Tensor, *args, sample: torch.Tensor = None, **kwargs):
        """The model output in the solver's parameterization at the current step (diffusers'
        convert_model_output): x0 for dpmsolver++ / sde-dpmsolver++, epsilon for the others."""
        if sample is None:
            raise ValueError("convert_model_output needs sample=")
        if self._step_index is None:
            self._init_step_index(args[0] if args else self.timesteps[0])
        if not self._fused():
            return self._convert_torch(self._step_index, self._prediction_channels(model_output, sample),
                                       sample.to(torch.float32))
        plan = self._plan(self._step_index, order=1, var_channels=self._has_var_channels(model_output, sample))
        plan.set(a=0.0, b=0.0)  # a fresh (uncached) plan: x0 only
        _, x0 = D.fused_step(model_output, sample, plan, want_x0=True)
        return x0

    @staticmethod
    def _has_var_channels(model_output, sample) -> bool:
        return model_output.ndim >= 2 and sample.ndim >= 2 and model_output.shape[1] == 2 * sample.shape[1]

    def _prediction_channels(self, model_output, sample):
        """With a learned variance the model may append C variance channels; the solver uses the
        prediction channels (diffusers slices model_output[:, :3], i.e. assumes C = 3)."""
        if self.config.variance_type in ("learned", "learned_range") and self._has_var_channels(model_output, sample):
            return model_output[:, : sample.shape[1]]
        return model_output

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True,
             guidance_scale: float | None = None, guidance_rescale: float = 0.0):
        """One multistep step: diffusers' DPMSolverMultistepScheduler.step, fused (DPM-Solver++ and
        its SDE variant up to second order; third order and the deprecated noise-prediction
        algorithms run on torch ops)."""
        self._require_timesteps()
        i = self._index(timestep)
        cfg = self.config
        order = self._order(i)
        if not self._fused():
            prev, x0 = self._step_torch(i, order, model_output, sample, guidance_scale, guidance_rescale,
                                        generator, variance_noise)
            x0_fn = None
        else:
            var_channels = self._has_var_channels(model_output, sample)
            plan = self._cached_plan(i, order, var_channels)
            history = self.model_outputs[-1] if order == 2 else None
            n = len(self._ts_host)
            need_x0 = cfg.solver_order > 1 and i < n - 1  # the next step reads this x0
            # diffusers draws the SDE noise in float32 whatever the model's dtype
            prev, x0, x0_fn = self._run(plan, model_output, sample, guidance_scale=guidance_scale,
                                        guidance_rescale=guidance_rescale, generator=generator,
                                        variance_noise=variance_noise, history=history, want_x0=need_x0,
                                        noise_dtype=torch.float32)
        for k in range(cfg.solver_order - 1):
            self.model_outputs[k] = self.model_outputs[k + 1]
        self.model_outputs[-1] = x0
        if self.lower_order_nums < cfg.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        out = StepOutput(prev, x0, x0_fn, as_tuple_len=1)
        return out if return_dict else out.to_tuple()

    # -- the torch-ops path: third order and the noise-prediction (deprecated) algorithms ---------
    def _lambda(self, i: int) -> tuple[float, float, float]:
        a, s = self._alpha_sigma(self._sig[i])
        return a, s, (math.log(a) - math.log(s)) if s > 0 else math.inf

    def _convert_torch(self, i, m, x):
        cfg = self.config
        a, s, _ = self._lambda(i)
        m = m.to(x.dtype)
        pred = cfg.prediction_type
        if pred == "epsilon":
            x0, eps = (x - s * m) / a, m
        elif pred == "sample":
            x0, eps = m, (x - a * m) / s
        else:
            x0, eps = a * x - s * m, a * m + s * x
        if cfg.thresholding:
            x0 = self._threshold(x0)
            eps = (x - a * x0) / s
        return x0 if cfg.algorithm_type in ("dpmsolver++", "sde-dpmsolver++") else eps

    def _threshold(self, x0):
        """diffusers' dynamic thresholding: s = clamp(quantile(|x0_b|, ratio), 1, max) per sample."""
        cfg = self.config
        flat = x0.reshape(x0.shape[0], -1)
        q = torch.quantile(flat.abs().float(), cfg.dynamic_thresholding_ratio, dim=1)
        q = q.clamp(min=1.0, max=cfg.sample_max_value).to(x0.dtype).unsqueeze(1)
        return (torch.clamp(flat, -q, q) / q).reshape(x0.shape)

    def _step_torch(self, i, order, model_output, sample, guidance_scale, guidance_rescale, generator,
                    variance_noise):
        cfg = self.config
        out_dtype = model_output.dtype
        m = model_output
        if guidance_scale is not None:
            m = _guided(m, guidance_scale, guidance_rescale)
        elif guidance_rescale:
            raise ValueError("guidance_rescale needs guidance_scale (a batched unconditional + conditional output)")
        m = self._prediction_channels(m, sample)
        if m.shape != sample.shape:
            raise ValueError(f"model_output shape {tuple(m.shape)} does not match sample shape {tuple(sample.shape)}")
        cdt = torch.float64 if sample.dtype == torch.float64 else torch.float32
        x = sample.to(cdt)
        m0 = self._convert_torch(i, m, x)
        outs = [o for o in self.model_outputs[1:]] + [m0]  # the history as it will be after this step
        sde = cfg.algorithm_type.startswith("sde")
        noise = None
        if sde:
            if variance_noise is not None:
                if generator is not None:
                    raise ValueError("pass either generator or variance_noise, not both")
                noise = variance_noise
            elif generator is not None:
                noise = randn_tensor(tuple(sample.shape), generator, sample.device, torch.float32)
            else:
                from ..reference.random import randn
                seed, offset = self._next_noise(sample)
                noise = randn(tuple(sample.shape), seed, offset, dtype=torch.float32, device=sample.device)
            noise = noise.to(device=sample.device, dtype=cdt)
        a_t, s_t, l_t = self._lambda(i + 1)
        a_0, s_0, l_0 = self._lambda(i)
        h = l_t - l_0
        if h == 0.0:  # two equal sigmas: the identity step; every higher-order term vanishes (diffusers: D1 = 0)
            order = 1
        ds = [o.to(cdt) for o in outs[-order:]][::-1]  # m0, m1, m2
        D0 = ds[0]
        D1 = D2 = None
        if order >= 2:
            _, _, l_1 = self._lambda(i - 1)
            h0 = l_0 - l_1
            r0 = h0 / h
            D1_0 = (ds[0] - ds[1]) / r0
            D1 = D1_0
            if order == 3:
                _, _, l_2 = self._lambda(i - 2)
                r1 = (l_1 - l_2) / h
                D1_1 = (ds[1] - ds[2]) / r1
                D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
                D2 = (D1_0 - D1_1) / (r0 + r1)
        em, ep = math.exp(-h), math.exp(h)
        algo, heun = cfg.algorithm_type, cfg.solver_type == "heun"
        if algo == "dpmsolver++":
            prev = (s_t / s_0) * x - (a_t * (em - 1.0)) * D0
            if order == 2:
                prev = prev + (a_t * ((em - 1.0) / h + 1.0)) * D1 if heun else prev - 0.5 * (a_t * (em - 1.0)) * D1
            elif order == 3:
                prev = prev + (a_t * ((em - 1.0) / h + 1.0)) * D1 - (a_t * ((em - 1.0 + h) / h**2 - 0.5)) * D2
        elif algo == "dpmsolver":
            prev = (a_t / a_0) * x - (s_t * (ep - 1.0)) * D0
            if order == 2:
                prev = prev - (s_t * ((ep - 1.0) / h - 1.0)) * D1 if heun else prev - 0.5 * (s_t * (ep - 1.0)) * D1
            elif order == 3:
                prev = prev - (s_t * ((ep - 1.0) / h - 1.0)) * D1 - (s_t * ((ep - 1.0 - h) / h**2 - 0.5)) * D2
        elif algo == "sde-dpmsolver++":
            e2 = 1.0 - math.exp(-2.0 * h)
            prev = (s_t / s_0 * em) * x + (a_t * e2) * D0 + s_t * math.sqrt(e2) * noise
            if order == 2:
                prev = prev + (a_t * (e2 / (-2.0 * h) + 1.0)) * D1 if heun else prev + 0.5 * (a_t * e2) * D1
            elif order == 3:
                prev = prev + (a_t * (e2 / (-2.0 * h) + 1.0)) * D1 \
                    + (a_t * ((e2 - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * D2
        else:  # sde-dpmsolver
            prev = (a_t / a_0) * x - 2.0 * (s_t * (ep - 1.0)) * D0 + s_t * math.sqrt(math.exp(2.0 * h) - 1.0) * noise
            if order == 2:
                prev = prev - 2.0 * (s_t * ((ep - 1.0) / h - 1.0)) * D1 if heun else prev - (s_t * (ep - 1.0)) * D1
            elif order == 3:
                raise ValueError("solver_order=3 is not defined for algorithm_type='sde-dpmsolver' (as in diffusers)")
        return prev.to(out_dtype), m0

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        idx = self._sigma_step_indices(timesteps, original_samples.shape[0])
        sigma = self.sigmas[idx].flatten().double()
        alpha = 1.0 / (sigma**2 + 1) ** 0.5
        return D._add_noise(original_samples, noise.to(original_samples.dtype),
                                           alpha.float().to(original_samples.device),
                                           (sigma * alpha).float().to(original_samples.device))


def _guided(model_output, guidance_scale, guidance_rescale):
    """u + g (c - u) of a batched [unconditional; conditional] output, rescaled as diffusers'
    rescale_noise_cfg does (the fused kernel computes the same inside the step)."""
    u, c = model_output.chunk(2)
    m = u + guidance_scale * (c - u)
    if guidance_rescale:
        dims = list(range(1, c.ndim))
        m = guidance_rescale * (m * (c.std(dim=dims, keepdim=True) / m.std(dim=dims, keepdim=True))) \
            + (1.0 - guidance_rescale) * m
    return m
