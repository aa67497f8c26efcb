"""A model train step with gankern's eager fast path on and off, against the plain-torch model
(gankern/bench/models.py cases), interleaved in one process.

    python benchmarks/models_fastpath.py [quick|full|tiny] [case substring]

One thread (torch and gankern's pool), timed with time.thread_time: the whole step runs on the
calling thread, so other processes' load changes the figures little. Prints per-step ms (median
of rounds) and the ratios.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

torch.set_num_threads(1)
import gankern  # noqa: E402
from gankern import _op  # noqa: E402
from gankern.bench import models as M  # noqa: E402

if gankern._native.cpu is not None:
    gankern._native.cpu.set_num_threads(1)


def per_step_ms(fn, n):
    t0 = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - t0) / n * 1e3


def main():
    scale = sys.argv[1] if len(sys.argv) > 1 else "quick"
    which = sys.argv[2] if len(sys.argv) > 2 else "UNet train step"
    dev = torch.device("cpu")
    for case in M.gankern_models(dev, scale):
        if which not in case.what:
            continue
        fused, eager = case.build("fused"), case.build(case.baseline)
        for _ in range(2):
            fused(), eager()
        t = {"fused, fast path": [], "fused, custom ops": [], case.baseline: []}
        n = 3
        for _ in range(7):
            t[case.baseline].append(per_step_ms(eager, n))
            with _op.fast_path(False):
                t["fused, custom ops"].append(per_step_ms(fused, n))
            t["fused, fast path"].append(per_step_ms(fused, n))
        med = {k: sorted(v)[len(v) // 2] for k, v in t.items()}
        print(f"{case.model} {case.what} {case.shape}: " + "  ".join(f"{k} {v:.2f} ms" for k, v in med.items()))
        print(f"  eager/fused: fast path {med[case.baseline] / med['fused, fast path']:.3f}x, custom ops "
              f"{med[case.baseline] / med['fused, custom ops']:.3f}x; custom ops / fast path "
              f"{med['fused, custom ops'] / med['fused, fast path']:.3f}x")


if __name__ == "__main__":
    main()
