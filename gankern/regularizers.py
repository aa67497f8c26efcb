"""GAN regularizers whose double backward works in eager mode and under torch.compile.

  r1_penalty:          ||d D(x, c) / d x||^2 at real images (Mescheder et al. 2018; StyleGAN2's R1)
  path_length_penalty: (||J_w^T y|| - a)^2 with a running mean a (StyleGAN2's path-length regularizer)

Both take a gradient with create_graph=True inside the forward pass, and the loss built from it is
differentiated again by the training step (the double backward): every gankern op on the way
(bias_act, upfirdn2d, conv2d_resample's pieces, minibatch_std) has a differentiable backward.

Under torch.compile, stock dynamo graph-breaks on torch.autograd.grad, so fullgraph=True errors
out (pytorch #91469 is the same limitation for compiled double backward). What works in torch 2.13,
and what `compiled_r1_penalty` / `compiled_path_length_penalty` below do:
  1. make the input a leaf that requires grad OUTSIDE the compiled region (dynamo refuses to return
     anything derived from a tensor that got requires_grad_() inside it);
  2. compile the penalty with fullgraph=True while `torch._dynamo.config.patch(trace_autograd_ops=True)`
     is active: dynamo then traces torch.autograd.grad into the graph, AOTAutograd derives the
     forward + inner backward as one graph and the outer backward (the parameters' gradients of
     the penalty) as another.
tests/test_regularizers.py checks both against eager. The functions are pure: pl_mean is returned,
not updated in place, so the caller copies it into its buffer (a mutation inside the compiled
region would be a side effect for dynamo to replay).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor


def _as_input(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x


def r1_penalty(D: Callable, real: Tensor, c: Tensor | None = None, gamma: float | None = None,
               return_logits: bool = False):
    """Per-sample R1 penalty ||grad_x sum(D(x, c))||^2 at x = real, shape [N].

    Args:
        D: the discriminator, called as D(x) or D(x, c).
        real: real images [N, ...]; detached here, then made a leaf that requires grad (R1 is a
            gradient penalty on the data, never a gradient into it).
        c: conditioning labels passed to D, or None.
        gamma: if given, the penalty is scaled by gamma / 2 (StyleGAN2's loss_Dr1).
        return_logits: also return D's logits at the reals (StyleGAN2's 'Dboth' phase computes the
            real-logit loss from the same forward pass).
    The result is differentiable with respect to D's parameters (create_graph=True).
    """
    real = _as_input(real, "real").detach().requires_grad_(True)
    return _r1(D, real, c, gamma, return_logits)


def _r1(D, real, c, gamma, return_logits):
    """r1_penalty at a leaf `real` that requires grad (made outside a compiled region: dynamo
    refuses to return results of a tensor that got requires_grad_() inside it)."""
    logits = D(real) if c is None else D(real, c)
    (grad,) = torch.autograd.grad(outputs=[logits.sum()], inputs=[real], create_graph=True)
    penalty = grad.square().sum(dim=list(range(1, grad.ndim)))
    if gamma is not None:
        penalty = penalty * (float(gamma) / 2)
    return (penalty, logits) if return_logits else penalty


def path_length_penalty(G_synthesis_fn: Callable, ws: Tensor, pl_mean: Tensor, decay: float = 0.01,
                        noise: Tensor | None = None, weight: float | None = None, all_processes: bool = False):
    """StyleGAN2's path-length penalty: (||J_w^T y|| - pl_mean)^2 per sample, and the new pl_mean.

    Args:
        G_synthesis_fn: ws -> images [N, C, H, W] (the synthesis network).
        ws: [N, num_ws, w_dim] (or [N, w_dim]); if it does not require grad, a detached leaf that
            does is used (the penalty then reaches only the synthesis parameters).
        pl_mean: the running mean of the path lengths (a 0-d tensor, e.g. a registered buffer).
        decay: pl_mean moves by this fraction towards the batch mean (lerp).
        noise: y, the random image-space direction; default randn_like(images) / sqrt(H * W).
        weight: if given, the penalty is scaled by it (StyleGAN2's pl_weight).
        all_processes: under torch.distributed, pl_mean moves towards the mean path length of every
            process's samples (an all_reduce of the batch means, equal shares assumed; every process
            must call it), so all processes keep the same pl_mean and the penalty is the one a
            single process computes on the whole batch. Without it each process tracks its own.
    Returns (penalty [N], new_pl_mean detached). Store the new mean: pl_mean.copy_(new_pl_mean).
    Path length per sample: sqrt(mean over ws of the squared gradient norm over w_dim).
    """
    return _path_length(G_synthesis_fn, _ws_with_grad(ws), pl_mean, decay, noise, weight, all_processes)


def _ws_with_grad(ws: Tensor) -> Tensor:
    ws = _as_input(ws, "ws")
    return ws if ws.requires_grad else ws.detach().requires_grad_(True)


def _path_length(G_synthesis_fn, ws, pl_mean, decay, noise, weight, all_processes=False):
    img = G_synthesis_fn(ws)
    if noise is None:
        noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grad,) = torch.autograd.grad(outputs=[(img * noise).sum()], inputs=[ws], create_graph=True)
    lengths = grad.square().sum(dim=-1)
    if lengths.ndim > 1:
        lengths = lengths.mean(dim=1)
    lengths = lengths.sqrt()
    batch_mean = lengths.mean()
    if all_processes and torch.distributed.is_available() and torch.distributed.is_initialized():
        batch_mean = batch_mean.detach().clone()   # only the (detached) running mean needs it
        torch.distributed.all_reduce(batch_mean)
        batch_mean /= torch.distributed.get_world_size()
    new_mean = pl_mean.lerp(batch_mean.to(pl_mean.dtype), decay)
    penalty = (lengths - new_mean.detach()).square()
    if weight is not None:
        penalty = penalty * float(weight)
    return penalty, new_mean.detach()


def compiled_r1_penalty(D: Callable, **compile_kwargs) -> Callable:
    """torch.compile(fullgraph=True) of `real -> r1_penalty(D, real)` with dynamo tracing
    torch.autograd.grad (the only route in torch 2.13 that keeps the gradient penalty in one
    graph; see the module docstring). compile_kwargs go to torch.compile (e.g. backend=)."""
    fn = torch.compile(lambda real, c, gamma: _r1(D, real, c, gamma, False), fullgraph=True, **compile_kwargs)

    def run(real: Tensor, c: Tensor | None = None, gamma: float | None = None) -> Tensor:
        real = _as_input(real, "real").detach().requires_grad_(True)
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            return fn(real, c, gamma)

    return run


def compiled_path_length_penalty(G_synthesis_fn: Callable, **compile_kwargs) -> Callable:
    """As compiled_r1_penalty, for path_length_penalty(G_synthesis_fn, ws, pl_mean, ...)."""
    fn = torch.compile(lambda ws, pl_mean, decay, noise, weight: _path_length(G_synthesis_fn, ws, pl_mean, decay,
                                                                              noise, weight),
                       fullgraph=True, **compile_kwargs)

    def run(ws: Tensor, pl_mean: Tensor, decay: float = 0.01, noise: Tensor | None = None,
            weight: float | None = None):
        ws = _ws_with_grad(ws)
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            return fn(ws, pl_mean, decay, noise, weight)

    return run
