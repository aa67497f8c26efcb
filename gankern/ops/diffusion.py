"""Diffusion ops: the generic fused denoising step every scheduler in gankern.schedulers is an
instance of, its per-sample helpers, and the training side (q_sample, fused diffusion loss).

    fused_step(model_output, sample, plan, ...)   one pass over the latents: guidance, x0 / eps from
                                                  the prediction type, clip / threshold, the update
                                                  and in-kernel Philox noise (gankern/reference/
                                                  diffusion.py has the exact formula)
    add_noise(x0, noise, timesteps, alphas_cumprod)              q_sample, one pass
    diffusion_loss(model_output, x0, noise, timesteps, alphas_cumprod, prediction_type, weighting)
                                                  target + per-sample weighted MSE, one pass
                                                  forward and one backward

Coefficients are computed by the schedulers on the host in float64 and passed as scalars: no
device -> host synchronization anywhere in a step. Per-sample quantities that depend on the data
(guidance-rescale factors, dynamic-thresholding scales) are computed on the device by a reduction /
selection pass and passed to the step as [B] tensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from .. import _native, _op, _tables
from .. import _tensors as T
from ..backends import FP32_HALF, register, resolve_nonempty
from ..reference import diffusion as ref
from . import _validate as V

R = ref  # coefficient slots and flags live in the reference (the specification)

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_SLOTS = {name[2:].lower(): getattr(R, name) for name in dir(R) if name.startswith("C_")}


@dataclass
class StepPlan:
    """One scheduler step as the generic kernel sees it (host-side, built per step in float64).

    coefs: NCOEF floats in the slots of gankern.reference.diffusion (C_G is filled in from the
    guidance scale); flags: CLIP / HIST / VAR_* bits; stochastic: the step adds noise; threshold:
    (ratio, max_value) of dynamic thresholding, or None."""
    coefs: list = field(default_factory=lambda: [0.0] * R.NCOEF)
    flags: int = 0
    stochastic: bool = False
    threshold: Optional[tuple] = None

    def set(self, **kw) -> "StepPlan":
        for name, value in kw.items():
            self.coefs[_SLOTS[name]] = float(value)
        return self


def noise_counters(numel: int) -> int:
    """Philox counters one noise tensor of numel elements consumes (4 normals per counter): the
    offset advance between two noise draws that must not overlap."""
    return (numel + 3) // 4


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A Philox seed from `generator` (default: torch's global CPU generator via gankern.random_seed,
    so torch.manual_seed governs results). Drawn on the CPU: no device synchronization."""
    if generator is None:
        from .random import random_seed
        return random_seed()
    if generator.device.type != "cpu":
        # a CUDA generator: drawing on its device then .item() would synchronize; use its seed
        return int(generator.initial_seed()) & ((1 << 63) - 1)
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, dtype=torch.int64).item())


def _contiguous(out, like: Tensor):
    """Full-size outputs of every diffusion op are contiguous on every backend: the kernels index
    [B, S] row-major (the noise contract numbers elements that way), so a channels_last input is
    read through a contiguous copy. The fakes state it (torch.compile / export trust them)."""
    return T.restride_contiguous(out, like)


def _empty_contiguous(like: Tensor) -> Tensor:
    return T.empty_strided_like(like, T.contiguous_strides(like.shape))


def _check_step_inputs(model_output, sample, guided, history, noise, flags):
    V.tensor(model_output, "model_output", ndim_min=1)
    V.tensor(sample, "sample", ndim_min=1)
    V.same_device(sample, "sample", model_output=model_output, history=history, noise=noise)
    B = sample.shape[0]
    G = 2 if guided else 1
    if model_output.shape[0] != G * B:
        if guided:
            raise ValueError(f"with guidance_scale, model_output must hold 2*B = {2 * B} samples (the "
                             f"unconditional half first, as chunk(2) splits it) for a sample of batch {B}; "
                             f"got batch {model_output.shape[0]}")
        raise ValueError(f"model_output has batch {model_output.shape[0]} but sample has batch {B} "
                         "(pass guidance_scale for a batched unconditional + conditional output)")
    ms, ss = tuple(model_output.shape[1:]), tuple(sample.shape[1:])
    var = flags & (R.VAR | R.HAS_VAR_CHANNELS)
    if var:
        want = (2 * ss[0],) + ss[1:] if ss else None
        if ms != want:
            raise ValueError(f"model_output must have shape [N, 2*C, ...] = [N, {want}] (predicted variance "
                             f"channels after the prediction) for sample {tuple(sample.shape)}, got "
                             f"{tuple(model_output.shape)}")
    elif ms != ss:
        raise ValueError(f"model_output shape {tuple(model_output.shape)} does not match sample shape "
                         f"{tuple(sample.shape)} beyond the batch dimension")
    for name, t in (("history", history), ("noise", noise)):
        if t is not None:
            V.tensor(t, name)
            if t.shape != sample.shape:
                raise ValueError(f"{name} must have the sample's shape {tuple(sample.shape)}, got {tuple(t.shape)}")


