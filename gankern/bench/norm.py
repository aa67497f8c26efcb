"""Benchmark cases of the norm family: group_norm_act and batch_norm_act at model shapes.

Baselines: `eager` is what users run: torch's native `F.group_norm` + `F.silu` and
`F.batch_norm` + `F.relu` (about three passes over memory: statistics, normalize, activation);
torch.compile gets the same calls. gankern's reference specification (explicit mean, var, rsqrt) is
the extra "spec" column only. CPU: float32, and bfloat16 at the target shape. Shapes: SD VAE decoder (batch 1,
G=32), DDPM/SD UNet (batch 2, G=32), DCGAN BatchNorm, one tensor far beyond the last-level cache.
"""
from __future__ import annotations

import math

import torch

from ..ops.norm import batch_norm_act, group_norm_act
from ..reference import norm as ref
from .case import Case

VAE = [(1, 512, 64, 64), (1, 512, 128, 128), (1, 256, 256, 256), (1, 128, 512, 512)]
UNET = [(2, 320, 64, 64), (2, 640, 32, 32), (2, 1280, 16, 16), (2, 1280, 8, 8)]
DCGAN = [(64, 256, 16, 16)]
HUGE = [(8, 512, 128, 128)]  # 268 MB in fp32
TARGET = (4, 256, 64, 64)    # the CPU target shape of the issue


def _gn_setup(shape, device, dtype, channels_last, grad):
    def setup():
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(shape, generator=g).to(device, dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        # a half model on the GPU holds half weights (torch's CUDA group_norm takes no others)
        wdtype = dtype if torch.device(device).type == "cuda" else torch.float32
        w = torch.randn(shape[1], generator=g).to(device, wdtype)
        b = torch.randn(shape[1], generator=g).to(device, wdtype)
        dy = torch.randn(shape, generator=g).to(device, dtype) if grad else None
        if grad:
            for t in (x, w, b):
                t.requires_grad_()
        return x, w, b, dy
    return setup


def _gn_ref(x, w, b):
    return ref.group_norm_act(x, 32, w, b, 1e-5, "silu", 0.0, None, None, None, None)[0]


def _gn_native(x, w, b):
    return torch.nn.functional.silu(torch.nn.functional.group_norm(x, 32, w, b, 1e-5))


def _gn_ours(x, w, b):
    return group_norm_act(x, 32, w, b, act="silu")


def _fwd(fn):
    return lambda a: fn(*a[:3])


def _fwd_bwd(fn):
    def run(a):
        x, w, b, dy = a
        return torch.autograd.grad(fn(x, w, b), (x, w, b), dy)
    return run


def _bn_setup(shape, device, dtype):
    def setup():
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(shape, generator=g).to(device, dtype)
        C = shape[1]
        return x, torch.randn(C, generator=g).to(device), torch.randn(C, generator=g).to(device), \
            torch.zeros(C, device=device), torch.ones(C, device=device)
    return setup


def _bn_ref(a):
    x, w, b, rm, rv = a
    return ref.batch_norm_act(x, w, b, rm, rv, True, 1e-5, "relu", 0.0, None)[0]


def _bn_native(a):
    x, w, b, rm, rv = a
    return torch.nn.functional.relu(torch.nn.functional.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5))


def _bn_ours(a):
    x, w, b, rm, rv = a
    return batch_norm_act(x, rm, rv, w, b, training=True, act="relu")


def cases(device) -> list[Case]:
    device = torch.device(device)
    gpu = device.type == "cuda"
    # CPU bf16: the GroupNorm cases at the target shape only (#10's bf16 target: >= 1.6x gankern's
    # own fp32 time and >= 2x native eager torch in bf16)
    dtypes = [torch.float32, torch.float16] if gpu else [torch.float32, torch.bfloat16]
    out: list[Case] = []
    for dtype in dtypes:
        es = torch.finfo(dtype).bits // 8
        gn_shapes = [(TARGET, "target")] + [(s, "vae") for s in VAE] + [(s, "unet") for s in UNET] + \
            [(s, "beyond LLC") for s in HUGE]
        if not gpu and dtype != torch.float32:
            gn_shapes = [(TARGET, "target")]
        for shape, tag in gn_shapes:
            n = math.prod(shape)
            for cl in (False, True):
                quick = shape == TARGET  # the default `gankern bench` run
                lay = "channels_last" if cl else "NCHW"
                out.append(Case("norm", f"group_norm silu fwd {lay}", shape, dtype,
                                _gn_setup(shape, device, dtype, cl, False), _fwd(_gn_ours), _fwd(_gn_native),
                                bytes=2 * n * es, quick=quick, spec=_fwd(_gn_ref), tags={"model": tag, "layout": lay},
                                kernel="group_norm_act"))
                if tag in ("target", "vae", "beyond LLC") or shape == UNET[0]:
                    out.append(Case("norm", f"group_norm silu fwd+bwd {lay}", shape, dtype,
                                    _gn_setup(shape, device, dtype, cl, True), _fwd_bwd(_gn_ours),
                                    _fwd_bwd(_gn_native), bytes=5 * n * es, spec=_fwd_bwd(_gn_ref),
                                    tags={"model": tag, "layout": lay}, kernel="group_norm_act"))
        for shape in DCGAN if gpu or dtype == torch.float32 else []:
            n = math.prod(shape)
            out.append(Case("norm", "batch_norm relu fwd (train)", shape, dtype, _bn_setup(shape, device, dtype),
                            _bn_ours, _bn_native, bytes=2 * n * es, spec=_bn_ref, tags={"model": "dcgan"},
                            kernel="batch_norm_act"))
    return out
