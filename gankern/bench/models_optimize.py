"""End-to-end cases for `gankern bench --models`: whole diffusers models, as users run them, timed
as eager, gankern.optimize, torch.compile and optimize + torch.compile, in one process with the
four variants interleaved (the machine's load drifts; ratios within one round are what count).

Models are built from their published configs with random weights (nothing is downloaded).
Each case is plain data: `build(device, full)` returns (model, inputs) and `step(model, inputs)`
is the timed work, so the runner of `gankern bench --models` can take these as they are.

    python -m gankern.bench.models_optimize [--full] [--cases vae_decode,unet_cond] [--profile]
"""
from __future__ import annotations

import argparse
import copy
import gc
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

# Published configs (diffusers' config.json of the named checkpoints), random weights.
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              layers_per_block=2, norm_num_groups=32, sample_size=512)
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
DDPM_CIFAR10_UNET = dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                         block_out_channels=(128, 256, 256, 256),
                         down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
# A small DDIM pipeline: DDPM-CIFAR10's UNet narrowed, 32x32 images, 10 steps.
SMALL_UNET = dict(DDPM_CIFAR10_UNET, block_out_channels=(64, 128, 128, 128))


@dataclass
class ModelCase:
    name: str
    what: str                                    # for the table
    build: Callable[[torch.device, bool], tuple[torch.nn.Module, Any]]
    step: Callable[[Any, Any], Any]              # the timed work, on (model, inputs)
    training: bool = False
    compile_target: Callable[[Any], Any] | None = None  # what torch.compile wraps (default: the model)


def _seeded(fn):
    def wrapped(*a):
        torch.manual_seed(0)
        return fn(*a)
    return wrapped


@_seeded
def _vae_decode(device, full):
    from diffusers import AutoencoderKL
    vae = AutoencoderKL(**SD_VAE).to(device).eval()
    side = 64 if full else 32
    return vae.decoder, torch.randn(1, 4, side, side, device=device)


@_seeded
def _unet_cond(device, full):
    from diffusers import UNet2DConditionModel
    unet = UNet2DConditionModel(**SD15_UNET).to(device).eval()
    side = 64 if full else 32
    inputs = (torch.randn(2, 4, side, side, device=device), torch.tensor([500, 500], device=device),
              torch.randn(2, 77, 768, device=device))
    return unet, inputs


@_seeded
def _unet_train(device, full):
    from diffusers import UNet2DModel
    unet = UNet2DModel(**DDPM_CIFAR10_UNET).to(device).train()
    batch = 16 if full else 4
    return unet, (torch.randn(batch, 3, 32, 32, device=device), torch.randint(0, 1000, (batch,), device=device),
                  torch.randn(batch, 3, 32, 32, device=device))


@_seeded
def _pipeline(device, full):
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
    unet = UNet2DModel(**SMALL_UNET).to(device).eval()
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    return pipe, (4 if full else 2, 10)


def _decode(dec, z):
    with torch.no_grad():
        return dec(z)


def _cond_step(unet, inputs):
    with torch.no_grad():
        return unet(*inputs).sample


def _train_step(unet, inputs):
    x, t, noise = inputs
    loss = torch.nn.functional.mse_loss(unet(x, t).sample, noise)
    loss.backward()
    for p in unet.parameters():
        p.grad = None
    return loss


def _sample(pipe, inputs):
    batch, steps = inputs
    return pipe(batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                output_type="pt").images


CASES = [
    ModelCase("vae_decode", "SD AutoencoderKL decode, 32x32 latent -> 256x256 (64 -> 512 with --full)",
              _vae_decode, _decode),
    ModelCase("unet_cond", "UNet2DConditionModel SD 1.5 config, 32x32 latents, batch 2 (CFG)", _unet_cond,
              _cond_step),
    ModelCase("unet_train", "UNet2DModel DDPM-CIFAR10 config, training step, batch 4 (16 with --full)",
              _unet_train, _train_step, training=True),
    ModelCase("ddim_pipeline", "DDIMPipeline (small UNet2DModel), 10 DDIM steps, batch 2, 32x32", _pipeline,
              _sample, compile_target=lambda pipe: pipe.unet),
]


