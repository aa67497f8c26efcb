"""Runs benchmark cases, prints the comparison table, writes JSON and a PNG chart."""
from __future__ import annotations

import datetime as _dt
import gc
import importlib
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import FAMILIES
from .case import Case
from .timing import interleaved, median_ms


@dataclass
class Result:
    op: str
    variant: str
    shape: list
    dtype: str
    backend: str
    gankern_ms: float
    eager_ms: float | None
    compile_ms: float | None
    copy_ms: float
    bytes: int
    note: str = ""
    spec_ms: float | None = None      # gankern's reference specification run eagerly (not a baseline)
    fresh_ms: float | None = None     # the gankern call timed alone in a fresh process (--standalone)
    faults_per_call: float | None = None  # CPU page faults per gankern call (4 KiB or 2 MiB pages)

    @property
    def vs_eager(self):
        return self.eager_ms / self.gankern_ms if self.eager_ms else None

    @property
    def vs_compile(self):
        return self.compile_ms / self.gankern_ms if self.compile_ms else None

    @property
    def copy_fraction(self):
        """Achieved bytes/s over the bytes/s of a clone moving the same number of bytes."""
        return self.copy_ms / self.gankern_ms


def collect(device: torch.device, ops: list[str] | None, full: bool) -> list[Case]:
    unknown = set(ops or []) - set(FAMILIES)
    if unknown:
        raise SystemExit(f"gankern bench: unknown op(s) {sorted(unknown)}; choose from {', '.join(FAMILIES)}")
    cases = []
    for fam in FAMILIES:
        if ops and fam not in ops:
            continue
        mod = importlib.import_module(f"gankern.bench.{fam}")
        for i, c in enumerate(mod.cases(device)):
            if full or c.quick:
                c.origin = (fam, i)  # how a fresh process finds the same case (gankern.bench.standalone)
                cases.append(c)
    return cases


