"""Runs benchmark cases, prints the comparison table, writes JSON and a PNG chart."""
from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import FAMILIES
from .case import Case
from .timing import median_ms


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
        cases += [c for c in mod.cases(device) if full or c.quick]
    return cases


def _copy_ms(nbytes: int, device: torch.device, budget: float) -> float:
    """A clone of nbytes/2 bytes moves nbytes (read + write): the bandwidth yardstick."""
    src = torch.empty(max(1, nbytes // 8), dtype=torch.float32, device=device).normal_()
    return median_ms(lambda: src.clone(), device, budget)


def run_case(case: Case, device: torch.device, *, compile: bool, budget: float) -> Result:
    from ..backends import _REGISTRY, which
    inputs = case.setup()
    note = case.notes
    t_gk = median_ms(lambda: case.gankern(inputs), device, budget)
    t_eager = median_ms(lambda: case.eager(inputs), device, budget)
    t_comp = None
    if compile:
        try:
            torch._dynamo.reset()
            compiled = torch.compile(case.compile or case.eager)
            t_comp = median_ms(lambda: compiled(inputs), device, budget)
        except Exception as e:  # a baseline that fails to compile is reported, not fatal
            note = (note + "; " if note else "") + f"torch.compile failed: {type(e).__name__}"
    kernel = case.kernel or case.op
    backend = which(kernel, torch.empty(0, device=device, dtype=case.dtype)) if kernel in _REGISTRY else "-"
    return Result(case.op, case.variant, list(case.shape), str(case.dtype).replace("torch.", ""), backend,
                  t_gk, t_eager, t_comp, _copy_ms(case.bytes, device, budget), case.bytes, note)


def machine_info(device: torch.device) -> dict:
    import gankern
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "gankern": gankern.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "cpu": _cpu_name(), "cpu_threads": torch.get_num_threads(),
        "device": str(device),
    }
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
            "x vs eager", "x vs compile", "% copy bw"]
    rows = [[r.op, r.variant, "x".join(map(str, r.shape)), r.dtype, r.backend, _fmt(r.gankern_ms, ".3f"),
             _fmt(r.eager_ms, ".3f"), _fmt(r.compile_ms, ".3f"), _fmt(r.vs_eager, ".2f"),
             _fmt(r.vs_compile, ".2f"), _fmt(100 * r.copy_fraction, ".0f")] for r in results]
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
        compile: bool = True, budget: float | None = None, progress: bool = True) -> list[Result]:
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
        results.append(run_case(case, dev, compile=compile, budget=budget))
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
    print(f"\nmedians of repeated runs; '% copy bw' = achieved bytes/s over a clone of the same bytes.\n"
          f"results: {base.with_suffix('.json')}\nchart:   {base.with_suffix('.png')}")
    return results


if __name__ == "__main__":  # pragma: no cover
    run(os.environ.get("GANKERN_BENCH_DEVICE"))
