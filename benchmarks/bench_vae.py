"""pytest-benchmark over the vae family's cases (gankern/bench/vae.py): gankern vs eager vs
torch.compile vs a clone of the same bytes, one test per (case, implementation).

    python -m pytest benchmarks/bench_vae.py --benchmark-only           # pytest-benchmark table
    python benchmarks/bench_vae.py [--quick] [--runs N]                 # medians and ratios, one run

The second form is how docs/random.md's numbers were taken: every implementation of a case timed
in one process, interleaved, median of N runs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import pytest
import torch

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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the cases marked quick")
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args(argv)
    print(f"device={DEVICE} torch={torch.__version__} threads={torch.get_num_threads()} runs={args.runs} (median ms)")
    print(f"{'case':48s} {'gankern':>9s} {'eager':>9s} {'compile':>9s} {'clone':>9s} {'x eager':>8s} {'x compile':>9s}")
    for r in measure(args.quick, args.runs):
        print(f"{r['case']:48s} {r['gankern']:9.2f} {r['eager']:9.2f} {r['compile']:9.2f} {r['clone']:9.2f} "
              f"{r['vs_eager']:8.2f} {r['vs_compile']:9.2f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