def _copy_ms(nbytes: int, device: torch.device, budget: float) -> float:
    """A clone of nbytes/2 bytes moves nbytes (read + write): the bandwidth yardstick."""
    src = torch.empty(max(1, nbytes // 8), dtype=torch.float32, device=device).normal_()
    return median_ms(lambda: src.clone(), device, budget)


def run_case(case: Case, device: torch.device, *, compile: bool, budget: float, standalone: bool = False) -> Result:
    """Times gankern, the eager baseline, torch.compile of it and the reference spec, interleaved."""
    from ..backends import _REGISTRY, which
    inputs = case.setup()
    note = case.notes
    fns = {"gankern": lambda: case.gankern(inputs), "eager": lambda: case.eager(inputs)}
    if case.spec is not None:
        fns["spec"] = lambda: case.spec(inputs)
    if compile:
        try:
            torch._dynamo.reset()
            compiled = torch.compile(case.compile or case.eager)
            compiled(inputs)  # compiles here, so a failure is reported, not fatal
            fns["compile"] = lambda: compiled(inputs)
        except Exception as e:
            note = (note + "; " if note else "") + f"torch.compile failed: {type(e).__name__}"
    t = interleaved(fns, device, budget)
    # nothing of this case stays alive into the next one (inputs, outputs, compiled graphs)
    del fns, inputs
    torch._dynamo.reset()
    gc.collect()
    fresh = fresh_process_ms(case, device, budget) if standalone and hasattr(case, "origin") else None
    kernel = case.kernel or case.op
    backend = which(kernel, torch.empty(0, device=device, dtype=case.dtype)) if kernel in _REGISTRY else "-"
    get = lambda k: t[k].ms if k in t else None  # noqa: E731
    return Result(case.op, case.variant, list(case.shape), str(case.dtype).replace("torch.", ""), backend,
                  t["gankern"].ms, get("eager"), get("compile"), _copy_ms(case.bytes, device, budget), case.bytes,
                  note, spec_ms=get("spec"), fresh_ms=fresh, faults_per_call=t["gankern"].faults)


def fresh_process_ms(case: Case, device: torch.device, budget: float) -> float | None:
    """The same gankern call, timed the same way, in a new Python process that does nothing else:
    what a user's script gets. The bench must agree with it (benchmarks/NOTES.md)."""
    fam, idx = case.origin
    cmd = [sys.executable, "-m", "gankern.bench.standalone", fam, str(idx), "--device", str(device),
           "--budget", str(budget)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600)
        return json.loads(out.stdout.strip().splitlines()[-1])["ms"]
    except (subprocess.SubprocessError, ValueError, KeyError, IndexError) as e:
        print(f"gankern bench: fresh-process timing of {case.label} failed: {e}", file=sys.stderr)
        return None


def machine_info(device: torch.device) -> dict:
    import gankern
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "gankern": gankern.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "cpu": _cpu_name(), "cpu_threads": torch.get_num_threads(),
        "device": str(device),
    }
    from .. import _native
    if device.type == "cpu" and _native.cpu is not None:
        info["cpu_clone"] = _native.cpu.cpu_clone()
        info["huge_pages"] = _native.cpu.huge_pages()
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    capability=f"{p.major}.{p.minor}")
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(results: list[Result]) -> str:
    head = ["op", "variant", "shape", "dtype", "backend", "median ms", "eager ms", "compile ms",
            "x vs eager", "x vs compile", "% copy bw", "spec ms"]
    fresh = any(r.fresh_ms is not None for r in results)
    if fresh:
        head.append("fresh-process ms")
    rows = [[r.op, r.variant, "x".join(map(str, r.shape)), r.dtype, r.backend, _fmt(r.gankern_ms, ".3f"),
             _fmt(r.eager_ms, ".3f"), _fmt(r.compile_ms, ".3f"), _fmt(r.vs_eager, ".2f"),
             _fmt(r.vs_compile, ".2f"), _fmt(100 * r.copy_fraction, ".0f"), _fmt(r.spec_ms, ".3f")]
            + ([_fmt(r.fresh_ms, ".3f")] if fresh else []) for r in results]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i < 5 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def chart(results: list[Result], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"{r.op} {r.variant}\n{'x'.join(map(str, r.shape))} {r.dtype}" for r in results]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(results) + 1.5))
    ys = range(len(results))
    ax.barh([y + 0.2 for y in ys], [r.vs_eager or 0 for r in results], height=0.4, label="vs eager PyTorch")
    ax.barh([y - 0.2 for y in ys], [r.vs_compile or 0 for r in results], height=0.4, label="vs torch.compile")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(list(ys), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up of gankern (x, higher is better)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(device: str | None = None, ops: list[str] | None = None, out: str = "bench-out", full: bool = False,
        compile: bool = True, budget: float | None = None, progress: bool = True,
        standalone: bool = False) -> list[Result]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gankern bench: --device cuda requested but PyTorch sees no CUDA device")
    budget = budget if budget is not None else (0.4 if dev.type == "cpu" else 0.2)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < float("inf"):
        raise ValueError(f"budget must be a finite number of seconds > 0, got {budget!r}")
    cases = collect(dev, ops, full)
    if not cases:
        raise SystemExit("gankern bench: no cases selected")
    from tqdm.auto import tqdm
    results = []
    bar = tqdm(cases, desc="gankern bench", unit="case", disable=not progress, file=sys.stderr)
    for case in bar:
        bar.set_postfix_str(f"{case.label} {'x'.join(map(str, case.shape))}")
        results.append(run_case(case, dev, compile=compile, budget=budget, standalone=standalone))
    info = machine_info(dev)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = out_dir / f"bench-{dev.type}-{stamp}"
    rows = [dict(asdict(r), vs_eager=r.vs_eager, vs_compile=r.vs_compile, copy_fraction=r.copy_fraction)
            for r in results]
    base.with_suffix(".json").write_text(json.dumps({"machine": info, "results": rows}, indent=2))
    title = f"gankern {info['gankern']} on {info.get('gpu', info['cpu'])} ({info['date'][:10]})"
    chart(results, base.with_suffix(".png"), title)
    print(f"\n{title}\n")
    print(table(results))
    print(f"\nmedians of repeated runs, contenders interleaved; '% copy bw' = achieved bytes/s over a clone of "
          f"the same bytes;\neager = what users run (native torch ops, diffusers, StyleGAN's reference code); "
          f"spec = gankern's reference specification run eagerly.\n"
          f"results: {base.with_suffix('.json')}\nchart:   {base.with_suffix('.png')}")
    return results


if __name__ == "__main__":  # pragma: no cover
    run(os.environ.get("GANKERN_BENCH_DEVICE"))
