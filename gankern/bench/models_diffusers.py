"""End-to-end benchmarks of the diffusers-compatible models (gankern.models.UNet2DModel and
AutoencoderKL): the fused model against the same model with plain torch layers (fused=False),
diffusers' own model (eager, what users run) and torch.compile of diffusers' model, with peak memory.

    python -m gankern.bench.models_diffusers [--cases unet_train,vae_decode] [--rounds 5] [--no-compile]

Variants are timed interleaved, round after round in one process, and the table gives medians and
ratios (machine load shifts all variants alike). Peak memory is what one call adds on top of what
was resident before it (weights, gradients and optimizer state already allocated): on CUDA from the
allocator's peak, on Linux CPUs from the process's peak RSS (VmHWM, reset before each call through
/proc/self/clear_refs, with freed heap returned by malloc_trim first).

diffusers is needed for the "diffusers" and "compile" variants; without it only fused/unfused run.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .. import diffusion_loss
from ..models import AutoencoderKL, UNet2DModel
from ..schedulers import DDPMScheduler

# google/ddpm-cifar10-32 and Stable Diffusion 1.x's VAE (the configs of the published weights).
DDPM_CIFAR10 = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
                    layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
                    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, norm_num_groups=32)
SD_VAE = dict(in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              latent_channels=4, norm_num_groups=32, sample_size=256, scaling_factor=0.18215)


@dataclass
class ModelCase:
    name: str
    what: str
    build: Callable[[torch.device, bool], dict[str, Callable[[], object]]]  # variant -> one call


def _diffusers():
    try:
        import diffusers
        return diffusers
    except ImportError:
        return None


def _unet_train(device: torch.device, compile: bool, batch: int = 16) -> dict:
    """One DDPM training step: forward, gankern.diffusion_loss, backward, Adam step."""
    torch.manual_seed(0)
    sched = DDPMScheduler(num_train_timesteps=1000)
    acp = sched.alphas_cumprod.to(device)
    x0 = torch.randn(batch, 3, 32, 32, device=device)
    noise = torch.randn_like(x0)
    t = torch.randint(0, 1000, (batch,), device=device)
    xt = sched.add_noise(x0, noise, t)

    def stepper(model, call=None):
        call = call or model
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            out = call(xt, t).sample
            diffusion_loss(out, x0, noise, t, acp).backward()
            opt.step()
        return step

    fused = UNet2DModel(**DDPM_CIFAR10, fused=True).to(device)
    variants = {"gankern fused": stepper(fused)}
    unfused = UNet2DModel(**DDPM_CIFAR10, fused=False).to(device)
    unfused.load_state_dict(fused.state_dict())
    variants["unfused (torch layers)"] = stepper(unfused)
    d = _diffusers()
    if d is not None:
        ref = d.UNet2DModel(**DDPM_CIFAR10).to(device)
        ref.load_state_dict(fused.state_dict())
        variants["diffusers eager"] = stepper(ref)
        if compile:
            ref_c = d.UNet2DModel(**DDPM_CIFAR10).to(device)
            ref_c.load_state_dict(fused.state_dict())
            variants["diffusers torch.compile"] = stepper(ref_c, torch.compile(ref_c))
    return variants


def _vae_decode(device: torch.device, compile: bool, latent: int = 32) -> dict:
    """Decoding one latent of latent x latent (x8 pixels), no gradients."""
    torch.manual_seed(0)
    z = torch.randn(1, 4, latent, latent, device=device)

    def decoder(decode):
        @torch.no_grad()
        def call():
            return decode(z).sample
        return call

    fused = AutoencoderKL(**SD_VAE, fused=True).to(device).eval()
    variants = {"gankern fused": decoder(fused.decode)}
    unfused = AutoencoderKL(**SD_VAE, fused=False).to(device).eval()
    unfused.load_state_dict(fused.state_dict())
    variants["unfused (torch layers)"] = decoder(unfused.decode)
    d = _diffusers()
    if d is not None:
        ref = d.AutoencoderKL(**SD_VAE).to(device).eval()
        ref.load_state_dict(fused.state_dict())
        variants["diffusers eager"] = decoder(ref.decode)
        if compile:
            variants["diffusers torch.compile"] = decoder(torch.compile(ref.decode))
    return variants


CASES = {
    "unet_train": ModelCase("unet_train", "UNet2DModel DDPM-CIFAR10 training step, 16x3x32x32 fp32", _unet_train),
    "vae_decode": ModelCase("vae_decode", "AutoencoderKL SD-VAE decode, 1x4x32x32 -> 1x3x256x256 fp32", _vae_decode),
}


# ---- measurement -----------------------------------------------------------------------------

def _proc_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_extra_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak memory fn() adds on top of what is resident before it, in MiB (None: not measurable)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        base = _proc_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    fn()
    peak = _proc_kb("VmHWM")
    return None if base is None or peak is None else (peak - base) / 1024


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(case: ModelCase, device: torch.device, rounds: int = 5, compile: bool = True) -> list[dict]:
    """Times every variant interleaved for `rounds` rounds (after one warm-up call each; the
    torch.compile variant compiles there) and measures each one's peak memory."""
    variants = case.build(device, compile)
    for fn in variants.values():
        fn()
        _sync(device)
    memory = {name: peak_extra_mb(fn, device) for name, fn in variants.items()}
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    base = statistics.median(times["unfused (torch layers)"])
    base_mem = memory["unfused (torch layers)"]
    rows = []
    for name in variants:
        ms = statistics.median(times[name])
        rows.append(dict(case=case.name, what=case.what, variant=name, ms=ms, speedup_vs_unfused=base / ms,
                         peak_mb=memory[name],
                         peak_vs_unfused=None if memory[name] is None or not base_mem else memory[name] / base_mem,
                         times_ms=times[name]))
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'case':<11} {'variant':<24} {'median ms':>10} {'unfused/x':>9} {'peak MiB':>9} {'x/unfused':>9}")
    for r in rows:
        mem = "-" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        rel = "-" if r["peak_vs_unfused"] is None else f"{r['peak_vs_unfused']:.2f}"
        print(f"{r['case']:<11} {r['variant']:<24} {r['ms']:>10.1f} {r['speedup_vs_unfused']:>9.2f} {mem:>9} {rel:>9}")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    args = p.parse_args(argv)
    names = [c for c in args.cases.split(",") if c]
    unknown = set(names) - set(CASES)
    if unknown:
        raise SystemExit(f"unknown case(s) {sorted(unknown)}; choose from {', '.join(CASES)}")
    device = torch.device(args.device)
    rows = []
    for name in names:
        rows += measure(CASES[name], device, args.rounds, compile=not args.no_compile)
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
