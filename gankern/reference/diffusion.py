"""Diffusion specification: one generic denoising step that every scheduler is an instance of, the
per-sample factors it can take (guidance rescale, dynamic thresholding), and the training side
(q_sample, fused target + weighted MSE).

The generic step, per element of the latents (x = sample, all coefficients host-computed scalars):

    m   = (u + g (c - u)) * k_b          guided model output: u, c = unconditional / conditional half
                                         of model_output (diffusers' chunk(2)); unguided: m = model
                                         output; k_b = guidance-rescale factor of sample b (else 1)
    x'  = x + cpre * z                   z = noise (Euler's "churn" adds noise before predicting)
    x0  = px x' + pm m                   prediction type -> x0 (epsilon / v / sample all linear)
    x0  = clamp(x0, -c, c)               clip_sample (flag CLIP), or
    x0  = clamp(x0, -s_b, s_b) / s_b     dynamic thresholding (flag THRESH), s_b per sample
    eps = qx x' + qm m + q0 x0           prediction type -> epsilon (q0: DDIM's clipped model output)
    prev = ca x' + cb x0 + cc eps + cd h + std * z
                                         h = history (DPM-Solver's previous x0), std = cs, or per
                                         element exp(e0 + e1 v) (learned_range) or cs sqrt(v)
                                         (learned) from the variance channels v of model_output

Everything is computed in the input dtype for fp32/fp64 and in fp32 for fp16/bf16, like the kernels.

inf/NaN rule: a term whose coefficient is exactly 0 is absent, whatever its operand: c * v with
c == 0 contributes 0 even when v is inf or NaN (0 * inf would be NaN). This holds for every
host-computed coefficient above (cpre, px, pm, qx, qm, q0, ca, cb, cc, cd, the constant std) and for
a per-element std of 0; it is what diffusers' formulas give, which never contain those terms (the
last DDPM step has no x_t term, prediction_type="sample" no epsilon term). The guidance mix
u + g (c - u) is computed as written (diffusers' pipelines do). Every kernel follows this rule
(csrc/diffusion/diffusion.h: term).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _tables

# Coefficient slots and flags of the generic step: gankern/_tables.py is their one definition
# (the kernels are built from it).
_SLOT = {name: i for i, name in enumerate(_tables.DIFFUSION_COEFS)}
NCOEF = _tables.scalar("DIFFUSION_NUM_COEFS")
(C_G, C_PRE, C_PX, C_PM, C_CLIP, C_QX, C_QM, C_Q0, C_A, C_B, C_C, C_D, C_S, C_E0, C_E1) = (
    _SLOT[n] for n in ("g", "pre", "px", "pm", "clip", "qx", "qm", "q0", "a", "b", "c", "d", "s", "e0", "e1"))

_FLAG = _tables.DIFFUSION_FLAGS
GUIDED = _FLAG["guided"]                    # model_output holds 2B samples: unconditional half first
CLIP = _FLAG["clip"]                        # clamp x0 to [-coef[C_CLIP], coef[C_CLIP]]
THRESH = _FLAG["thresh"]                    # dynamic thresholding with per-sample scales
HIST = _FLAG["hist"]                        # history tensor (multistep solvers)
NOISE_TENSOR = _FLAG["noise_tensor"]        # noise given as a tensor
NOISE_PHILOX = _FLAG["noise_philox"]        # noise from (seed, offset): element i = randn(shape, seed, offset)[i]
VAR_LEARNED_RANGE = _FLAG["var_learned_range"]  # std = exp(e0 + e1 v), v = variance channels of model_output
VAR_LEARNED = _FLAG["var_learned"]          # std = cs * sqrt(v)
RESCALE = _FLAG["rescale"]                  # per-sample guidance-rescale factors k_b
HAS_VAR_CHANNELS = 2 * max(_FLAG.values())  # plan-level only (never reaches a kernel): model_output
                                            # carries 2C channels the step ignores
NOISE = NOISE_TENSOR | NOISE_PHILOX
VAR = VAR_LEARNED_RANGE | VAR_LEARNED


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _per_sample_numel(sample: Tensor) -> int:
    n = 1
    for s in sample.shape[1:]:
        n *= s
    return n


def _noise(sample: Tensor, noise: Tensor | None, flags: int, seed: int, offset: int, dtype) -> Tensor | None:
    S = _per_sample_numel(sample)
    if flags & NOISE_TENSOR:
        return noise.to(dtype).reshape(sample.shape[0], S)
    if flags & NOISE_PHILOX:
        from .random import randn
        # fp32 normals as every kernel draws them, then widened
        return randn(tuple(sample.shape), seed, offset, dtype=torch.float32,
                     device=sample.device).to(dtype).reshape(sample.shape[0], S)
    return None


def split_model_output(model_output: Tensor, sample: Tensor, flags: int, dtype) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(unconditional or only half, conditional half or None, variance channels of the conditional
    half or None), each [B, S]. The variance channels are the second half of dim 1 (diffusers'
    torch.split(model_output, C, dim=1)); with guidance they come from the conditional half, as
    diffusers' pipelines re-attach them."""
    G = 2 if flags & GUIDED else 1
    B = sample.shape[0]
    S = _per_sample_numel(sample)
    K = model_output.numel() // max(G * sample.numel(), 1) if sample.numel() else \
        (model_output.shape[1] // sample.shape[1] if model_output.ndim > 1 and sample.ndim > 1 and sample.shape[1] else 1)
    mo = model_output.to(dtype).reshape(G, B, K, S)
    u = mo[0, :, 0]
    c = mo[1, :, 0] if G == 2 else None
    v = mo[G - 1, :, 1] if K == 2 and flags & VAR else None
    return u, c, v


def term(c, v: Tensor) -> Tensor:
    """c * v, or exactly 0 where the coefficient c (a number, or a tensor broadcast against v) is 0."""
    if isinstance(c, Tensor):
        return torch.where(c != 0, c * v, torch.zeros((), dtype=v.dtype, device=v.device))
    return c * v if c != 0 else torch.zeros_like(v)


def guided(u: Tensor, c: Tensor | None, g: float) -> Tensor:
    return u if c is None else u + g * (c - u)


def diffusion_step(model_output: Tensor, sample: Tensor, history: Tensor | None, noise: Tensor | None,
                   rescale: Tensor | None, thresh: Tensor | None, coefs: list[float], flags: int, seed: int,
                   offset: int, want_x0: bool) -> tuple[Tensor, Tensor]:
    """(prev_sample, pred_original_sample); the latter is an empty tensor unless want_x0."""
    dt = _compute_dtype(sample)
    B = sample.shape[0]
    S = _per_sample_numel(sample)
    k = coefs
    x = sample.to(dt).reshape(B, S)
    u, c, v = split_model_output(model_output, sample, flags, dt)
    m = guided(u, c, k[C_G])
    if flags & RESCALE:
        m = m * rescale.to(dt)[:, None]
    z = _noise(sample, noise, flags, seed, offset, dt)
    if z is not None:
        x = x + term(k[C_PRE], z)
    x0 = term(k[C_PX], x) + term(k[C_PM], m)
    if flags & CLIP:
        x0 = x0.clamp(-k[C_CLIP], k[C_CLIP])
    elif flags & THRESH:
        s = thresh.to(dt)[:, None]
        x0 = torch.minimum(torch.maximum(x0, -s), s) / s
    eps = term(k[C_QX], x) + term(k[C_QM], m) + term(k[C_Q0], x0)
    prev = term(k[C_A], x) + term(k[C_B], x0) + term(k[C_C], eps)
    if flags & HIST:
        prev = prev + term(k[C_D], history.to(dt).reshape(B, S))
    if z is not None:
        if flags & VAR_LEARNED_RANGE:
            std = torch.exp(k[C_E0] + k[C_E1] * v)
        elif flags & VAR_LEARNED:
            std = k[C_S] * torch.sqrt(v)
        else:
            std = k[C_S]
        prev = prev + term(std, z)
    prev = prev.to(sample.dtype).reshape(sample.shape)
    x0_out = x0.to(sample.dtype).reshape(sample.shape) if want_x0 else sample.new_empty((0,))
    return prev, x0_out


def guidance_rescale_factors(model_output: Tensor, g: float, rescale: float) -> Tensor:
    """k_b = 1 - r + r * std(c_b) / std(m_b) (diffusers' rescale_noise_cfg, unbiased std over all
    but the batch dim), in fp32 (fp64 for fp64 input)."""
    dt = _compute_dtype(model_output)
    B = model_output.shape[0] // 2
    mo = model_output.to(dt).reshape(2, B, model_output[0].numel() if B else 0)
    cond = mo[1]
    m = guided(mo[0], cond, g)
    return (1 - rescale) + rescale * cond.std(dim=1) / m.std(dim=1)


def quantile_rank(ratio: float, n: int) -> tuple[int, float]:
    """torch.quantile's linear interpolation position for q = ratio over n values, computed in
    float32 as torch does for a float32 input: (index below, weight of the value above)."""
    import numpy as np
    rank = np.float32(ratio) * np.float32(n - 1)
    lo = int(rank)
    return lo, float(rank - np.float32(lo))


def threshold_scales(x0: Tensor, ratio: float, max_value: float) -> Tensor:
    """s_b = clamp(quantile(|x0_b|, ratio), 1, max_value) (diffusers' _threshold_sample)."""
    B = x0.shape[0]
    a = x0.reshape(B, -1).abs()
    if a.dtype not in (torch.float32, torch.float64):
        a = a.float()
    s = torch.quantile(a, ratio, dim=1)
    return s.clamp(min=1, max=max_value)


# ---- training side ---------------------------------------------------------------------------

def per_sample(t: Tensor, ndim: int) -> Tensor:
    return t.reshape(-1, *([1] * (ndim - 1)))


def q_coefficients(timesteps: Tensor, alphas_cumprod: Tensor, dtype) -> tuple[Tensor, Tensor]:
    """(sqrt(a_t), sqrt(1 - a_t)) per sample, a_t = alphas_cumprod[timesteps]."""
    a = alphas_cumprod.to(device=timesteps.device)[timesteps.long()].to(dtype)
    return a.sqrt(), (1 - a).sqrt()


def add_noise(x0: Tensor, noise: Tensor, ca: Tensor, cn: Tensor) -> Tensor:
    """x_t = ca_b x0 + cn_b noise (q_sample), per-sample coefficients ca, cn of shape [B]."""
    dt = _compute_dtype(x0)
    y = per_sample(ca.to(dt), x0.ndim) * x0.to(dt) + per_sample(cn.to(dt), x0.ndim) * noise.to(dt)
    return y.to(x0.dtype)


def diffusion_loss(model_output: Tensor, x0: Tensor, noise: Tensor, tx: Tensor, tn: Tensor,
                   weight: Tensor) -> Tensor:
    """Per-sample weighted MSE against target = tx_b x0 + tn_b noise: returns [B] fp32 (fp64 for
    fp64 input) w_b * mean((model_output_b - target_b)^2)."""
    dt = _compute_dtype(model_output)
    n = x0.ndim
    target = per_sample(tx.to(dt), n) * x0.to(dt) + per_sample(tn.to(dt), n) * noise.to(dt)
    r = model_output.to(dt) - target
    return weight.to(dt) * r.reshape(r.shape[0], _per_sample_numel(r)).pow(2).mean(dim=1)


def diffusion_loss_backward(grad: Tensor, model_output: Tensor, x0: Tensor, noise: Tensor, tx: Tensor,
                            tn: Tensor, weight: Tensor) -> Tensor:
    """d(sum_b grad_b * loss_b) / d model_output = 2 grad_b w_b / S * (model_output - target)."""
    dt = _compute_dtype(model_output)
    n = x0.ndim
    S = _per_sample_numel(model_output)
    target = per_sample(tx.to(dt), n) * x0.to(dt) + per_sample(tn.to(dt), n) * noise.to(dt)
    scale = per_sample((2.0 / max(S, 1)) * grad.to(dt) * weight.to(dt), n)  # S = 0: nothing to scale
    return (scale * (model_output.to(dt) - target)).to(model_output.dtype)