def fused_step(model_output: Tensor, sample: Tensor, plan: StepPlan, *, guidance_scale: float | None = None,
               guidance_rescale: float = 0.0, history: Tensor | None = None, noise: Tensor | None = None,
               seed: int = 0, offset: int = 0, want_x0: bool = False) -> tuple[Tensor, Tensor | None]:
    """Runs one planned step: (prev_sample, pred_original_sample or None).

    model_output: [B, ...] or, with guidance_scale, [2B, ...] (unconditional half first); with a
    learned variance the channel dim is 2C (prediction, then variance). noise: an explicit noise
    tensor (else, if the plan is stochastic, noise element i is gankern.randn(sample.shape, seed,
    offset)[i], generated in the kernel; seed and offset: ints in [-2^63, 2^64), checked by
    _validate.seed_bits like every seeded op)."""
    flags = plan.flags
    guided = guidance_scale is not None
    if guided:
        flags |= R.GUIDED
    if history is not None:
        flags |= R.HIST
    elif flags & R.HIST:
        raise ValueError("this step needs the previous step's x0 (history) but none was given")
    _check_step_inputs(model_output, sample, guided, history, noise, flags)
    if torch.is_grad_enabled() and (model_output.requires_grad or sample.requires_grad or (
            history is not None and history.requires_grad) or (noise is not None and noise.requires_grad)):
        for name, t in (("model_output", model_output), ("sample", sample), ("history", history), ("noise", noise)):
            if t is not None and t.requires_grad:
                raise ValueError(f"{name} requires grad, but the fused sampling step is not differentiable (its "
                                 "gradient would be silently missing); sample under torch.no_grad() or pass "
                                 f"{name}.detach()")
    coefs = list(plan.coefs)
    coefs[R.C_G] = V.real(guidance_scale, "guidance_scale", finite=True) if guided else 1.0
    guidance_rescale = V.real(guidance_rescale, "guidance_rescale", min_value=0.0)
    if guidance_rescale > 1.0:
        raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale}")
    if plan.stochastic:
        if noise is not None:
            flags |= R.NOISE_TENSOR
        else:
            flags |= R.NOISE_PHILOX
            seed, offset = V.seed_bits(seed), V.seed_bits(offset, "offset")
    flags &= ~R.HAS_VAR_CHANNELS
    if model_output.dtype != sample.dtype:
        model_output = model_output.to(sample.dtype)
    rescale = None
    if guidance_rescale > 0:
        if not guided:
            raise ValueError("guidance_rescale needs guidance_scale (a batched unconditional + conditional output)")
        mo_pred = _pred_channels(model_output, sample)
        rescale = _guidance_rescale_factors.unchecked(mo_pred, coefs[R.C_G], guidance_rescale)
        flags |= R.RESCALE
    thresh = None
    if plan.threshold is not None and sample.numel() == 0:
        # nothing to take a quantile of (and nothing to scale): every scale is the clamp's lower bound
        thresh = torch.ones(sample.shape[0], dtype=torch.float32, device=sample.device)
        flags |= R.THRESH
    elif plan.threshold is not None:
        ratio, max_value = plan.threshold
        lo, w = ref.quantile_rank(ratio, sample[0].numel())
        thresh = _diffusion_threshold_scales.unchecked(model_output, sample, rescale, coefs, flags, lo, w,
                                                       float(max_value))
        flags |= R.THRESH
    prev, x0 = _diffusion_step.unchecked(model_output, sample, history, noise, rescale, thresh, coefs, flags,
                                         int(seed), int(offset), bool(want_x0))
    return prev, (x0 if want_x0 else None)


def _pred_channels(model_output: Tensor, sample: Tensor) -> Tensor:
    """The prediction channels of a model output that may carry variance channels after them."""
    if model_output.ndim >= 2 and sample.ndim >= 2 and model_output.shape[1] == 2 * sample.shape[1]:
        return model_output[:, : sample.shape[1]]
    return model_output


# ---- training side ---------------------------------------------------------------------------

def _timestep_coefs(x0: Tensor, timesteps: Tensor, alphas_cumprod: Tensor) -> tuple[Tensor, Tensor]:
    V.tensor(alphas_cumprod, "alphas_cumprod")
    if not isinstance(timesteps, Tensor) or timesteps.dtype.is_floating_point or timesteps.dtype == torch.bool:
        raise TypeError(f"timesteps must be an integer tensor, got "
                        f"{timesteps.dtype if isinstance(timesteps, Tensor) else type(timesteps).__name__}")
    if timesteps.numel() == 1 and x0.shape[0] != 1:  # one timestep for the batch, as diffusers broadcasts it
        timesteps = timesteps.reshape(1).expand(x0.shape[0])
    for name, t in (("timesteps", timesteps), ("alphas_cumprod", alphas_cumprod)):
        # schedule tables may stay on the CPU (diffusers keeps them there); they are moved to x0's device
        if t.device != x0.device and t.device.type != "cpu":
            raise ValueError(f"{name} is on {t.device} but the latents are on {x0.device}; "
                             f"{name} must be on the CPU or on the latents' device")
    if timesteps.numel() != x0.shape[0]:
        raise ValueError(f"timesteps must hold one timestep per sample ({x0.shape[0]}) or one for all, got shape "
                         f"{tuple(timesteps.shape)}")
    if alphas_cumprod.ndim != 1:
        raise ValueError(f"alphas_cumprod must be 1-D, got shape {tuple(alphas_cumprod.shape)}")
    dt = torch.float64 if x0.dtype == torch.float64 else torch.float32
    return ref.q_coefficients(timesteps.reshape(-1).to(x0.device), alphas_cumprod.to(x0.device), dt)


