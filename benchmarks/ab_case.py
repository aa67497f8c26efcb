"""One `gankern bench` case timed in fresh processes, alternating two source trees (A/B).

    python benchmarks/ab_case.py --trees ../base . --op bias_act --case "fwd+bwd NCHW" \
        --shape 16x512x128x128 [--dtype float32] [--rounds 3] [--calls 15] [--threads N]

Why: `gankern bench --full` runs every case in one process, one after another, so a case's time
depends on what ran before it (the allocator's free lists, transparent huge pages available or
being compacted). A case that compare_runs.py flags as slower in every run of a sitting may be
that state, not the code; here each measurement is a fresh process that runs only that case (the
tree's own gankern, its compiled modules included), trees alternated, so a real difference shows
in every round and a state effect does not. Prints each process's median and min (ms) and the
ratio of the trees' medians (A / B: > 1 means B is faster).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

_CHILD = r"""
import importlib, os, statistics, sys, time
tree, op, variant, shape, dtype, calls = sys.argv[1:7]
sys.path.insert(0, tree)
import torch
if os.environ.get("AB_THREADS"):
    torch.set_num_threads(int(os.environ["AB_THREADS"]))
mod = importlib.import_module(f"gankern.bench.{op}")
shape = [int(s) for s in shape.split("x")]
found = [c for c in mod.cases(torch.device("cpu"))
         if variant in c.variant and list(c.shape) == shape and c.dtype == getattr(torch, dtype)]
if not found:
    sys.exit(f"no {op} case matches {variant!r} {shape} {dtype}")
case = found[0]
args = case.setup()
run = lambda: case.gankern(args)
run(); run()
ts = []
for _ in range(int(calls)):
    t0 = time.perf_counter(); y = run(); ts.append(time.perf_counter() - t0); del y
print(case.variant, statistics.median(ts) * 1e3, min(ts) * 1e3)
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trees", nargs=2, required=True, metavar=("A", "B"), help="two gankern source trees, built")
    p.add_argument("--op", required=True, help="a bench family: bias_act, norm, vae, diffusion, ...")
    p.add_argument("--case", required=True, help="a substring of the case's variant, e.g. 'fwd+bwd NCHW'")
    p.add_argument("--shape", required=True, help="the case's shape, e.g. 16x512x128x128")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--rounds", type=int, default=3, help="A then B, this many times")
    p.add_argument("--calls", type=int, default=15, help="timed calls per process (after 2 warm-up calls)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in the children")
    a = p.parse_args(argv)
    trees = [os.path.abspath(t) for t in a.trees]
    for t in trees:
        if not os.path.isdir(os.path.join(t, "gankern")):
            print(f"ab_case: {t} is not a gankern source tree (no gankern/ folder)", file=sys.stderr)
            return 2
    env = dict(os.environ, **({"AB_THREADS": str(a.threads)} if a.threads else {}))
    medians = {t: [] for t in trees}
    for r in range(a.rounds):
        for t in trees:
            res = subprocess.run([sys.executable, "-c", _CHILD, t, a.op, a.case, a.shape, a.dtype, str(a.calls)],
                                 cwd=t, env=env, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"ab_case: the run in {t} failed:\n{res.stderr.strip()[-2000:]}", file=sys.stderr)
                return 1
            variant, med, lo = res.stdout.strip().rsplit(" ", 2)
            medians[t].append(float(med))
            print(f"round {r + 1} {os.path.basename(t) or t:>12s}  {variant}  median {float(med):9.3f} ms  "
                  f"min {float(lo):9.3f} ms", flush=True)
    ma, mb = (statistics.median(medians[t]) for t in trees)
    print(f"median of medians: A {ma:.3f} ms, B {mb:.3f} ms, A / B = {ma / mb:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
