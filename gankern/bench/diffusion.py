"""Diffusion benchmark cases: one scheduler step with classifier-free guidance at Stable Diffusion
latent sizes and a CIFAR-sized pixel batch, against diffusers' step + eager guidance (the usual
pipeline code; the reference generic step when diffusers is absent) and torch.compile of the
reference step; and a 50-step sampling loop with a small UNet-like model.

`python -m gankern.bench.diffusion` measures the CPU targets of docs/diffusion.md (medians of many
interleaved runs in one process, so machine load hits every contender alike).
"""
from __future__ import annotations

import math
import statistics
import time

import torch

from .. import schedulers as GS
from ..reference import diffusion as R
from .case import Case

GUIDANCE = 7.5
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
STEP = 10  # which of 50 steps is timed (mid-trajectory)


def _diffusers():
    try:
        import diffusers
        return diffusers
    except ImportError:
        return None


def _sched_pair(name: str, device):
    """(gankern scheduler, diffusers scheduler or None), both set to 50 steps on `device` (as a
    pipeline does: diffusers compares its timesteps with the step's, so they must share a device)."""
    cfg = dict(SD)
    if name != "DDIMScheduler" and name != "DDPMScheduler":
        cfg.pop("clip_sample")
    g = getattr(GS, name)(**cfg)
    g.set_timesteps(50, device=device)
    dif = _diffusers()
    d = getattr(dif, name)(**cfg) if dif is not None else None
    if d is not None:
        d.set_timesteps(50, device=device)
        # a step-only benchmark: diffusers' Euler schedulers would warn on every call that
        # scale_model_input (a separate, untimed op) was not called first
        if hasattr(d, "is_scale_input_called"):
            d.is_scale_input_called = True
    return g, d


def _reset(s):
    if hasattr(s, "_step_index"):
        s._step_index = STEP


def step_case(name: str, label: str, shape, device, quick=False, generator=False, dtype=torch.float32) -> Case:
    """One guided step at latents `shape` (the model output has 2 * shape[0] samples). generator:
    pass a torch.Generator to both schedulers (the noise path that reproduces diffusers' images:
    a noise tensor drawn as diffusers draws it) instead of gankern's in-kernel Philox noise.
    dtype: of the latents and model output (bf16: the CPU target is >= 1.6x gankern's fp32 time)."""
    g, d = _sched_pair(name, device)
    t = g.timesteps[STEP]
    sigma_index = isinstance(g, (GS.EulerDiscreteScheduler, GS.EulerAncestralDiscreteScheduler,
                                 GS.DPMSolverMultistepScheduler))
    plan = g.plan(STEP if sigma_index else int(t))
    # the compiled baseline draws its noise with torch.randn (compiling the Philox reference's
    # integer ops takes minutes and is not what a user would write)
    flags = plan.flags | R.GUIDED | (R.NOISE_TENSOR if plan.stochastic else 0)
    coefs = list(plan.coefs)
    coefs[R.C_G] = GUIDANCE

    def setup():
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen).to(device, dtype)
        mo = torch.randn((2 * shape[0],) + tuple(shape[1:]), generator=gen).to(device, dtype)
        return mo, x, t.to(device)

    gen = torch.Generator(device=device).manual_seed(0) if generator else None

    def run_gankern(a):
        _reset(g)
        return g.step(a[0], a[2], a[1], guidance_scale=GUIDANCE, generator=gen).prev_sample

    def run_reference(a):
        noise = torch.randn_like(a[1]) if plan.stochastic else None
        return R.diffusion_step(a[0], a[1], None, noise, None, None, coefs, flags, 1, 0, False)[0]

    if d is not None:
        def run_eager(a):
            _reset(d)
            u, c = a[0].chunk(2)
            return d.step(u + GUIDANCE * (c - u), a[2], a[1], **({"generator": gen} if generator else {})).prev_sample
        eager_name = "diffusers step + eager guidance"
    else:
        run_eager, eager_name = run_reference, "reference step (eager)"
    n = math.prod(shape)
    noise = " (generator noise)" if generator else ""
    es = torch.tensor([], dtype=dtype).element_size()
    return Case("diffusion", f"{label}{noise} step + guidance", tuple(shape), dtype, setup, run_gankern,
                run_eager, bytes=es * n * (5 if generator else 4), quick=quick, compile=run_reference,
                notes=f"eager = {eager_name}; compile = torch.compile of the reference generic step"
                      + ("; noise: torch.Generator, drawn as diffusers draws it" if generator else
                         ("; noise: in-kernel Philox" if plan.stochastic else "")),
                tags=dict(scheduler=name, noise="generator" if generator else "philox"), kernel="diffusion_step")


class TinyUNet(torch.nn.Module):
    """A small conv net standing in for a UNet: the loop case times scheduling around a model."""

    def __init__(self, ch=4, width=32):
        super().__init__()
        self.inp = torch.nn.Conv2d(ch, width, 3, padding=1)
        self.mid = torch.nn.Conv2d(width, width, 3, padding=1)
        self.out = torch.nn.Conv2d(width, ch, 3, padding=1)
        self.temb = torch.nn.Linear(1, width)

    def forward(self, x, t):
        h = torch.nn.functional.silu(self.inp(x) + self.temb(t.float().reshape(1, 1) / 1000).reshape(1, -1, 1, 1))
        return self.out(torch.nn.functional.silu(self.mid(h)))