def add_noise(x0: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """q_sample: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise, a_t = alphas_cumprod[timesteps] per sample
    (diffusers' DDPMScheduler.add_noise). One pass; differentiable in x0 and noise."""
    V.tensor(x0, "x0", ndim_min=1)
    V.tensor(noise, "noise")
    V.same_device(x0, "x0", noise=noise)
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}")
    ca, cn = _timestep_coefs(x0, timesteps, alphas_cumprod)
    return _add_noise(x0, noise.to(x0.dtype), ca, cn)


def diffusion_loss(model_output: Tensor, x0: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor,
                   prediction_type: str = "epsilon", weighting: Tensor | None = None,
                   reduction: str = "mean") -> Tensor:
    """Weighted denoising loss: mean over samples of w_b * mean((model_output_b - target_b)^2), with
    target = noise (epsilon), sqrt(a_t) noise - sqrt(1 - a_t) x0 (v_prediction) or x0 (sample).

    weighting: per-sample weights [B] (e.g. min-SNR), or None for 1. reduction: "mean" (a scalar)
    or "none" (the [B] weighted per-sample losses). Gradients flow to model_output (the fused
    backward writes them in one pass) and, if they require it, to x0 and noise."""
    V.tensor(model_output, "model_output", ndim_min=1)
    V.tensor(x0, "x0")
    V.tensor(noise, "noise")
    if weighting is not None:
        V.tensor(weighting, "weighting")
    V.same_device(model_output, "model_output", x0=x0, noise=noise, weighting=weighting)
    for name, t in (("x0", x0), ("noise", noise)):
        if t.shape != model_output.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} must equal model_output shape {tuple(model_output.shape)}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    sa, sb = _timestep_coefs(model_output, timesteps, alphas_cumprod)
    if prediction_type == "epsilon":
        tx, tn = torch.zeros_like(sa), torch.ones_like(sa)
    elif prediction_type == "v_prediction":
        tx, tn = -sb, sa
    else:
        tx, tn = torch.ones_like(sa), torch.zeros_like(sa)
    if weighting is None:
        w = torch.ones_like(sa)
    else:
        if weighting.numel() != model_output.shape[0]:
            raise ValueError(f"weighting must hold one weight per sample ({model_output.shape[0]}), got shape "
                             f"{tuple(weighting.shape)}")
        w = weighting.reshape(-1).to(sa.dtype)
    x0, noise = x0.to(model_output.dtype), noise.to(model_output.dtype)
    per = _diffusion_loss(model_output, x0, noise, tx, tn, w)
    return per.mean() if reduction == "mean" else per


# ---- custom ops ------------------------------------------------------------------------------

# Every custom op checks its own operands before any kernel runs: torch.ops.gankern.* are public
# (users, opcheck and torch.compile call them directly, the schedulers call add_noise directly), and
# the kernels index per-sample vectors and optional operands without bounds checks.

def _per_sample_vector(t, name: str, B: int, device) -> None:
    V.tensor(t, name)
    if t.numel() != B or t.ndim > 1:
        raise ValueError(f"{name} must hold one value per sample: shape [{B}], got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the samples are on {device}")


def _check_step_op(model_output, sample, history, noise, rescale, thresh, coefs, flags) -> None:
    if not isinstance(flags, int) or flags < 0 or flags & ~_ALL_FLAGS:
        raise ValueError(f"flags must be a combination of gankern.reference.diffusion's flags, got {flags!r}")
    if len(coefs) != R.NCOEF:
        raise ValueError(f"coefs must hold {R.NCOEF} coefficients, got {len(coefs)}")
    V.tensor(model_output, "model_output", ndim_min=1)
    V.tensor(sample, "sample", ndim_min=1)
    # variance channels after the prediction: read with a VAR flag, skipped (stride) without one
    var_channels = model_output.ndim >= 2 and sample.ndim >= 2 and model_output.shape[1] == 2 * sample.shape[1]
    _check_step_inputs(model_output, sample, bool(flags & R.GUIDED), history, noise,
                       flags | (R.HAS_VAR_CHANNELS if var_channels else 0))
    if model_output.dtype != sample.dtype:
        raise TypeError(f"model_output dtype {model_output.dtype} must equal sample dtype {sample.dtype}")
    B = sample.shape[0]
    for name, t, flag in (("history", history, R.HIST), ("noise", noise, R.NOISE_TENSOR)):
        if bool(flags & flag) != (t is not None):
            raise ValueError(f"{name} must be given exactly when its flag is set (flags={flags})")
    for name, t, flag in (("rescale", rescale, R.RESCALE), ("thresh", thresh, R.THRESH)):
        if bool(flags & flag) != (t is not None):
            raise ValueError(f"{name} must be given exactly when its flag is set (flags={flags})")
        if t is not None:
            _per_sample_vector(t, name, B, sample.device)


