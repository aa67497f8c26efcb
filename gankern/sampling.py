"""gankern.sample: the denoising loop (model call, classifier-free guidance and the fused scheduler
step) with a tqdm progress bar, and on CUDA an optional CUDA-graph replay of a whole step.

Why a graph: at small latent sizes a step is dominated by launch overhead (the model's kernels plus
the step), and a replayed graph launches all of them at once. What changes between steps (the
timestep, the input scaling, the step coefficients and the noise offset) lives in small device
buffers the graph reads, refreshed by device-to-device copies from tables built once on the host:
no host -> device synchronization inside the loop.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .ops import diffusion as D
from .reference import diffusion as R


def _device_of(model, device):
    if device is not None:
        return torch.device(device)
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def _initial_noise(shape, seed: int, dtype, device) -> Tensor:
    from .ops.random import randn
    return randn(shape, seed=seed, offset=0, dtype=dtype, device=device)


@torch.no_grad()
def sample(model: Callable[[Tensor, Tensor], Tensor], scheduler, shape, num_inference_steps: int = 50,
           guidance_scale: float | None = None, seed: int | None = None, progress: bool = True,
           cuda_graph: bool = False, *, guidance_rescale: float = 0.0, device=None, dtype=torch.float32,
           latents: Tensor | None = None) -> Tensor:
    """Runs the sampling loop and returns the final latents.

    model(x, t) -> prediction for latents x at timestep t (a 0-d tensor on the device). With
    guidance_scale, x is the latents batch repeated twice and the model must return the
    unconditional predictions first, then the conditional ones (e.g. by concatenating
    [uncond_emb, cond_emb] as diffusers' pipelines do); the step combines them.
    scheduler: a gankern.schedulers scheduler (set_timesteps is called here).
    seed: Philox seed of the initial latents and of every stochastic step (None: drawn from torch's
    global generator; else an int in [-2^63, 2^64), as every seeded op), so one seed gives one
    trajectory on every backend.
    cuda_graph: capture model + guidance + step in one CUDA graph replayed every step (CUDA only;
    the model must be capturable: static shapes, no host synchronization).
    latents: initial noise of `shape` instead of gankern.randn(shape, seed) (scaled by the
    scheduler's init_noise_sigma, as diffusers' pipelines do).
    """
    from .schedulers import Scheduler
    if not isinstance(scheduler, Scheduler):
        raise TypeError(f"scheduler must be a gankern.schedulers scheduler, got {type(scheduler).__name__}")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
    shape = tuple(int(s) for s in shape)
    device = _device_of(model, device)
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs the model on a CUDA device, got {device}")
    if seed is None:
        seed = D.draw_seed(None)
    scheduler.set_timesteps(num_inference_steps, device=device)
    scheduler.manual_seed(seed)
    if latents is None:
        x = _initial_noise(shape, seed, dtype, device) * float(scheduler.init_noise_sigma)
        scheduler._offset = D.noise_counters(math.prod(shape))  # step noise follows the initial noise
    else:
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        # as diffusers' pipelines: given latents are scaled by init_noise_sigma too
        x = latents.to(device=device, dtype=dtype) * float(scheduler.init_noise_sigma)
    guided = guidance_scale is not None
    timesteps = scheduler.timesteps
    bar = _progress(len(timesteps), progress)
    try:
        if cuda_graph:
            return _sample_graph(model, scheduler, x, guidance_scale, guidance_rescale, bar)
        for t in timesteps:
            x_in = torch.cat([x, x]) if guided else x
            x_in = scheduler.scale_model_input(x_in, t)
            out = model(x_in, t)
            x = scheduler.step(out, t, x, guidance_scale=guidance_scale, guidance_rescale=guidance_rescale).prev_sample
            bar.update(1)
        return x
    finally:
        bar.close()


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm
    return tqdm(total=total, desc="gankern.sample", unit="step")


# ---- the CUDA-graph path ---------------------------------------------------------------------

def step_tables(scheduler, numel: int):
    """Per-step tables for a graph-replayed loop: (coefficients [n, NCOEF] float64, Philox offsets
    [n], input scales [n], flags valid for every step, whether the steps use a history tensor).
    Steps that lack a feature get zero coefficients for it, so one kernel variant serves them all."""
    from .schedulers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                             EulerAncestralDiscreteScheduler, EulerDiscreteScheduler)
    n = len(scheduler._ts_host)
    plans = []
    if isinstance(scheduler, DPMSolverMultistepScheduler):
        saved = scheduler.lower_order_nums
        for i in range(n):
            scheduler.lower_order_nums = min(i, scheduler.config.solver_order)
            plans.append(scheduler._plan(i))
        scheduler.lower_order_nums = saved
    elif isinstance(scheduler, (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler)):
        plans = [scheduler._plan(i) for i in range(n)]
    elif isinstance(scheduler, (DDIMScheduler, DDPMScheduler)):
        plans = [scheduler._plan(t) for t in scheduler._ts_host]
    else:
        raise ValueError(f"no graph plan for {type(scheduler).__name__}")
    flags = 0
    for p in plans:
        if p.threshold is not None:
            raise ValueError("cuda_graph=True does not support dynamic thresholding (its selection pass depends on "
                             "the data); use cuda_graph=False")
        flags |= p.flags
    if any(p.stochastic for p in plans):
        flags |= R.NOISE_PHILOX
    coefs = torch.tensor([p.coefs for p in plans], dtype=torch.float64)
    for i, p in enumerate(plans):
        if not p.stochastic:
            # the graph's kernel draws noise on every step: give it zero weight here (a
            # learned_range std is exp(e0 + e1 v), zero only for e0 = -inf)
            coefs[i, R.C_S] = 0.0
            if flags & R.VAR_LEARNED_RANGE:
                coefs[i, R.C_E0] = -math.inf
                coefs[i, R.C_E1] = 0.0
    offsets, off = [], scheduler._offset
    for p in plans:
        offsets.append(off)
        if p.stochastic:
            off += D.noise_counters(numel)
    scales = []
    for i in range(n):
        if hasattr(scheduler, "_sig") and isinstance(scheduler, (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler)):
            s = scheduler._sig[i]
            scales.append(1.0 / math.sqrt(s * s + 1.0))
        else:
            scales.append(1.0)
    return coefs, torch.tensor(offsets, dtype=torch.int64), torch.tensor(scales, dtype=torch.float64), flags


def _sample_graph(model, scheduler, x: Tensor, guidance_scale, guidance_rescale, bar):
    guided = guidance_scale is not None
    if guidance_rescale:
        raise ValueError("cuda_graph=True does not support guidance_rescale yet; use cuda_graph=False")
    dev = x.device
    coefs, offsets, scales, flags = step_tables(scheduler, x.numel())
    if guided:
        coefs[:, R.C_G] = float(guidance_scale)
        flags |= R.GUIDED
    else:
        coefs[:, R.C_G] = 1.0
    flags &= ~R.HAS_VAR_CHANNELS
    n = coefs.shape[0]
    # every per-step input of the graph, one row per step, uploaded once
    coef_tab = coefs.to(device=dev, dtype=torch.float32)
    rng_tab = torch.stack([torch.full((n,), scheduler._seed, dtype=torch.int64), offsets], 1).to(dev)
    scale_tab = scales.to(device=dev, dtype=x.dtype)
    t_tab = scheduler.timesteps.to(dev)
    s_coef, s_rng = coef_tab[0].clone(), rng_tab[0].clone()
    s_scale, s_t = scale_tab[0].clone(), t_tab[0].clone()
    s_x = x.clone()
    s_hist = torch.zeros_like(x)
    want_x0 = bool(flags & R.HIST)

    def body():
        x_in = torch.cat([s_x, s_x]) if guided else s_x
        out = model(x_in * s_scale, s_t)
        prev, x0 = D._diffusion_step_dev(out, s_x, s_hist if want_x0 else None, s_coef, s_rng, flags, want_x0)
        s_x.copy_(prev)
        if want_x0:
            s_hist.copy_(x0)

    def load(i):
        s_coef.copy_(coef_tab[i])
        s_rng.copy_(rng_tab[i])
        s_scale.copy_(scale_tab[i])
        s_t.copy_(t_tab[i])

    # warm up on a side stream (allocator and autotuning), then restore the inputs and capture
    x_start = s_x.clone()
    stream = torch.cuda.Stream(dev)
    stream.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(stream):
        load(0)
        body()
    torch.cuda.current_stream(dev).wait_stream(stream)
    s_x.copy_(x_start)
    s_hist.zero_()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    for i in range(n):
        load(i)
        graph.replay()
        bar.update(1)
    scheduler._step_index = n
    return s_x.clone()
