"""`gankern bench --models`: end-to-end model cases, each timed as a list of variants (gankern's
fused model, the eager model users run, torch.compile of it, gankern.optimize, ...), with speed-up
ratios against the eager baseline and against torch.compile, peak memory and, where the variants
compute the same thing, the output error against the baseline.

A suite is a function `(device, scale) -> list[ModelCase]`, scale being "tiny" (the tests: the
smallest configs, seconds), "quick" (the default set) or "full"; SUITES lists them by import path,
so other modules add cases with one line here and nothing else. The variants of a case are timed
interleaved, round after round, in one process (on a shared machine the load drifts; the ratio
within a round is what counts) and the median of all calls is reported (timing.interleaved).

Peak memory, one definition for every case: what one call adds on top of what was resident before
it (weights, gradients, optimizer state). On CUDA from torch.cuda.max_memory_allocated; on a Linux
CPU from the process's peak RSS (VmHWM, reset through /proc/self/clear_refs after malloc_trim has
returned freed heap), so allocator caching can hide reuse but never invent memory; elsewhere none.
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import gc
import importlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .timing import interleaved, sync

SCALES = ("tiny", "quick", "full")

# "module:function" of every suite; one line each.
SUITES = [
    "gankern.bench.models:gankern_models",
    "gankern.bench.models_diffusers:diffusers_models",
    "gankern.bench.models_stylegan:stylegan_models",
]


@dataclass
class ModelCase:
    model: str                                   # e.g. "dcgan"
    what: str                                    # what is timed, e.g. "train step"
    shape: tuple                                 # input batch shape, for the table
    build: Callable[[str], Callable[[], Any]]    # variant name -> the timed zero-argument callable
    variants: tuple = ("fused", "eager", "compile")  # the contenders, in table order
    baseline: str = "eager"                      # what users run: the ratios are baseline ms / variant ms
    compiled: str = "compile"                    # torch.compile of the baseline: the second ratio
    compare: bool = False                        # variants compute the same output: report error vs baseline
    notes: str = ""
    quick: bool = True                           # in the default set


@dataclass
class ModelResult:
    model: str
    what: str
    shape: list
    ms: dict = field(default_factory=dict)       # variant -> median ms
    peak_mb: dict = field(default_factory=dict)  # variant -> MB added by one call (None: not measurable)
    err: dict = field(default_factory=dict)      # variant -> max |out - baseline| / max |baseline|
    baseline: str = "eager"
    compiled: str = "compile"
    notes: str = ""

    def ratio(self, variant, vs=None):
        """Speed-up of `variant` over `vs` (default: the baseline), > 1 is faster."""
        a, b = self.ms.get(vs or self.baseline), self.ms.get(variant)
        return a / b if a and b else None


# ---- the cases of gankern.models ---------------------------------------------------------------

def _adam_step(params, lr=1e-4):
    return torch.optim.Adam(params, lr=lr)


def _dcgan_step(device, size, batch):
    from ..models import DCGAN

    def build(variant):
        torch.manual_seed(0)
        m = DCGAN(image_size=size, channels=3, nz=100, ngf=64, ndf=64, fused=variant == "fused").to(device)
        G, D = m.generator, m.discriminator
        if variant == "compile":
            G, D = torch.compile(G), torch.compile(D)
        og, od = _adam_step(m.generator.parameters()), _adam_step(m.discriminator.parameters())
        x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
        z = torch.randn(batch, 100, 1, 1, device=device)
        ones, zeros = torch.ones(batch, device=device), torch.zeros(batch, device=device)

        def step():
            fake = G(z)
            loss_d = (F.binary_cross_entropy_with_logits(D(x), ones)
                      + F.binary_cross_entropy_with_logits(D(fake.detach()), zeros))
            od.zero_grad(set_to_none=True)
            loss_d.backward()
            od.step()
            loss_g = F.binary_cross_entropy_with_logits(D(fake), ones)
            og.zero_grad(set_to_none=True)
            loss_g.backward()
            og.step()
            return loss_d.detach()
        return step
    return build


def _vae_model(device, variant):
    from ..models import ConvVAE
    torch.manual_seed(0)
    m = ConvVAE(fused=variant == "fused").to(device)
    return m


def _vae_step(device, batch):
    def build(variant):
        m = _vae_model(device, variant)
        loss_fn = torch.compile(m.loss) if variant == "compile" else m.loss
        opt = _adam_step(m.parameters())
        x = torch.rand(batch, 1, 32, 32, device=device) * 2 - 1

        def step():
            loss, _ = loss_fn(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()
        return step
    return build


def _vae_codec(device, batch, what):
    def build(variant):
        m = _vae_model(device, variant).eval()
        fn = m.encoder if what == "encode" else m.decoder
        fn = torch.compile(fn) if variant == "compile" else fn
        arg = (torch.rand(batch, 1, 32, 32, device=device) * 2 - 1 if what == "encode"
               else torch.randn(batch, m.latent_dim, device=device))

        def call():
            with torch.no_grad():
                return fn(arg)
        return call
    return build


def _unet(device, variant):
    from ..train.tasks import DDPMTask, build_unet
    c = DDPMTask.defaults
    torch.manual_seed(0)
    return build_unet(sample_size=32, in_channels=1, out_channels=1, block_out_channels=tuple(c["block_out_channels"]),
                      layers_per_block=c["layers_per_block"], down_block_types=tuple(c["down_block_types"]),
                      up_block_types=tuple(c["up_block_types"]), norm_num_groups=c["norm_num_groups"],
                      fused=variant == "fused").to(device)


def _ddpm_step(device, batch):
    from ..ops.diffusion import add_noise, diffusion_loss
    from ..schedulers import DDPMScheduler

    def build(variant):
        unet = _unet(device, variant)
        net = torch.compile(unet) if variant == "compile" else unet
        opt = _adam_step(unet.parameters())
        acp = DDPMScheduler().alphas_cumprod.to(device)
        x0 = torch.rand(batch, 1, 32, 32, device=device) * 2 - 1
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,), device=device)

        def step():
            if variant == "fused":
                loss = diffusion_loss(net(add_noise(x0, noise, t, acp), t).sample, x0, noise, t, acp)
            else:
                a = acp[t].view(-1, 1, 1, 1)
                loss = F.mse_loss(net(a.sqrt() * x0 + (1 - a).sqrt() * noise, t).sample, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()
        return step
    return build


def _ddpm_sample(device, batch, steps, guidance=3.0):
    def build(variant):
        unet = _unet(device, variant).eval()
        net = torch.compile(unet) if variant == "compile" else unet
        # both start from the same noise, so they compute the same samples
        noise = torch.randn((batch, 1, 32, 32), generator=torch.Generator(device=device).manual_seed(0),
                            device=device)
        if variant == "fused":
            from ..sampling import sample
            from ..schedulers import DDIMScheduler
            sched = DDIMScheduler()
            return lambda: sample(lambda x, t: net(x, t).sample, sched, (batch, 1, 32, 32), steps,
                                  guidance_scale=guidance, progress=False, device=device, latents=noise)
        from diffusers import DDIMScheduler as DiffusersDDIM
        sched = DiffusersDDIM()

        @torch.no_grad()
        def run():   # diffusers' pipeline loop: guidance in eager torch, diffusers' step
            x = noise
            sched.set_timesteps(steps, device=device)
            for t in sched.timesteps:
                out = net(torch.cat([x, x]), t).sample
                uncond, cond = out.chunk(2)
                x = sched.step(uncond + guidance * (cond - uncond), t, x).prev_sample
            return x
        return run
    return build


def gankern_models(device, scale: str) -> list[ModelCase]:
    # full: the published sizes; quick: small batches (the default run takes minutes on 2 CPU cores)
    b, size, ub, steps = {"tiny": (2, 32, 2, 2), "quick": (8, 64, 4, 10), "full": (64, 64, 16, 50)}[scale]
    return [
        ModelCase("dcgan", "train step (G + D)", (b, 3, size, size), _dcgan_step(device, size, b), compare=True,
                  notes="classic DCGAN, nz 100, ngf = ndf = 64"),
        ModelCase("vae", "train step", (b, 1, 32, 32), _vae_step(device, b),
                  notes="no error column: the fused reparameterization draws its own noise"),
        ModelCase("vae", "encode", (b, 1, 32, 32), _vae_codec(device, b, "encode"), compare=True),
        ModelCase("vae", "decode", (b, 16), _vae_codec(device, b, "decode"), compare=True),
        ModelCase("ddpm", "UNet train step", (ub, 1, 32, 32), _ddpm_step(device, ub), compare=True,
                  notes="the `gankern train ddpm` UNet"),
        ModelCase("ddpm", f"{steps}-step DDIM sampling, guidance 3", (ub, 1, 32, 32),
                  _ddpm_sample(device, ub, steps), compare=True,
                  notes="eager: diffusers' DDIMScheduler, guidance in torch"),
    ]

# ---- the runner ---------------------------------------------------------------------------------

def _proc_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak memory fn() adds on top of what is resident before it, in MiB (None: not measurable)."""
    gc.collect()
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
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
    return None if base is None or peak is None else max(0, peak - base) / 1024