def _check_guided_output(model_output) -> None:
    V.tensor(model_output, "model_output", ndim_min=1)
    if model_output.shape[0] % 2:
        raise ValueError(f"model_output must hold 2*B samples (unconditional half first), got batch "
                         f"{model_output.shape[0]}")


def _check_lincomb(x0, noise, ca, cn, x_name="x0", noise_name="noise") -> None:
    V.tensor(x0, x_name, ndim_min=1)
    V.tensor(noise, noise_name)
    V.same_device(x0, x_name, **{noise_name: noise})
    if noise.shape != x0.shape or noise.dtype != x0.dtype:
        raise ValueError(f"{noise_name} ({tuple(noise.shape)}, {noise.dtype}) must have {x_name}'s shape and dtype "
                         f"({tuple(x0.shape)}, {x0.dtype})")
    for name, t in (("ca", ca), ("cn", cn)):
        _per_sample_vector(t, name, x0.shape[0], x0.device)


def _check_loss_op(model_output, x0, noise, tx, tn, weight, grad=None) -> None:
    _check_lincomb(model_output, x0, tx, tn, "model_output", "x0")
    _check_lincomb(model_output, noise, tx, tn, "model_output", "noise")
    _per_sample_vector(weight, "weight", model_output.shape[0], model_output.device)
    if grad is not None:
        _per_sample_vector(grad, "grad", model_output.shape[0], model_output.device)


_ALL_FLAGS = (R.GUIDED | R.CLIP | R.THRESH | R.HIST | R.NOISE | R.VAR | R.RESCALE | R.HAS_VAR_CHANNELS)


# fused_step builds these operands itself and calls the step ops' `unchecked` (gankern/_op.py)
def _check_step(model_output, sample, history, noise, rescale, thresh, coefs, flags, seed, offset, want_x0):
    _check_step_op(model_output, sample, history, noise, rescale, thresh, coefs, flags)


@_op.custom_op("gankern::diffusion_step", check=_check_step)
def _diffusion_step(model_output: Tensor, sample: Tensor, history: Optional[Tensor], noise: Optional[Tensor],
                    rescale: Optional[Tensor], thresh: Optional[Tensor], coefs: list[float], flags: int, seed: int,
                    offset: int, want_x0: bool) -> tuple[Tensor, Tensor]:
    return _contiguous(resolve_nonempty("diffusion_step", sample)(model_output, sample, history, noise, rescale, thresh,
                                                                  coefs, flags, seed, offset, want_x0), sample)


@_diffusion_step.register_fake
def _(model_output, sample, history, noise, rescale, thresh, coefs, flags, seed, offset, want_x0):
    return _empty_contiguous(sample), (_empty_contiguous(sample) if want_x0 else sample.new_empty((0,)))


def _check_guidance(model_output, g, rescale):
    _check_guided_output(model_output)


@_op.custom_op("gankern::guidance_rescale_factors", check=_check_guidance)
def _guidance_rescale_factors(model_output: Tensor, g: float, rescale: float) -> Tensor:
    return resolve_nonempty("guidance_rescale_factors", model_output)(model_output, g, rescale)


