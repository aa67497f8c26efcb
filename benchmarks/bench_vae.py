"""pytest-benchmark over the vae family's cases (gankern/bench/vae.py): gankern vs eager vs
torch.compile vs a clone of the same bytes, one test per (case, implementation).

    python -m pytest benchmarks/bench_vae.py --benchmark-only           # pytest-benchmark table
    python benchmarks/bench_vae.py [--quick] [--runs N]                 # medians and ratios, one run
    python benchmarks/bench_vae.py --targets [--runs N]                 # issue #4's CPU targets only

The last two are how docs/random.md's numbers were taken: every implementation timed in one
process, interleaved (so load changes hit them alike), median of N runs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import pytest
import torch

import gankern
from gankern.bench import vae as family

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = family.cases(DEVICE)
IMPLS = ("gankern", "eager", "compile", "clone")


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _callable(case, impl):
    inputs = case.setup()
    if impl == "gankern":
        fn = case.gankern
    elif impl == "eager":
        fn = case.eager
    elif impl == "compile":
        fn = torch.compile(case.compile or case.eager)
    else:  # clone of the bytes the op must move: reading inputs + writing outputs ~ 2 * clone(output)
        ref = torch.empty(case.bytes // 8, dtype=torch.float32, device=DEVICE)
        return lambda: ref.clone()
    return lambda: fn(inputs)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=[f"{c.variant}-{'x'.join(map(str, c.shape))}" for c in CASES])
def test_vae(benchmark, case, impl):
    f = _callable(case, impl)
    f()  # compile / warm up outside the timing

    def run():
        f()
        _sync()

    benchmark(run)


def measure(quick: bool, runs: int) -> list[dict]:
    rows = []
    for case in CASES:
        if quick and not case.quick:
            continue
        fns = {impl: _callable(case, impl) for impl in IMPLS}
        for f in fns.values():
            f()
            f()
        times = {impl: [] for impl in IMPLS}
        for _ in range(runs):  # interleaved, so load changes hit every implementation alike
            for impl, f in fns.items():
                t0 = time.perf_counter()
                f()
                _sync()
                times[impl].append(time.perf_counter() - t0)
        med = {impl: statistics.median(v) * 1e3 for impl, v in times.items()}
        rows.append(dict(case=f"{case.variant} {tuple(case.shape)}", **med,
                         vs_eager=med["eager"] / med["gankern"], vs_compile=med["compile"] / med["gankern"]))
    return rows


def targets(runs: int) -> None:
    """Issue #4's CPU targets: reparameterize_kl (4096, 1024) vs eager and torch.compile, and
    gankern.randn of 16M elements vs torch.randn, with clones of the same bytes."""
    torch.manual_seed(0)
    mu, lv = torch.randn(4096, 1024, device=DEVICE), torch.randn(4096, 1024, device=DEVICE) * 2
    x16 = torch.empty(1 << 24, device=DEVICE)
    comp = torch.compile(family.eager_reparameterize_kl)
    fns = {
        "reparameterize_kl gankern": lambda: gankern.reparameterize_kl(mu, lv, 1, 0),
        "reparameterize_kl eager": lambda: family.eager_reparameterize_kl(mu, lv),
        "reparameterize_kl compile": lambda: comp(mu, lv),
        "reparameterize_kl clone": lambda: mu.clone(),
        "randn 16M gankern": lambda: gankern.randn((4096, 4096), 1, device=DEVICE),
        "randn 16M torch.randn": lambda: torch.randn(4096, 4096, device=DEVICE),
        "randn 16M clone": lambda: x16.clone(),
    }
    for f in fns.values():
        f()
        f()
    times = {k: [] for k in fns}
    for _ in range(runs):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            _sync()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    for k in fns:
        print(f"{k:28s} median {med[k]:8.2f} ms   min {min(times[k]) * 1e3:8.2f} ms")
    g = med["reparameterize_kl gankern"]
    print(f"reparameterize_kl (4096, 1024): {med['reparameterize_kl eager'] / g:.2f}x eager (target 4), "
          f"{med['reparameterize_kl compile'] / g:.2f}x torch.compile (target 10)")
    print(f"randn 16M: {med['randn 16M torch.randn'] / med['randn 16M gankern']:.2f}x torch.randn (target 3)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the cases marked quick")
    ap.add_argument("--targets", action="store_true", help="only issue #4's CPU target comparisons")
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args(argv)
    print(f"device={DEVICE} torch={torch.__version__} threads={torch.get_num_threads()} runs={args.runs} (median ms)")
    if args.targets:
        targets(args.runs)
        return
    print(f"{'case':48s} {'gankern':>9s} {'eager':>9s} {'compile':>9s} {'clone':>9s} {'x eager':>8s} {'x compile':>9s}")
    for r in measure(args.quick, args.runs):
        print(f"{r['case']:48s} {r['gankern']:9.2f} {r['eager']:9.2f} {r['compile']:9.2f} {r['clone']:9.2f} "
              f"{r['vs_eager']:8.2f} {r['vs_compile']:9.2f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