def _as_tensor(out):
    if isinstance(out, (tuple, list)):
        out = out[0]
    out = getattr(out, "sample", out)
    out = getattr(out, "images", out)
    return out if isinstance(out, torch.Tensor) else None


def rel_err(out, ref) -> float | None:
    out, ref = _as_tensor(out), _as_tensor(ref)
    if out is None or ref is None or out.shape != ref.shape:
        return None
    out, ref = out.detach().double(), ref.detach().double()
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def collect(device, scale: str = "quick") -> list[ModelCase]:
    """Every suite's cases at `scale`; "quick" keeps only the cases marked quick."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    cases = []
    for spec in SUITES:
        mod, fn = spec.split(":")
        cases += [c for c in getattr(importlib.import_module(mod), fn)(device, scale) if scale != "quick" or c.quick]
    return cases


def _note(res, msg):
    res.notes = (res.notes + "; " if res.notes else "") + msg


@contextlib.contextmanager
def _full_fp32():
    """TF32 off for the call whose output the err column compares. Timings keep torch's defaults
    (cuDNN convolutions in TF32 on Ampere and later). With TF32 each convolution carries ~1e-3
    relative error, and ten guided DDIM steps of a random-weight UNet differed by 0.17 between the
    variants on an H200, against 2.8e-4 in fp32 on the CPU: TF32 is the likely cause (not yet
    re-measured on a GPU)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def run_case(case: ModelCase, device, budget: float, rounds: int, compile: bool = True) -> ModelResult:
    """Builds every variant, warms it up (torch.compile compiles there; a variant that fails is
    noted, not fatal), times them interleaved for `rounds` rounds, then measures peak memory."""
    res = ModelResult(case.model, case.what, list(case.shape), baseline=case.baseline, compiled=case.compiled,
                      notes=case.notes)
    fns, first = {}, {}
    for v in case.variants:
        if not compile and "compile" in v:
            continue
        try:
            fns[v] = case.build(v)
            torch.manual_seed(0)
            with _full_fp32():
                first[v] = fns[v]()
            sync(device)
        except Exception as e:
            _note(res, f"{v} failed: {type(e).__name__}: {str(e)[:80]}")
            fns.pop(v, None)
    if case.compare and case.baseline in first:
        res.err = {v: rel_err(o, first[case.baseline]) for v, o in first.items()}
    del first
    timed = interleaved(fns, device, budget, min_reps=rounds, max_reps=20, rounds=rounds)
    res.ms = {v: t.ms for v, t in timed.items()}
    res.peak_mb = {v: peak_mb(fn, device) for v, fn in fns.items()}
    del fns
    torch._dynamo.reset()
    gc.collect()
    return res


