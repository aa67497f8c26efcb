"""Every `gankern bench` case on a GPU with each GPU backend forced in turn (triton, cuda), timed
against eager PyTorch with CUDA events (interleaved, medians): the data `PREFERRED` in
gankern/backends.py is filled from. One case that fails on one backend is recorded, never fatal.

    python benchmarks/gpu_backends.py [--full] [--ops bias_act,norm] [--budget 0.1] [--out DIR]

Prints one row per case and, last, the backend that wins the most cases of each dispatched op
(ties and near-ties within 3% go to the first, triton, the default, so PREFERRED only names real wins).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path

import torch

from gankern.backends import use_backend
from gankern.bench.runner import collect, format_table, machine_info
from gankern.bench.timing import interleaved



def forced(fn, name):
    def run(inputs):
        with use_backend(name):
            return fn(inputs)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--ops", default=None)
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backends", default="triton,cuda", help="the two backends compared")
    args = ap.parse_args()
    BACKENDS = tuple(args.backends.split(","))
    if len(BACKENDS) != 2:
        ap.error(f"--backends takes two comma-separated backends, got {args.backends!r}")
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        ap.error("PyTorch sees no CUDA device (this script is for a GPU machine; --device cpu with "
                 "--backends reference,cpu tries it on the CPU)")
    cases = collect(dev, args.ops.split(",") if args.ops else None, args.full)
    rows, head = [], ["op", "variant", "shape", "dtype", "eager ms"] + [f"{b} ms" for b in BACKENDS] + ["best", "x vs eager"]
    table = []
    t0 = time.time()
    for case in cases:
        row = dict(op=case.op, kernel=case.kernel or case.op, variant=case.variant, shape=list(case.shape),
                   dtype=str(case.dtype).replace("torch.", ""), bytes=case.bytes, errors={})
        try:
            inputs = case.setup()
            fns = {"eager": lambda: case.eager(inputs)}
            for b in BACKENDS:
                f = forced(case.gankern, b)
                try:
                    f(inputs)  # compiles / checks it runs; a failure is recorded, not timed
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    fns[b] = (lambda f=f: f(inputs))
                except Exception as e:  # noqa: BLE001 - recorded per backend
                    row["errors"][b] = f"{type(e).__name__}: {str(e)[:300]}"
            t = interleaved(fns, dev, args.budget)
            row.update({f"{k}_ms": v.ms for k, v in t.items()})
            del fns, inputs
        except Exception as e:  # noqa: BLE001
            row["errors"]["case"] = f"{type(e).__name__}: {str(e)[:300]}"
            traceback.print_exc(file=sys.stderr)
        timed = {b: row[f"{b}_ms"] for b in BACKENDS if f"{b}_ms" in row}
        best = min(timed, key=timed.get) if timed else None
        row["best"] = best
        rows.append(row)
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        eager = row.get("eager_ms")
        table.append([case.op, case.variant, "x".join(map(str, case.shape)), row["dtype"], fmt(eager)]
                     + [fmt(row.get(f"{b}_ms")) if b not in row["errors"] else "ERR" for b in BACKENDS]
                     + [best or "-", f"{eager / timed[best]:.2f}" if best and eager else "-"])
        print(f"[{time.time() - t0:6.1f}s] {' | '.join(map(str, table[-1]))}"
              + (f"  errors: {row['errors']}" if row["errors"] else ""), flush=True)

    # per dispatched op: cases won by each backend (within 3% counts for triton, the default)
    wins = defaultdict(lambda: defaultdict(int))
    ratio = defaultdict(list)
    for r in rows:
        if all(f"{b}_ms" in r for b in BACKENDS):
            tr, cu = (r[f"{b}_ms"] for b in BACKENDS)
            wins[r["kernel"]][BACKENDS[1] if cu < tr / 1.03 else BACKENDS[0]] += 1
            ratio[r["kernel"]].append(tr / cu)
    preferred = {}
    for op, w in sorted(wins.items()):
        g = math.exp(sum(map(math.log, ratio[op])) / len(ratio[op]))
        a, b = BACKENDS
        print(f"{op:24s} {a} wins {w[a]:2d}, {b} wins {w[b]:2d}; geomean {a}/{b} time {g:.2f}")
        if w[b] > w[a] and g > 1.03:
            preferred[op] = b
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"backends-{dev.type}.json").write_text(json.dumps(
        {"machine": machine_info(dev), "results": rows, "preferred": preferred}, indent=1))
    print()
    print(format_table(head, table, left=4))
    print(f"\nsuggested PREFERRED = {preferred}")


if __name__ == "__main__":
    main()
