"""`gankern bench --models`: end-to-end model cases, fused (gankern) vs eager (the same model
unfused, plain torch / diffusers) vs torch.compile of the eager model, with peak memory.

A suite is a function `(device, full) -> list[ModelCase]`; SUITES lists them by import path, so
other modules (e.g. cases of whole diffusers models) add a line here and nothing else. Each case
builds its timed callable per variant; the variants are timed interleaved, round after round, in
one process (on a shared machine the load drifts; the ratio within a round is what counts) and
the median over rounds is reported.

Peak memory: on CUDA, torch.cuda.max_memory_allocated above the level before the call. On the
CPU there is no allocator peak counter, so training steps report the bytes autograd saves for
backward (the activation memory that a fused layer cuts), and other cases report none.
"""
from __future__ import annotations

import datetime as _dt
import importlib
import json
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .timing import median_ms, sync

VARIANTS = ("fused", "eager", "compile")

# "module:function" of every suite; one line each.
SUITES = [
    "gankern.bench.models:gankern_models",
]


@dataclass
class ModelCase:
    model: str                                   # e.g. "dcgan"
    variant: str                                 # what is timed, e.g. "train step"
    shape: tuple                                 # input batch shape, for the table
    build: Callable[[str], Callable[[], Any]]    # variant name -> the timed zero-argument callable
    training: bool = False                       # measure saved-for-backward bytes on the CPU
    notes: str = ""
    quick: bool = True


@dataclass
class ModelResult:
    model: str
    variant: str
    shape: list
    ms: dict = field(default_factory=dict)       # variant -> median ms
    peak_mb: dict = field(default_factory=dict)  # variant -> MB (None where not measured)
    notes: str = ""

    def ratio(self, a="eager", b="fused"):
        return self.ms[a] / self.ms[b] if self.ms.get(a) and self.ms.get(b) else None


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
        return step
    return build


def _ddpm_sample(device, batch, steps, guidance=3.0):
    def build(variant):
        unet = _unet(device, variant).eval()
        net = torch.compile(unet) if variant == "compile" else unet
        if variant == "fused":
            from ..sampling import sample
            from ..schedulers import DDIMScheduler
            sched = DDIMScheduler()
            return lambda: sample(lambda x, t: net(x, t).sample, sched, (batch, 1, 32, 32), steps,
                                  guidance_scale=guidance, seed=0, progress=False, device=device)
        from diffusers import DDIMScheduler as DiffusersDDIM
        sched = DiffusersDDIM()

        @torch.no_grad()
        def run():   # diffusers' pipeline loop: guidance in eager torch, diffusers' step
            g = torch.Generator(device=device).manual_seed(0)
            x = torch.randn((batch, 1, 32, 32), generator=g, device=device)
            sched.set_timesteps(steps, device=device)
            for t in sched.timesteps:
                out = net(torch.cat([x, x]), t).sample
                uncond, cond = out.chunk(2)
                x = sched.step(uncond + guidance * (cond - uncond), t, x).prev_sample
            return x
        return run
    return build


def gankern_models(device, full: bool) -> list[ModelCase]:
    cases = [
        ModelCase("dcgan", "train step (G + D)", (64, 3, 64, 64), _dcgan_step(device, 64, 64), training=True,
                  notes="classic DCGAN 64x64, nz 100, ngf = ndf = 64"),
        ModelCase("vae", "train step", (64, 1, 32, 32), _vae_step(device, 64), training=True),
        ModelCase("vae", "encode", (64, 1, 32, 32), _vae_codec(device, 64, "encode")),
        ModelCase("vae", "decode", (64, 16), _vae_codec(device, 64, "decode")),
        ModelCase("ddpm", "UNet train step", (16, 1, 32, 32), _ddpm_step(device, 16), training=True,
                  notes="the `gankern train ddpm` UNet"),
        ModelCase("ddpm", "50-step DDIM sampling, guidance 3", (16, 1, 32, 32), _ddpm_sample(device, 16, 50),
                  notes="eager: diffusers' DDIMScheduler, guidance in torch"),
    ]
    return cases


# ---- the runner ---------------------------------------------------------------------------------

def _saved_bytes(fn) -> int:
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        try:
            key = (t.untyped_storage().data_ptr(), t.device)
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def _peak_mb(fn, device, training) -> float | None:
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return _saved_bytes(fn) / 2**20 if training else None


def collect(device, full: bool) -> list[ModelCase]:
    cases = []
    for spec in SUITES:
        mod, fn = spec.split(":")
        cases += [c for c in getattr(importlib.import_module(mod), fn)(device, full) if full or c.quick]
    return cases


def run_case(case: ModelCase, device, variants, budget: float, rounds: int) -> ModelResult:
    res = ModelResult(case.model, case.variant, list(case.shape), notes=case.notes)
    fns = {}
    for v in variants:
        try:
            fns[v] = case.build(v)
            fns[v]()   # warm-up (compiles)
        except Exception as e:   # a baseline that fails is reported, not fatal
            res.notes = (res.notes + "; " if res.notes else "") + f"{v} failed: {type(e).__name__}: {str(e)[:80]}"
            fns.pop(v, None)
    times = {v: [] for v in fns}
    for _ in range(rounds):
        for v, fn in fns.items():
            times[v].append(median_ms(fn, device, budget, min_reps=2, max_reps=20))
    res.ms = {v: statistics.median(t) for v, t in times.items()}
    for v in ("fused", "eager"):
        if v in fns:
            res.peak_mb[v] = _peak_mb(fns[v], device, case.training)
    return res


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(results: list[ModelResult]) -> str:
    head = ["model", "what", "shape", "fused ms", "eager ms", "compile ms", "x vs eager", "x vs compile",
            "peak MB fused", "peak MB eager", "mem ratio"]
    rows = []
    for r in results:
        pf, pe = r.peak_mb.get("fused"), r.peak_mb.get("eager")
        rows.append([r.model, r.variant, "x".join(map(str, r.shape)), _fmt(r.ms.get("fused"), ".1f"),
                     _fmt(r.ms.get("eager"), ".1f"), _fmt(r.ms.get("compile"), ".1f"), _fmt(r.ratio(), ".2f"),
                     _fmt(r.ratio("compile"), ".2f"), _fmt(pf, ".1f"), _fmt(pe, ".1f"),
                     _fmt(pf / pe if pf and pe else None, ".2f")])
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i < 3 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def run_models(device: str | None = None, out: str = "bench-out", compile: bool = True, budget: float | None = None,
               progress: bool = True, full: bool = False, rounds: int = 3) -> list[ModelResult]:
    from .runner import machine_info
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gankern bench: --device cuda requested but PyTorch sees no CUDA device")
    budget = budget if budget is not None else (1.0 if dev.type == "cpu" else 0.3)
    variants = VARIANTS if compile else VARIANTS[:2]
    from tqdm.auto import tqdm
    results = []
    cases = collect(dev, full)
    for case in tqdm(cases, desc="gankern bench --models", unit="case", disable=not progress, file=sys.stderr):
        results.append(run_case(case, dev, variants, budget, rounds))
    info = machine_info(dev)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bench-models-{dev.type}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"machine": info, "results": [dict(asdict(r), x_vs_eager=r.ratio()) for r in results]},
                               indent=2))
    print(f"\ngankern {info['gankern']} models on {info.get('gpu', info['cpu'])} ({info['date'][:10]}), "
          f"{rounds} interleaved rounds\n")
    print(table(results))
    mem = "torch.cuda.max_memory_allocated" if dev.type == "cuda" else "bytes saved for backward (training steps)"
    print(f"\npeak memory: {mem}.  results: {path}")
    return results