def variants(case: ModelCase, device, full) -> dict[str, tuple[Any, Any]]:
    """eager, optimize, compile, optimize+compile: (model, inputs) each, built from one seed."""
    import gankern
    model, inputs = case.build(device, full)
    out = {"eager": (model, inputs)}
    opt = copy.deepcopy(model)
    gankern.optimize(opt)
    out["optimize"] = (opt, inputs)

    def compiled(m):
        m = copy.deepcopy(m)
        if case.compile_target is None:
            return torch.compile(m)
        target = case.compile_target(m)
        m.unet = torch.compile(target)  # pipelines: compile the denoiser
        return m
    out["compile"] = (compiled(model), inputs)
    out["optimize+compile"] = (compiled(opt), inputs)
    if not case.training:  # opt-in bf16 (inference): numerics change, the table shows the error
        out["optimize(bf16)"] = (gankern.optimize(model, dtype=torch.bfloat16, inplace=False), inputs)
    return out


def _as_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    return getattr(out, "sample", None) if not isinstance(out, tuple) else out[0]


def _peak_bytes(device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return None


def run(case: ModelCase, device, full=False, rounds=5, names=None) -> dict[str, dict]:
    """Median seconds per variant over `rounds` interleaved rounds (after one warm-up each)."""
    vs = variants(case, device, full)
    names = names or list(vs)
    times = {n: [] for n in names}
    peaks = {}
    names = [n for n in names if n in vs]
    first = {}
    for n in names:  # warm-up (and compilation); outputs compared with eager's
        torch.manual_seed(0)
        first[n] = _as_tensor(case.step(*vs[n]))
    for _ in range(rounds):
        for n in names:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            gc.collect()
            t0 = time.perf_counter()
            case.step(*vs[n])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[n].append(time.perf_counter() - t0)
            peaks[n] = _peak_bytes(device)
    base = statistics.median(times[names[0]])
    ref = first[names[0]].detach().float()

    def err(n):
        o = first[n].detach().float()
        return ((o - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
    return {n: dict(median_s=statistics.median(t), vs_eager=base / statistics.median(t), peak_bytes=peaks[n],
                    max_rel_err=err(n), all_s=t) for n, t in times.items()}


# torch.profiler op names -> the breakdown's buckets
_BUCKETS = [
    ("gankern ops", ("gankern::",)),
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention", "softmax", "baddbmm", "bmm")),
    ("convolution", ("conv", "mkldnn_convolution", "cudnn_convolution")),
    ("matmul", ("addmm", "mm", "matmul", "linear")),
    ("layout copies", ("copy_", "contiguous", "clone", "to_dense", "_to_copy", "reorder")),
]


def breakdown(case: ModelCase, device, full=False, variant="eager") -> dict[str, float]:
    """Share of self CPU (or CUDA) time per bucket for one call of the case's variant."""
    from torch.profiler import ProfilerActivity, profile
    model, inputs = variants(case, device, full)[variant]
    case.step(model, inputs)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        case.step(model, inputs)
    total, shares = 0.0, {}
    for evt in prof.key_averages():
        t = evt.self_device_time_total if device.type == "cuda" else evt.self_cpu_time_total
        total += t
        name = evt.key.lower()
        bucket = next((b for b, keys in _BUCKETS if any(k in name for k in keys)), "other elementwise / misc")
        shares[bucket] = shares.get(bucket, 0.0) + t
    return {b: t / total for b, t in sorted(shares.items(), key=lambda kv: -kv[1])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true")
    p.add_argument("--cases", default=",".join(c.name for c in CASES))
    p.add_argument("--variants", default="eager,optimize,compile,optimize+compile,optimize(bf16)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="print the torch.profiler breakdown per model")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    names = a.variants.split(",")
    for case in CASES:
        if case.name not in a.cases.split(","):
            continue
        print(f"== {case.name}: {case.what}")
        for n, r in run(case, device, a.full, a.rounds, names).items():
            peak = f"{r['peak_bytes'] / 2**20:.0f} MiB" if r["peak_bytes"] else "n/a"
            print(f"  {n:17s} {r['median_s'] * 1e3:9.1f} ms  {r['vs_eager']:.2f}x eager  peak {peak}  "
                  f"max rel err vs eager {r['max_rel_err']:.2g}")
        if a.profile:
            for v in ("eager", "optimize"):
                shares = breakdown(case, device, a.full, v)
                print(f"  profile ({v}): " + ", ".join(f"{b} {s:.0%}" for b, s in shares.items()))


if __name__ == "__main__":
    main()
