"""`gankern bench --models` cases for StyleGAN2's training (the `gankern train stylegan2` task at its
default config, 32x32 single-channel digits): fused vs eager (the same model, fused=False: the
plain-torch StyleGAN2 formulation) vs torch.compile of the eager model.

The lazy regularizers run on some minibatches only, so they are timed as their own cases: the cost
of an average minibatch with lazy R1 (every 16) is `train step + R1 step / 16`, plus `path-length
step / 4` where path length is on. Every variant runs the task's own phase methods
(gankern/train/tasks.py: StyleGAN2Task.g_main / g_reg / d_main / d_reg), so the bench times what
training runs. The compile variant compiles the networks' forwards (dynamo cannot put
torch.autograd.grad in a graph on its own, pytorch #91469); for R1 it uses
gankern.regularizers.compiled_r1_penalty, which traces the gradient into one graph.

StyleGAN3-T (`gankern train stylegan3` at its default config: 6 alias-free layers + ToRGB, 32
channels, margin 10, StyleGAN2's discriminator) has the same phases through StyleGAN3Task (no path
length; its R1 step is StyleGAN2's, the discriminator being the same, so it is not a case of its
own); eager is its fused=False model (plain-torch modulation and filtered leaky ReLU: zero
insertion, padding and depthwise 1-D convolutions).
"""
from __future__ import annotations

import torch

from .models import ModelCase


def _task(device, variant: str, batch: int, model: str = "stylegan2"):
    from ..train.tasks import TASKS, _Method
    task_cls = TASKS[model]
    config = dict(task_cls.defaults, image_size=32, channels=1, num_classes=10)
    torch.manual_seed(0)
    task = task_cls(config, variant == "fused", torch.device(device))
    opts = task.optimizers(2e-3)
    task.prepare()
    if variant == "compile":
        task.G = torch.compile(_Method(task.model.generator, "train_forward"))
        task.D = torch.compile(task.model.discriminator)
    x = torch.rand(batch, 1, 32, 32, device=device) * 2 - 1
    return task, opts, x


def _train_step(device, batch, model="stylegan2"):
    def build(variant):
        task, opts, x = _task(device, variant, batch, model)

        def step():
            fake, _ = task.g_main(batch, opts)
            return torch.tensor(task.d_main(x, fake, opts))
        return step
    return build


def _r1_step(device, batch):
    def build(variant):
        task, opts, x = _task(device, variant, batch)
        if variant == "compile":
            from ..regularizers import compiled_r1_penalty
            fn = compiled_r1_penalty(task.model.discriminator)
            task.r1 = lambda D, real, gamma: fn(real, gamma=gamma)
        return lambda: torch.tensor(task.d_reg(x, opts))
    return build


def _pl_step(device, batch):
    def build(variant):
        task, opts, x = _task(device, variant, batch)
        if variant == "compile":
            from ..regularizers import compiled_path_length_penalty
            synthesis = task.model.generator.synthesis
            fn = compiled_path_length_penalty(lambda w: synthesis(w, "random"))
            task.path_length = lambda syn, ws, pl_mean, decay, weight: fn(ws, pl_mean, decay, None, weight)
        return lambda: torch.tensor(task.g_reg(batch, opts))
    return build


def stylegan_models(device, scale: str) -> list[ModelCase]:
    b = {"tiny": 4, "quick": 16, "full": 32}[scale]
    shape = (b, 1, 32, 32)
    return [
        ModelCase("stylegan2", "train step (G main + D main)", shape, _train_step(device, b),
                  notes="`gankern train stylegan2` defaults; style mixing 0.9"),
        ModelCase("stylegan2", "R1 step (lazy: every 16)", shape, _r1_step(device, b),
                  notes="double backward through D; per minibatch: train step + this / 16"),
        ModelCase("stylegan2", "path-length step (lazy: every 4)", shape, _pl_step(device, b), quick=False,
                  notes="double backward through the synthesis network, batch / 2"),
        # outside the quick set: its eager variant (plain-torch filtered leaky ReLU on 36-52 px maps
        # upsampled 2-4x) takes many seconds per step at batch 16 on 2 cores
        ModelCase("stylegan3", "train step (G main + D main)", shape, _train_step(device, b, "stylegan3"),
                  quick=False, notes="`gankern train stylegan3` defaults; 6 layers + ToRGB, margin 10"),
    ]
