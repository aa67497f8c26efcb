"""The CPU targets of issue #3, measured in one process: group_norm_act silu on (4, 256, 64, 64)
fp32, NCHW and channels_last, forward and forward+backward, against the eager reference, torch.compile
of the reference, torch's own F.group_norm + F.silu, and a clone of x (copy bandwidth).

    python benchmarks/norm_cpu_targets.py [--runs 50]     (gankern importable: installed, or PYTHONPATH=.)

Reports median and minimum in ms; ratios are of medians. Targets: NCHW fwd >= 5x eager and
>= 1.3x compile; channels_last fwd >= 1.5x eager and >= 1.5x compile; fwd+bwd >= 3x eager.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import gankern
from gankern.reference import norm as ref

SHAPE, G = (4, 256, 64, 64), 32


def timeit(fn, runs):
    for _ in range(3):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3, min(ts) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None, help="torch and gankern thread count")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        if gankern._native.cpu is not None:
            gankern._native.cpu.set_num_threads(args.threads)
    torch.manual_seed(0)
    w, b = torch.randn(SHAPE[1]), torch.randn(SHAPE[1])

    def spec(x, w, b):
        return ref.group_norm_act(x, G, w, b, 1e-5, "silu", 0.0, None, None, None, None)[0]

    def ours(x, w, b):
        return gankern.group_norm_act(x, G, w, b, act="silu")

    def torch_native(x, w, b):
        return F.silu(F.group_norm(x, G, w, b))

    compiled = torch.compile(spec)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, shape {SHAPE} fp32, median/min ms")
    for cl in (False, True):
        x = torch.randn(SHAPE)
        if cl:
            x = x.to(memory_format=torch.channels_last)
        lay = "channels_last" if cl else "NCHW"
        for mode in ("fwd", "fwd+bwd"):
            if mode == "fwd":
                fns = {k: (lambda f=f: f(x, w, b)) for k, f in
                       [("eager", spec), ("compile", compiled), ("torch F", torch_native), ("gankern", ours)]}
            else:
                xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
                dy = torch.randn_like(x)
                fns = {k: (lambda f=f: torch.autograd.grad(f(xg, wg, bg), (xg, wg, bg), dy)) for k, f in
                       [("eager", spec), ("compile", compiled), ("torch F", torch_native), ("gankern", ours)]}
            fns["clone"] = lambda: x.clone()
            res = {k: timeit(f, args.runs) for k, f in fns.items()}
            g = res["gankern"][0]
            row = "  ".join(f"{k}={m:.3f}/{mn:.3f}" for k, (m, mn) in res.items())
            print(f"{lay:13s} {mode:8s} {row}  | eager/ours={res['eager'][0] / g:.2f}x "
                  f"compile/ours={res['compile'][0] / g:.2f}x torchF/ours={res['torch F'][0] / g:.2f}x "
                  f"ours/clone={g / res['clone'][0]:.2f}")


if __name__ == "__main__":
    main()