def loop_case(device, shape=(2, 4, 32, 32), steps=50) -> Case:
    model = TinyUNet(shape[1]).to(device).eval()

    def setup():
        return (torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device),)

    def run_gankern(a):
        from ..sampling import sample
        s = GS.DDIMScheduler(**SD)
        return sample(model, s, shape, steps, guidance_scale=GUIDANCE, seed=0, progress=False, device=device,
                      latents=a[0])

    def run_eager(a):
        dif = _diffusers()
        s = dif.DDIMScheduler(**SD) if dif is not None else GS.DDIMScheduler(**SD)
        s.set_timesteps(steps)
        x = a[0]
        with torch.no_grad():
            for t in s.timesteps:
                out = model(torch.cat([x, x]), t.to(device))
                u, c = out.chunk(2)
                x = s.step(u + GUIDANCE * (c - u), t, x).prev_sample
        return x

    n = math.prod(shape)
    return Case("diffusion", f"DDIM {steps}-step loop, tiny UNet", tuple(shape), torch.float32, setup, run_gankern,
                run_eager, bytes=4 * n * 4 * steps, quick=False, notes="model time included in every column",
                kernel="diffusion_step")


def cases(device: torch.device) -> list[Case]:
    device = torch.device(device)
    out = [
        step_case("DDIMScheduler", "DDIM", (8, 4, 64, 64), device),
        step_case("DDIMScheduler", "DDIM", (16, 4, 128, 128), device, quick=True),
        step_case("DDIMScheduler", "DDIM", (64, 3, 32, 32), device),
        step_case("DDPMScheduler", "DDPM", (16, 4, 128, 128), device, quick=True),
        # half the bytes: bf16 on the CPU (fp16 on GPUs is the GPU backends' business)
        step_case("DDIMScheduler", "DDIM", (16, 4, 128, 128), device, dtype=torch.bfloat16),
        step_case("DDPMScheduler", "DDPM", (16, 4, 128, 128), device, quick=True, generator=True),
        step_case("EulerAncestralDiscreteScheduler", "Euler ancestral", (8, 4, 64, 64), device),
        step_case("EulerAncestralDiscreteScheduler", "Euler ancestral", (16, 4, 128, 128), device),
        step_case("EulerAncestralDiscreteScheduler", "Euler ancestral", (16, 4, 128, 128), device, generator=True),
        step_case("EulerDiscreteScheduler", "Euler", (16, 4, 128, 128), device),
        step_case("DPMSolverMultistepScheduler", "DPM++ 2M", (16, 4, 128, 128), device),
        loop_case(device),
    ]
    return out


# ---- the CPU target measurement ----------------------------------------------------------------

def measure(case: Case, rounds: int = 6, runs: int = 40, warmup: int = 20) -> dict:
    """ms of gankern, eager, torch.compile(case.compile or case.eager) and a clone of the model
    output (copy-bandwidth yardstick). Runs come in blocks of `runs` per contender, rotated `rounds`
    times; each contender's time is the smallest of its block medians. On a shared machine whose
    other tenants stall the cores for milliseconds at a time, that estimates every contender in its
    quietest period rather than whichever happened to run during a stall."""
    a = case.setup()
    fns = {"gankern": case.gankern, "eager": case.eager,
           "compile": torch.compile(case.compile or case.eager)}
    fns["clone"] = lambda a: a[0].clone()
    best = {k: math.inf for k in fns}
    for k, f in fns.items():
        for _ in range(warmup):
            f(a)
    for _ in range(rounds):
        for k, f in fns.items():
            block = []
            for _ in range(runs):
                t0 = time.perf_counter()
                f(a)
                block.append(time.perf_counter() - t0)
            best[k] = min(best[k], statistics.median(block))
    return {k: v * 1e3 for k, v in best.items()}


def main(argv=None):
    """Usage: python -m gankern.bench.diffusion [--threads N] [substring of the case label ...]"""
    import sys
    args = list(sys.argv[1:] if argv is None else argv)
    if "--threads" in args:
        i = args.index("--threads")
        n = int(args[i + 1])
        del args[i:i + 2]
        from .. import _native
        torch.set_num_threads(n)
        if _native.cpu is not None:
            _native.cpu.set_num_threads(n)
    wanted = args or [""]
    torch.manual_seed(0)
    dev = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for c in cases(dev):
        label = f"{c.variant} {'x'.join(map(str, c.shape))}"
        if "loop" in c.variant or not any(w in label for w in wanted):
            continue
        r = measure(c)
        print(f"{c.variant:34s} {'x'.join(map(str, c.shape)):>14s}  gankern {r['gankern']:.3f} ms  "
              f"eager {r['eager']:.3f} ms ({r['eager'] / r['gankern']:.1f}x)  compile {r['compile']:.3f} ms "
              f"({r['compile'] / r['gankern']:.2f}x)  clone(2B) {r['clone']:.3f} ms", flush=True)


if __name__ == "__main__":
    main()
