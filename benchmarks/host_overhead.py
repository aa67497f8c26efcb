"""Host (Python + dispatcher) cost per call of the fused ops models use, vs the eager torch equivalent.

    python benchmarks/host_overhead.py                         # CPU, automatic backend
    python benchmarks/host_overhead.py --device cuda           # on a GPU
    python benchmarks/host_overhead.py --backend triton        # force one backend (gankern.use_backend)

Inputs are tiny, so the kernels cost next to nothing and what is left is the host path around them:
on a GPU that is what a model's step waits on when it is host-bound. Per case and direction (fwd,
fwd+bwd) it prints microseconds per call (median of interleaved rounds; CPU: thread time of one
thread, so other processes' load does not count; CUDA: wall time with a synchronize per round),
the aten ops the call issues (profiler events named aten::*, top-level: those not inside another
aten op) and the kernels it launches: on CUDA the profiler's cuda*/cuLaunchKernel calls, on CPU the
gankern native entry points called (gankern._native.entry, counted by a wrapper).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import gankern  # noqa: E402
from gankern import _native  # noqa: E402


def cases(dev):
    """name -> (fused, eager, inputs needing grad): each a function of no argument returning a tensor."""
    r = lambda *s: torch.randn(*s, device=dev)  # noqa: E731
    x, w, b = r(2, 8, 4, 4), r(8), r(8)
    rm, rv = torch.zeros(8, device=dev), torch.ones(8, device=dev)
    temb, scale, shift = r(2, 8), r(2, 8), r(2, 8)
    sp = lambda t: t[:, :, None, None]  # noqa: E731
    xl, wl, bl, res = r(2, 16, 32), r(32), r(32), r(2, 16, 32)
    xg = r(2, 16, 64)
    return {
        "batch_norm_act train lrelu": (
            lambda: gankern.batch_norm_act(x, rm, rv, w, b, training=True, act="lrelu", alpha=0.2),
            lambda: F.leaky_relu(F.batch_norm(x, rm, rv, w, b, training=True), 0.2), (x, w, b)),
        "batch_norm_act eval relu": (
            lambda: gankern.batch_norm_act(x, rm, rv, w, b, training=False, act="relu"),
            lambda: F.relu(F.batch_norm(x, rm, rv, w, b, training=False)), (x, w, b)),
        "group_norm_act silu G=4": (
            lambda: gankern.group_norm_act(x, 4, w, b, act="silu"),
            lambda: F.silu(F.group_norm(x, 4, w, b)), (x, w, b)),
        "group_norm_act +temb,scale,shift": (
            lambda: gankern.group_norm_act(x, 4, w, b, act="silu", temb=temb, scale=scale, shift=shift),
            lambda: F.silu(F.group_norm(x + sp(temb), 4, w, b) * (1 + sp(scale)) + sp(shift)),
            (x, w, b, temb, scale, shift)),
        "bias_act lrelu": (
            lambda: gankern.bias_act(x, b, act="lrelu"),
            lambda: F.leaky_relu(x + b[None, :, None, None], 0.2) * math.sqrt(2), (x, b)),
        "layer_norm": (
            lambda: gankern.layer_norm(xl, wl, bl),
            lambda: F.layer_norm(xl, (32,), wl, bl), (xl, wl, bl)),
        "add_layer_norm": (
            lambda: gankern.add_layer_norm(xl, res, wl, bl)[0],
            lambda: F.layer_norm(xl + res, (32,), wl, bl), (xl, res, wl, bl)),
        "geglu": (
            lambda: gankern.geglu(xg),
            lambda: (lambda h, g: h * F.gelu(g))(*xg.chunk(2, -1)), (xg,)),
    }


def fwd_bwd(fn, inputs):
    """fn's forward and the gradients of every input needing one (the training step's pattern)."""
    def run():
        y = fn()
        return torch.autograd.grad(y, inputs, torch.ones_like(y))
    return run


class Counts:
    """aten ops and kernel launches of one call of fn."""

    def __init__(self, dev):
        self.dev, self.native = dev, 0
        entry = _native.entry

        def counting_entry(backend, name):  # gankern's native launches (they bypass the dispatcher)
            fn = entry(backend, name)

            def call(*a, **k):
                self.native += 1
                return fn(*a, **k)
            return call
        self._entry = entry
        self._counting = counting_entry

    def __call__(self, fn):
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                       if self.dev == "cuda" else [])
        self.native = 0
        _native.entry = self._counting
        sys.stderr.flush()
        stderr = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)  # the profiler logs start/stop lines there
        os.close(null)
        try:
            with torch.profiler.profile(activities=acts) as prof:
                fn()
        finally:
            os.dup2(stderr, 2)
            os.close(stderr)
            _native.entry = self._entry
        events = prof.events()
        aten = [e for e in events if e.name.startswith("aten::")
                and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))]
        launches = sum(1 for e in events if e.name in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx",
                                                       "cudaLaunchKernelExC"))
        return len(aten), launches if self.dev == "cuda" else self.native


def per_call_us(fn, n, dev):
    if dev == "cuda":
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n * 1e6
    t0 = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - t0) / n * 1e6


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--backend", default=None, choices=("reference", "triton", "cpu", "cuda"),
                   help="force one gankern backend")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=100, help="calls per round")
    p.add_argument("-k", default="", help="only cases whose name contains this")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: PyTorch sees no CUDA device")
    torch.set_num_threads(1)
    if _native.cpu is not None:
        _native.cpu.set_num_threads(1)
    count = Counts(a.device)
    print(f"device {a.device}, backend {a.backend or 'auto'}, torch {torch.__version__}; "
          "us/call (median of rounds) and aten ops / kernel launches per call")
    print(f"{'case':34s} {'pass':7s} {'fused us':>9s} {'eager us':>9s} {'ratio':>6s}   "
          f"{'fused ops/launch':>16s} {'eager ops/launch':>16s}")
    with gankern.use_backend(a.backend):
        for name, (fused, eager, inputs) in cases(a.device).items():
            if a.k not in name:
                continue
            for t in inputs:
                t.requires_grad_(False)
            for pass_ in ("fwd", "fwd+bwd"):
                if pass_ == "fwd+bwd":
                    for t in inputs:
                        t.requires_grad_(True)
                    f, e = fwd_bwd(fused, inputs), fwd_bwd(eager, inputs)
                else:
                    f, e = fused, eager
                for fn in (f, e):
                    for _ in range(3):
                        fn()  # warm up (caches, Triton compiles)
                tf, te = [], []
                for _ in range(a.rounds):
                    tf.append(per_call_us(f, a.calls, a.device))
                    te.append(per_call_us(e, a.calls, a.device))
                mf, me = statistics.median(tf), statistics.median(te)
                (of, lf), (oe, le) = count(f), count(e)
                print(f"{name:34s} {pass_:7s} {mf:9.1f} {me:9.1f} {mf / me:6.1f}   {of:>10d} / {lf:<3d} "
                      f"{oe:>10d} / {le:<3d}", flush=True)
            for t in inputs:
                t.requires_grad_(False)


if __name__ == "__main__":
    main()
