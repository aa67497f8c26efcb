"""One-thread CPU kernel times fp32 / bf16 / fp16 at the bench shapes, and gankern bf16 vs eager torch bf16.

    PYTHONPATH=. python benchmarks/cpu_half_ratios.py [--base OTHER/_C.so] [family ...]
    (families: geglu layer_norm upfirdn2d filtered_lrelu; default all)

Kernel only: each op is called once through its public function to record the native call it makes
(`_native.entry`: pass name and fields), then that call is replayed with the same, already
faulted-in output tensors, so page faults of fresh outputs and Python dispatch are left out.
`--base` loads a second build of gankern._C (e.g. of the commit before a change) and replays the
same calls on it, for before/after ratios in one process. Contenders are interleaved in rounds and
timed with time.thread_time (CPU time of this thread: other processes on shared cores disturb it
less than wall time); quote ratios, not absolute times. "eager bf16" is native torch on bf16
tensors (what a user runs), with fresh outputs as torch allocates them.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import torch

torch.set_num_threads(1)  # before gankern: its thread pool follows torch's count at import

import torch.nn.functional as F  # noqa: E402

import gankern  # noqa: E402
from gankern import _native  # noqa: E402
from gankern.bench.filtered_lrelu import CLAMP, PAD  # noqa: E402
from gankern.bench.transformer import LEVELS  # noqa: E402
from gankern.bench.upfirdn2d import eager_upfirdn2d  # noqa: E402
from gankern.ops.filtered_lrelu import filtered_lrelu  # noqa: E402
from gankern.ops.upfirdn2d import setup_filter, upfirdn2d  # noqa: E402
from gankern.reference.filtered_lrelu import filtered_lrelu as ref_filtered_lrelu  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ops = torch.ops.gankern
MODULES = {"": gankern._C}


def record(call):
    """The native calls `call()` makes on the cpu backend: [(family, pass, fields)]."""
    calls, real = [], _native.entry

    def recording(backend, name):
        fn = real(backend, name)

        def run(device_of, **fields):
            calls.append((*name.split("."), fields))
            return fn(device_of, **fields)
        return run
    _native.entry = recording
    try:
        call()
    finally:
        _native.entry = real
    return calls


def replay(module, calls):
    bound = [(getattr(getattr(module, fam), pas), [0] + [fields[k] for k in getattr(module, fam).FIELDS[pas]])
             for fam, pas, fields in calls]

    def run():
        for fn, args in bound:
            fn(*args)
    return run


def interleaved(fns: dict, rounds: int) -> dict:
    for fn in fns.values():  # warm up
        fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.thread_time()
            fn()
            times[k].append(time.thread_time() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def report(name: str, calls_of: dict, eager, rounds: int) -> None:
    """calls_of: dtype name -> a public call (recorded once, replayed); eager: a bf16 torch call or None."""
    fns = {}
    for d, call in calls_of.items():
        calls = record(call)
        for tag, module in MODULES.items():
            fns[f"{tag}{d}"] = replay(module, calls)
    if eager is not None:
        fns["eager bf16"] = eager
    ms = interleaved(fns, rounds)
    parts = [f"{k} {v:.2f}" for k, v in ms.items()]
    ratios = []
    for tag in MODULES:
        ratios += [f"{tag}fp32/{tag}{d} {ms[tag + 'fp32'] / ms[tag + d]:.2f}x" for d in ("bf16", "fp16")]
    if "base " in MODULES:
        ratios += [f"base/new {d} {ms['base ' + d] / ms[d]:.2f}x" for d in DTYPES]
    if eager is not None:
        ratios.append(f"eager bf16/bf16 {ms['eager bf16'] / ms['bf16']:.2f}x")
    print(f"{name} [ms]: " + ", ".join(parts) + "\n    " + ", ".join(ratios), flush=True)


def geglu_cases(rounds):
    rows, D = LEVELS[0]
    xs = {k: torch.randn(rows, 8 * D, dtype=d) for k, d in DTYPES.items()}
    dys = {k: torch.randn(rows, 4 * D, dtype=d) for k, d in DTYPES.items()}

    def eager_fwd():
        h, g = xs["bf16"].chunk(2, dim=-1)
        return h * F.gelu(g)

    def eager_bwd():  # what autograd runs for the backward of hidden * gelu(gate)
        h, g = xs["bf16"].chunk(2, dim=-1)
        return torch.cat([dys["bf16"] * F.gelu(g), torch.ops.aten.gelu_backward(dys["bf16"] * h, g)], dim=-1)
    report(f"geglu fwd ({rows}, {8 * D})", {k: (lambda k=k: ops.geglu(xs[k], "none")) for k in DTYPES}, eager_fwd,
           rounds)
    report(f"geglu bwd ({rows}, {8 * D})", {k: (lambda k=k: ops.geglu_backward(dys[k], xs[k], "none"))
                                            for k in DTYPES}, eager_bwd, rounds)


def layer_norm_cases(rounds):
    rows, D = LEVELS[0]
    w, b = torch.rand(D), torch.randn(D)
    wb, bb = w.bfloat16(), b.bfloat16()
    a = {k: torch.randn(rows, D, dtype=d) for k, d in DTYPES.items()}
    r = {k: torch.randn(rows, D, dtype=d) for k, d in DTYPES.items()}

    def eager_add():
        h = a["bf16"] + r["bf16"]
        return F.layer_norm(h, (D,), wb, bb), h
    report(f"add+layer_norm fwd ({rows}, {D})", {k: (lambda k=k: ops.layer_norm(a[k], r[k], w, b, 1e-5))
                                                 for k in DTYPES}, eager_add, rounds)
    report(f"layer_norm fwd ({rows}, {D})", {k: (lambda k=k: ops.layer_norm(a[k], None, w, b, 1e-5)) for k in DTYPES},
           lambda: F.layer_norm(a["bf16"], (D,), wb, bb), rounds)
    saved = {k: ops.layer_norm(a[k], r[k], w, b, 1e-5) for k in DTYPES}
    mean, rstd = torch.ops.aten.native_layer_norm(a["bf16"], (D,), wb, bb, 1e-5)[1:]

    def eager_bwd():  # LayerNorm backward plus the residual gradient added, as autograd runs it
        dx, dw, db = torch.ops.aten.native_layer_norm_backward(r["bf16"], a["bf16"], (D,), mean, rstd, wb, bb,
                                                               [True, True, True])
        return dx + r["bf16"], dw, db
    report(f"add+layer_norm bwd ({rows}, {D})",
           {k: (lambda k=k: ops.layer_norm_backward(r[k], r[k], saved[k][1], saved[k][2], saved[k][3], w))
            for k in DTYPES}, eager_bwd, rounds)


def upfirdn2d_cases(rounds):
    shape = (16, 512, 32, 32)
    f = setup_filter([1, 3, 3, 1])
    for kind, up, down, pad in [("up=2", 2, 1, [2, 1, 2, 1]), ("down=2", 1, 2, [1, 1, 1, 1])]:
        for cl in (False, True):
            fmt = torch.channels_last if cl else torch.contiguous_format
            xs = {k: torch.randn(shape, dtype=d).contiguous(memory_format=fmt) for k, d in DTYPES.items()}
            report(f"upfirdn2d {kind} {'NHWC' if cl else 'NCHW'} {shape}",
                   {k: (lambda k=k: upfirdn2d(xs[k], f, up=up, down=down, padding=pad, gain=up * up)) for k in DTYPES},
                   lambda: eager_upfirdn2d(xs["bf16"], f * (up * up), up, down, pad), rounds)


def filtered_lrelu_cases(rounds):
    shape = (16, 512, 36, 36)
    f = setup_filter(torch.hann_window(12, periodic=False, dtype=torch.float64).float() + 0.05)
    xs = {k: torch.randn(shape, dtype=d) for k, d in DTYPES.items()}
    bs = {k: torch.randn(shape[1], dtype=d) for k, d in DTYPES.items()}
    # eager (StyleGAN3's reference formulation) takes ~7 s a call on one thread: timed once
    t0 = time.thread_time()
    ref_filtered_lrelu(xs["bf16"], f, f, bs["bf16"], 2, 2, 2, 2, *PAD, 2 ** 0.5, 0.2, CLAMP, False)
    print(f"filtered_lrelu eager bf16, one call: {(time.thread_time() - t0) * 1e3:.0f} ms")
    report(f"filtered_lrelu up2 down2 12-tap fwd {shape}",
           {k: (lambda k=k: filtered_lrelu(xs[k], f, f, bs[k], up=2, down=2, padding=PAD, clamp=CLAMP))
            for k in DTYPES}, None, rounds)


FAMILIES = {"geglu": (geglu_cases, 15), "layer_norm": (layer_norm_cases, 31), "upfirdn2d": (upfirdn2d_cases, 9),
            "filtered_lrelu": (filtered_lrelu_cases, 3)}


def load_module(path):
    spec = importlib.util.spec_from_file_location("gankern_base._C", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.set_num_threads(1)
    module.set_dtype_codes(_native.DTYPE_CODES)  # as _native does for its modules
    return module


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", help="another build of gankern._C to compare with")
    ap.add_argument("families", nargs="*", default=list(FAMILIES))
    args = ap.parse_args()
    if args.base:
        MODULES["base "] = load_module(args.base)
    print(f"gankern._C clone: {gankern._C.cpu_clone()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    with torch.no_grad():
        for name in args.families:
            fn, rounds = FAMILIES[name]
            fn(rounds)