@_guidance_rescale_factors.register_fake
def _(model_output, g, rescale):
    dt = torch.float64 if model_output.dtype == torch.float64 else torch.float32
    return model_output.new_empty((model_output.shape[0] // 2,), dtype=dt)


def _check_threshold(model_output, sample, rescale, coefs, flags, rank_lo, rank_w, max_value):
    _check_step_op(model_output, sample, None, None, rescale, None, coefs, flags & (R.GUIDED | R.RESCALE | R.VAR))
    S = sample[0].numel() if sample.shape[0] else 1
    if not (0 <= rank_lo < S and 0.0 <= rank_w <= 1.0):
        raise ValueError(f"rank_lo must be in [0, {S}) and rank_w in [0, 1], got {rank_lo}, {rank_w}")


@_op.custom_op("gankern::diffusion_threshold_scales", check=_check_threshold)
def _diffusion_threshold_scales(model_output: Tensor, sample: Tensor, rescale: Optional[Tensor], coefs: list[float],
                                flags: int, rank_lo: int, rank_w: float, max_value: float) -> Tensor:
    return resolve_nonempty("diffusion_threshold_scales", sample)(model_output, sample, rescale, coefs, flags, rank_lo,
                                                                  rank_w, max_value)


@_diffusion_threshold_scales.register_fake
def _(model_output, sample, rescale, coefs, flags, rank_lo, rank_w, max_value):
    dt = torch.float64 if sample.dtype == torch.float64 else torch.float32
    return sample.new_empty((sample.shape[0],), dtype=dt)


@_op.custom_op("gankern::add_noise")
def _add_noise(x0: Tensor, noise: Tensor, ca: Tensor, cn: Tensor) -> Tensor:
    _check_lincomb(x0, noise, ca, cn)
    return _contiguous(resolve_nonempty("add_noise", x0)(x0, noise, ca, cn), x0)


@_add_noise.register_fake
def _(x0, noise, ca, cn):
    return _empty_contiguous(x0)


def _add_noise_setup(ctx, inputs, output):
    x0, noise, ca, cn = inputs
    # x0 and noise are needed only for the coefficients' gradients (a learned schedule)
    ctx.save_for_backward(ca, cn, x0 if ca.requires_grad else None, noise if cn.requires_grad else None)


def _sample_sums(g: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """sum over each sample of g * t, in the coefficient's dtype (float32 at least)."""
    dt = torch.promote_types(like.dtype, torch.float32)
    return (g.to(dt) * t.to(dt)).reshape(g.shape[0], ref._per_sample_numel(g)).sum(1).to(like.dtype)


def _add_noise_backward(ctx, g):
    ca, cn, x0, noise = ctx.saved_tensors
    need = ctx.needs_input_grad
    # linear in x0 and noise: the gradients are the same op with one input zeroed out
    gx = ref.per_sample(ca, g.ndim).to(g.dtype) * g if need[0] else None
    gn = ref.per_sample(cn, g.ndim).to(g.dtype) * g if need[1] else None
    gca = _sample_sums(g, x0, ca) if need[2] else None
    gcn = _sample_sums(g, noise, cn) if need[3] else None
    return gx, gn, gca, gcn


_add_noise.register_autograd(_add_noise_backward, setup_context=_add_noise_setup)


@_op.custom_op("gankern::diffusion_loss")
def _diffusion_loss(model_output: Tensor, x0: Tensor, noise: Tensor, tx: Tensor, tn: Tensor, weight: Tensor) -> Tensor:
    _check_loss_op(model_output, x0, noise, tx, tn, weight)
    return resolve_nonempty("diffusion_loss", model_output)(model_output, x0, noise, tx, tn, weight)


@_diffusion_loss.register_fake
def _(model_output, x0, noise, tx, tn, weight):
    dt = torch.float64 if model_output.dtype == torch.float64 else torch.float32
    return model_output.new_empty((model_output.shape[0],), dtype=dt)


@_op.custom_op("gankern::diffusion_loss_backward")
def _diffusion_loss_backward(grad: Tensor, model_output: Tensor, x0: Tensor, noise: Tensor, tx: Tensor, tn: Tensor,
                             weight: Tensor) -> Tensor:
    _check_loss_op(model_output, x0, noise, tx, tn, weight, grad)
    return _contiguous(resolve_nonempty("diffusion_loss_backward", model_output)(grad, model_output, x0, noise, tx, tn,
                                                                                 weight), model_output)


@_diffusion_loss_backward.register_fake
def _(grad, model_output, x0, noise, tx, tn, weight):
    return _empty_contiguous(model_output)


def _loss_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _loss_backward(ctx, grad):
    mo, x0, noise, tx, tn, w = ctx.saved_tensors
    need = ctx.needs_input_grad
    dmo = _diffusion_loss_backward(grad, mo, x0, noise, tx, tn, w)
    # target = tx x0 + tn noise enters with a minus sign; rarely needed, so plain torch ops
    dx0 = -ref.per_sample(tx, mo.ndim).to(dmo.dtype) * dmo if need[1] else None
    dn = -ref.per_sample(tn, mo.ndim).to(dmo.dtype) * dmo if need[2] else None
    dtx = -_sample_sums(dmo, x0, tx) if need[3] else None  # learned schedules (v-prediction target)
    dtn = -_sample_sums(dmo, noise, tn) if need[4] else None
    # d loss_b / d w_b = the unweighted per-sample loss: one more pass, only for learned weightings
    dw = (grad * ref.diffusion_loss(mo, x0, noise, tx, tn, torch.ones_like(w))).to(w.dtype) if need[5] else None
    return dmo, dx0, dn, dtx, dtn, dw


_diffusion_loss.register_autograd(_loss_backward, setup_context=_loss_setup)


# ---- backends: reference ---------------------------------------------------------------------

register("diffusion_step", "reference")(ref.diffusion_step)
register("guidance_rescale_factors", "reference")(ref.guidance_rescale_factors)
register("add_noise", "reference")(ref.add_noise)
register("diffusion_loss", "reference")(ref.diffusion_loss)
register("diffusion_loss_backward", "reference")(ref.diffusion_loss_backward)


@register("diffusion_threshold_scales", "reference")
def _threshold_scales_reference(model_output, sample, rescale, coefs, flags, rank_lo, rank_w, max_value):
    x0 = _x0_before_clamp(ref.diffusion_step, model_output, sample, rescale, coefs, flags)
    a = x0.reshape(x0.shape[0], -1).abs()
    a = a.float() if a.dtype not in (torch.float32, torch.float64) else a
    s = _lerp_sorted(a, rank_lo, rank_w)
    return s.clamp(min=1.0, max=max_value)


def _x0_before_clamp(step_fn, model_output, sample, rescale, coefs, flags):
    """x0 from the prediction type and guidance, before clip / threshold: the quantity dynamic
    thresholding takes its quantile of (the step with every update coefficient zero)."""
    keep = R.GUIDED | R.RESCALE
    c = list(coefs)
    for i in (R.C_A, R.C_B, R.C_C, R.C_D):
        c[i] = 0.0
    _, x0 = step_fn(model_output, sample, None, None, rescale, None, c, flags & keep, 0, 0, True)
    return x0


def _x0_only(step_impl):
    """x0 before clamping with the prev store compiled out (the threshold pre-pass)."""
    def run(model_output, sample, history, noise, rescale, thresh, coefs, flags, seed, offset, want_x0):
        return step_impl(model_output, sample, history, noise, rescale, thresh, coefs, flags, seed, offset, want_x0,
                         write_prev=False)
    return run


def _lerp_sorted(a: Tensor, lo: int, w: float) -> Tensor:
    """torch.quantile's value at rank lo + w per row, by two selections (torch.kthvalue) instead of
    a sort; lerp as torch.lerp rounds it."""
    n = a.shape[1]
    v_lo = torch.kthvalue(a, lo + 1, dim=1).values
    v_hi = torch.kthvalue(a, min(lo + 2, n), dim=1).values if w > 0 else v_lo
    return torch.lerp(v_lo, v_hi, torch.full_like(v_lo, w))


# ---- the graph-replay variant: coefficients and (seed, offset) read from device buffers ---------

@_op.custom_op("gankern::diffusion_step_dev")
def _diffusion_step_dev(model_output: Tensor, sample: Tensor, history: Optional[Tensor], coefs: Tensor, rng: Tensor,
                        flags: int, want_x0: bool) -> tuple[Tensor, Tensor]:
    """diffusion_step with coefs (float32 [NCOEF]) and rng (int64 [seed, offset]) in device memory,
    so a captured CUDA graph can be replayed with new values (gankern.sample(cuda_graph=True))."""
    _check_step_op(model_output, sample, history, None, None, None, [0.0] * R.NCOEF, flags & ~R.NOISE_TENSOR)
    if coefs.numel() != R.NCOEF or not coefs.dtype.is_floating_point or coefs.device != sample.device:
        raise ValueError(f"coefs must be a floating tensor of {R.NCOEF} values on {sample.device}, got "
                         f"{tuple(coefs.shape)} {coefs.dtype} on {coefs.device}")
    if rng.numel() != 2 or rng.dtype != torch.int64 or rng.device != sample.device:
        raise ValueError(f"rng must be an int64 tensor [seed, offset] on {sample.device}, got {tuple(rng.shape)} "
                         f"{rng.dtype} on {rng.device}")
    return _contiguous(resolve_nonempty("diffusion_step_dev", sample)(model_output, sample, history, coefs, rng, flags,
                                                                      want_x0), sample)


@_diffusion_step_dev.register_fake
def _(model_output, sample, history, coefs, rng, flags, want_x0):
    return _empty_contiguous(sample), (_empty_contiguous(sample) if want_x0 else sample.new_empty((0,)))


def _step_dev_via_host(step_fn):
    """Host backends read the buffers directly (CPU memory: no synchronization involved)."""
    def run(model_output, sample, history, coefs, rng, flags, want_x0):
        c = coefs.double().cpu().tolist()
        seed, offset = (int(v) for v in rng.cpu().tolist())
        return step_fn(model_output, sample, history, None, None, None, c, flags, seed, offset, want_x0)
    return run


register("diffusion_step_dev", "reference")(_step_dev_via_host(ref.diffusion_step))


# ---- backends: shared operand preparation -----------------------------------------------------

def _sample_layout(model_output: Tensor, sample: Tensor):
    """Contiguous [B, S] views and model_output's per-sample stride (K * S) for the kernels; the
    noise contract numbers elements row-major, so other layouts are copied."""
    x = sample.contiguous()
    mo = model_output.contiguous()
    B = x.shape[0]
    S = x.numel() // B if B else 0
    G = mo.shape[0] // B if B else 1
    mo_stride = mo.numel() // (G * B) if B else 0
    return mo, x, B, S, mo_stride


def _opt(t: Tensor | None, dtype=None) -> Tensor | None:
    if t is None:
        return None
    return t.contiguous() if dtype is None else t.to(dtype).contiguous()


def _step_operands(model_output, sample, history, noise, rescale, thresh, want_x0, write_prev):
    """What every step launcher takes: dense operands in the kernel's dtypes and the outputs,
    allocated (prev may be skipped; x0 is an empty placeholder unless wanted)."""
    mo, x, B, S, mo_stride = _sample_layout(model_output, sample)
    history, noise = _opt(history, x.dtype), _opt(noise, x.dtype)
    rescale, thresh = _opt(rescale, torch.float32), _opt(thresh, torch.float32)
    prev = T.empty_like(x) if write_prev else None
    x0 = T.empty_like(x) if want_x0 else x.new_empty((0,))
    return mo, x, B, S, mo_stride, history, noise, rescale, thresh, prev, x0


def _rescale_from_sums(sums: Tensor, S: int, rescale: float) -> Tensor:
    """k_b from per-sample (sum c, sum c^2, sum m, sum m^2) in float64: unbiased stds as torch.std."""
    if sums.device.type == "cpu":  # a dozen torch ops on [B] tensors cost ~4x these Python floats
        try:
            return torch.tensor([_rescale_one(*row, S, rescale) for row in sums.tolist()], dtype=torch.float32)
        except (ZeroDivisionError, ValueError):  # a zero or negative variance: torch's inf/NaN below
            pass
    sc, sc2, sm, sm2 = sums.unbind(1)
    var_c = (sc2 - sc * sc / S) / (S - 1)
    var_m = (sm2 - sm * sm / S) / (S - 1)
    return ((1 - rescale) + rescale * (var_c / var_m).sqrt()).float()


def _rescale_one(sc, sc2, sm, sm2, S, rescale):
    """One sample of _rescale_from_sums, the same IEEE double operations in the same order (so the
    same bits; Python raises where torch would give inf/NaN)."""
    var_c = (sc2 - sc * sc / S) / (S - 1)
    var_m = (sm2 - sm * sm / S) / (S - 1)
    return (1 - rescale) + rescale * math.sqrt(var_c / var_m)


def _per_sample_f32(*ts):
    return [t.to(torch.float32).contiguous() for t in ts]


def _loss_operands(model_output, x0, noise, tx, tn):
    """What every diffusion_loss kernel takes: contiguous operands, fp32 per-sample target
    coefficients, the batch B and the per-sample size S."""
    mo = model_output.contiguous()
    B = mo.shape[0]
    return (mo, x0.contiguous(), noise.contiguous(), *_per_sample_f32(tx, tn), B, mo.numel() // max(B, 1))


def _loss_grad_scale(grad, weight, S):
    """d loss_b / d model_output = k_b (model_output - target), k_b = 2 grad_b weight_b / S."""
    return ((2.0 / S) * grad.double() * weight.double()).float().contiguous()


# The CPU kernels load and store fp32, bf16 or fp16 (csrc/common/cpu_convert.h), math in fp32.
def _dtypes(backend: str) -> dict:
    return dict(cpu_dtypes=FP32_HALF) if backend == "cpu" else {}


def _register_step_kernels(backend: str, impl) -> None:
    """diffusion_step, its graph-replay form (coefficients and RNG state read from device buffers)
    and the dynamic-thresholding scales, all on one step launcher."""
    # impl takes the op's arguments first (then its own keyword-only extras): registered as is, one
    # Python call less per step
    step = register("diffusion_step", backend, **_dtypes(backend))(impl)

    if backend == "cpu":  # host memory: read the buffers, then the plain step
        register("diffusion_step_dev", backend, **_dtypes(backend))(_step_dev_via_host(step))
    else:
        @register("diffusion_step_dev", backend)
        def step_dev(model_output, sample, history, coefs, rng, flags, want_x0):
            return impl(model_output, sample, history, None, None, None, [0.0] * R.NCOEF, flags, 0, 0, want_x0,
                        coef_dev=coefs.float().contiguous(), rng_dev=rng.contiguous())

    if backend != "cpu":  # the CPU selects in C++ (_threshold_scales_cpu below)
        @register("diffusion_threshold_scales", backend)
        def threshold_scales(model_output, sample, rescale, coefs, flags, rank_lo, rank_w, max_value):
            # x0 by the step kernel with prev compiled out, then two radix selections (torch.kthvalue)
            x0 = _x0_before_clamp(_x0_only(impl), model_output, sample, rescale, coefs, flags)
            a = x0.reshape(x0.shape[0], -1).abs().float()
            return _lerp_sorted(a, rank_lo, rank_w).clamp(min=1.0, max=max_value)


# ---- backends: cpu and cuda (csrc/diffusion/diffusion.h), one launcher per pass ------------------

# Per-sample partial sums: the CPU sums a whole sample in float64 (one chunk), CUDA writes float32
# sums of DIFFUSION_REDUCTION_CHUNK elements; the caller adds the chunks in order.
_RED_CHUNK = _tables.scalar("DIFFUSION_REDUCTION_CHUNK")


def _partials(backend, B, S, width, device):
    if backend == "cpu":
        return T.empty((B, 1) + width, dtype=torch.float64, device=device)
    return T.empty((B, max(-(-S // _RED_CHUNK), 1)) + width, dtype=torch.float32, device=device)


def _register_native(backend: str) -> None:
    def step_impl(model_output, sample, history, noise, rescale, thresh, coefs, flags, seed, offset, want_x0, *,
                  coef_dev=None, rng_dev=None, write_prev=True):
        mo, x, B, S, mo_stride, history, noise, rescale, thresh, prev, x0 = _step_operands(
            model_output, sample, history, noise, rescale, thresh, want_x0, write_prev)
        _native.entry(backend, "diffusion.step")(
            x, model_output=mo, sample=x, history=history, noise=noise, rescale=rescale, thresh=thresh, prev=prev,
            x0=x0 if want_x0 else None, coef_dev=coef_dev, rng_dev=rng_dev, batch=B, per_sample=S,
            mo_stride=mo_stride, flags=flags, seed=seed, offset=offset, coefs=coefs)
        return (prev if prev is not None else x.new_empty((0,))), x0

    _register_step_kernels(backend, step_impl)

    @register("guidance_rescale_factors", backend, **_dtypes(backend))
    def rescale_factors(model_output, g, rescale):
        mo = model_output.contiguous()
        B = mo.shape[0] // 2
        S = mo.numel() // max(2 * B, 1)
        part = _partials(backend, B, S, (4,), mo.device)
        _native.entry(backend, "diffusion.rescale_partials")(mo, model_output=mo, batch=B, per_sample=S, guidance=g,
                                                            partials=part)
        return _rescale_from_sums(part.double().sum(1), S, rescale)

    @register("add_noise", backend, **_dtypes(backend))
    def add_noise(x0, noise, ca, cn):
        x, y = x0.contiguous(), noise.contiguous()
        ca, cn = _per_sample_f32(ca, cn)
        out = T.empty_like(x)
        B = x.shape[0]
        _native.entry(backend, "diffusion.lincomb")(x, x=x, y=y, ca=ca, cb=cn, out=out, batch=B,
                                                   per_sample=x.numel() // max(B, 1))
        return out

    @register("diffusion_loss", backend, **_dtypes(backend))
    def loss(model_output, x0, noise, tx, tn, weight):
        mo, x0, noise, tx, tn, B, S = _loss_operands(model_output, x0, noise, tx, tn)
        part = _partials(backend, B, S, (), mo.device)
        _native.entry(backend, "diffusion.loss_partials")(mo, model_output=mo, x0=x0, noise=noise, tx=tx, tn=tn,
                                                         k=None, partials=part, dmo=None, batch=B, per_sample=S)
        return (weight.double() * part.double().sum(1) / S).float()

    @register("diffusion_loss_backward", backend, **_dtypes(backend))
    def loss_backward(grad, model_output, x0, noise, tx, tn, weight):
        mo, x0, noise, tx, tn, B, S = _loss_operands(model_output, x0, noise, tx, tn)
        k = _loss_grad_scale(grad, weight, S)
        dmo = T.empty_like(mo)
        _native.entry(backend, "diffusion.loss_backward")(mo, model_output=mo, x0=x0, noise=noise, tx=tx, tn=tn,
                                                         k=k, partials=None, dmo=dmo, batch=B, per_sample=S)
        return dmo

    if backend == "cpu":
        @register("diffusion_threshold_scales", "cpu", cpu_dtypes=FP32_HALF)
        def threshold_scales_cpu(model_output, sample, rescale, coefs, flags, rank_lo, rank_w, max_value):
            x0 = _x0_before_clamp(_x0_only(step_impl), model_output, sample, rescale, coefs, flags)
            B = x0.shape[0]
            s = T.empty((B,), dtype=torch.float32, device=x0.device)
            _native.entry("cpu", "diffusion.threshold")(x0, x0=x0, batch=B, per_sample=x0.numel() // max(B, 1),
                                                       rank_lo=rank_lo, rank_w=rank_w, max_value=max_value, scales=s)
            return s


_register_native("cpu")
_register_native("cuda")


# ---- backends: triton ------------------------------------------------------------------------

def _step_triton_impl(model_output, sample, history, noise, rescale, thresh, coefs, flags, seed, offset, want_x0, *,
                      coef_dev=None, rng_dev=None, write_prev=True):
    from ..triton import diffusion as tk
    mo, x, B, S, mo_stride, history, noise, rescale, thresh, prev, x0 = _step_operands(
        model_output, sample, history, noise, rescale, thresh, want_x0, write_prev)
    tk.step(mo, x, history, noise, rescale, thresh, prev, x0 if want_x0 else None, B, S, mo_stride, flags,
            seed, offset, coefs, coef_dev, rng_dev)
    return (prev if prev is not None else x.new_empty((0,))), x0


_register_step_kernels("triton", _step_triton_impl)


@register("guidance_rescale_factors", "triton")
def _guidance_rescale_factors_triton(model_output, g, rescale):
    from ..triton import diffusion as tk
    mo = model_output.contiguous()
    B = mo.shape[0] // 2
    S = mo.numel() // max(2 * B, 1)
    part = T.empty((B, -(-S // tk.BLOCK), 4), dtype=torch.float32, device=mo.device)
    tk.rescale_partials(mo, B, S, S, g, part)
    return _rescale_from_sums(part.double().sum(1), S, rescale)


@register("add_noise", "triton")
def _add_noise_triton(x0, noise, ca, cn):
    from ..triton import diffusion as tk
    x, y = x0.contiguous(), noise.contiguous()
    ca, cn = _per_sample_f32(ca, cn)
    B = x.shape[0]
    return tk.lincomb(x, y, ca, cn, T.empty_like(x), B, x.numel() // max(B, 1))


@register("diffusion_loss", "triton")
def _diffusion_loss_triton(model_output, x0, noise, tx, tn, weight):
    from ..triton import diffusion as tk
    mo, x0, noise, tx, tn, B, S = _loss_operands(model_output, x0, noise, tx, tn)
    part = T.empty((B, max(-(-S // tk.BLOCK), 1)), dtype=torch.float32, device=mo.device)
    tk.loss_partials(mo, x0, noise, tx, tn, part, B, S)
    return (weight.double() * part.double().sum(1) / S).float()


@register("diffusion_loss_backward", "triton")
def _diffusion_loss_backward_triton(grad, model_output, x0, noise, tx, tn, weight):
    from ..triton import diffusion as tk
    mo, x0, noise, tx, tn, B, S = _loss_operands(model_output, x0, noise, tx, tn)
    k = _loss_grad_scale(grad, weight, S)
    return tk.lincomb(x0, noise, tx, tn, T.empty_like(mo), B, S, m=mo, k=k)