# torch.profiler op names -> the breakdown's buckets (first match wins)
_BUCKETS = [
    ("gankern ops", ("gankern::",)),
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention", "softmax", "baddbmm", "bmm")),
    ("convolution", ("conv", "mkldnn_convolution", "cudnn_convolution")),
    ("matmul", ("addmm", "mm", "matmul", "linear")),
    ("layout copies", ("copy_", "contiguous", "clone", "to_dense", "_to_copy", "reorder")),
]


@dataclass
class Breakdown:
    """Where one call's time goes. shares: each bucket's part of the self time (device time on a GPU,
    CPU time on the CPU). On a GPU, host_ms against device_ms says whether the call is host-bound
    (the Python and launch work of each op costs more than its kernel): fusing kernels then helps
    only if it also removes launches. top_host: the ops with the most self CPU time, in ms."""
    shares: dict[str, float]
    host_ms: float
    device_ms: float | None
    top_host: list[tuple[str, float]]


def breakdown(fn: Callable[[], object], device) -> Breakdown:
    """The profile of one call of fn (after one warm-up call)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        fn()
    events = prof.key_averages()
    total, shares = 0.0, {}
    for evt in events:
        t = evt.self_device_time_total if cuda else evt.self_cpu_time_total
        total += t
        name = evt.key.lower()
        bucket = next((b for b, keys in _BUCKETS if any(k in name for k in keys)), "other elementwise / misc")
        shares[bucket] = shares.get(bucket, 0.0) + t
    host = sorted(((e.key, e.self_cpu_time_total / 1e3) for e in events), key=lambda kv: -kv[1])
    return Breakdown({b: t / max(total, 1e-30) for b, t in sorted(shares.items(), key=lambda kv: -kv[1])},
                     sum(ms for _, ms in host), total / 1e3 if cuda else None, host[:6])


def profile_case(case: ModelCase, device) -> dict[str, Breakdown]:
    """The breakdown of every variant that is not torch.compiled (its ops are Inductor's kernels)."""
    out = {}
    for v in case.variants:
        if "compile" not in v:
            out[v] = breakdown(case.build(v), device)
    return out


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(results: list[ModelResult]) -> str:
    from .runner import format_table
    head = ["model", "what", "shape", "variant", "median ms", "x vs eager", "x vs compile", "peak MB", "err vs eager"]
    rows = []
    for r in results:
        for v, ms in r.ms.items():
            rows.append([r.model, r.what, "x".join(map(str, r.shape)), v, _fmt(ms, ".1f"), _fmt(r.ratio(v), ".2f"),
                         _fmt(r.ratio(v, r.compiled), ".2f"), _fmt(r.peak_mb.get(v), ".1f"),
                         _fmt(r.err.get(v), ".1e")])
    return format_table(head, rows, left=4)


def run_models(device: str | None = None, out: str = "bench-out", compile: bool = True, budget: float | None = None,
               progress: bool = True, full: bool = False, rounds: int = 3, profile: bool = False,
               scale: str | None = None) -> list[ModelResult]:
    from .runner import bar_chart, machine_info
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gankern bench: --device cuda requested but PyTorch sees no CUDA device")
    budget = budget if budget is not None else (1.0 if dev.type == "cpu" else 0.3)
    from tqdm.auto import tqdm
    results, profiles = [], []
    cases = collect(dev, scale or ("full" if full else "quick"))
    for case in tqdm(cases, desc="gankern bench --models", unit="case", disable=not progress, file=sys.stderr):
        results.append(run_case(case, dev, budget, rounds, compile))
        if profile:
            profiles.append((case, profile_case(case, dev)))
    info = machine_info(dev)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / f"bench-models-{dev.type}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    rows = [dict(asdict(r), x_vs_eager={v: r.ratio(v) for v in r.ms},
                 x_vs_compile={v: r.ratio(v, r.compiled) for v in r.ms}) for r in results]
    doc = {"machine": info, "results": rows}
    if profile:
        doc["profile"] = [dict(model=c.model, what=c.what, variants={v: asdict(b) for v, b in p.items()})
                          for c, p in profiles]
    base.with_suffix(".json").write_text(json.dumps(doc, indent=2))
    title = f"gankern {info['gankern']} models on {info.get('gpu', info['cpu'])} ({info['date'][:10]})"
    labels, vs_eager, vs_compile = [], [], []
    for r in results:
        for v in r.ms:
            if v != r.baseline:
                labels.append(f"{r.model} {r.what}\n{v}")
                vs_eager.append(r.ratio(v) or 0)
                vs_compile.append(r.ratio(v, r.compiled) or 0)
    bar_chart(labels, {"vs eager": vs_eager, "vs torch.compile": vs_compile}, base.with_suffix(".png"), title,
              "speed-up of the variant (x, higher is better)")
    print(f"\n{title}, {rounds} interleaved rounds\n")
    print(table(results))
    for case, variants in profiles:
        print(f"\nprofile of {case.model} {case.what}:")
        for v, b in variants.items():
            busy = f"host {b.host_ms:.1f} ms" + ("" if b.device_ms is None else f", device {b.device_ms:.1f} ms")
            print(f"  {v:17s} {busy}: " + ", ".join(f"{k} {x:.0%}" for k, x in b.shares.items()))
            print(f"  {'':17s} most host time: " + ", ".join(f"{n} {ms:.2f}" for n, ms in b.top_host))
    mem = ("torch.cuda.max_memory_allocated" if dev.type == "cuda"
           else "peak RSS growth of one call (VmHWM)")
    print(f"\neager = what users run (the plain-torch model, diffusers' own model); ratios are eager ms / "
          f"variant ms;\npeak MB: memory one call adds, {mem};\nerr: max |out - eager| / max |eager| of the first "
          f"call, TF32 off.\n"
          f"results: {base.with_suffix('.json')}\nchart:   {base.with_suffix('.png')}")
    return results
