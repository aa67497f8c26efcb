"""Per-call host cost of small gankern calls, for the eager fast path (gankern/_op.py).

    python benchmarks/overhead_fastpath.py                      # this tree: fast path on vs off
    python benchmarks/overhead_fastpath.py --ab OTHER_TREE      # also: another checkout, in
                                                                # alternating subprocesses

One thread (torch and gankern's pool), so the kernels run on the calling thread and
`time.thread_time` counts the whole call but not time other processes take from it: the numbers
hold on a loaded machine. Each figure is the median of rounds; on/off rounds are interleaved.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# import this checkout's gankern (the script lives in <tree>/benchmarks/), or --ab's tree in the child
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.environ.get("GANKERN_TREE", HERE))


def cases():
    import torch
    import gankern
    from gankern.schedulers import DDIMScheduler

    out = {}
    for shape in [(2, 64, 2, 2), (16, 64, 8, 8)]:
        x, w, b = torch.randn(shape), torch.randn(64), torch.randn(64)
        out[f"group_norm_act fwd {shape} G=8"] = (lambda x=x, w=w, b=b: gankern.group_norm_act(x, 8, w, b), 400)
        xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
        go = torch.randn(shape)
        out[f"group_norm_act fwd+bwd {shape} G=8"] = (
            lambda xg=xg, wg=wg, bg=bg, go=go: torch.autograd.grad(gankern.group_norm_act(xg, 8, wg, bg), (xg, wg, bg),
                                                                   go), 150)
    for shape in [(2, 64, 2, 2), (16, 64, 16, 16)]:
        x, b = torch.randn(shape), torch.randn(64)
        out[f"bias_act lrelu {shape}"] = (lambda x=x, b=b: gankern.bias_act(x, b, act="lrelu"), 400)
    s = DDIMScheduler(num_train_timesteps=1000)
    s.set_timesteps(50)
    t = s.timesteps[10]
    for shape, n in (((1, 4, 8, 8), 300), ((8, 4, 64, 64), 30)):
        sample, mo = torch.randn(shape), torch.randn((2 * shape[0],) + shape[1:])
        out[f"DDIM step, guidance 7.5, rescale 0.7, {shape}"] = (
            lambda s=s, mo=mo, sample=sample: s.step(mo, t, sample, guidance_scale=7.5, guidance_rescale=0.7), n)
        out[f"DDIM step, no guidance, {shape}"] = (lambda s=s, mo=mo, sample=sample: s.step(mo[:sample.shape[0]], t,
                                                                                            sample), n)
    return out


def per_call_us(fn, n):
    t0 = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - t0) / n * 1e6


def measure(rounds: int, toggle: bool) -> dict:
    import torch
    torch.set_num_threads(1)
    import gankern
    if gankern._native.cpu is not None:
        gankern._native.cpu.set_num_threads(1)
    toggle = toggle and hasattr(gankern, "_op")
    res = {}
    for name, (fn, n) in cases().items():
        for _ in range(3):
            fn()
        on, off = [], []
        for _ in range(rounds):
            if toggle:
                with gankern._op.fast_path(False):
                    off.append(per_call_us(fn, n))
            on.append(per_call_us(fn, n))
        res[name] = (sorted(on)[len(on) // 2], sorted(off)[len(off) // 2] if off else float("nan"))
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ab", help="another checkout (with built modules) to compare with, in subprocesses")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--child", action="store_true")
    a = p.parse_args()
    if a.child:
        print(json.dumps(measure(a.rounds, toggle=False)))
        return
    res = measure(a.rounds, toggle=True)
    print(f"{'case':52s} {'fast':>9s} {'off':>9s} {'off/fast':>8s}")
    for k, (on, off) in res.items():
        print(f"{k:52s} {on:9.1f} {off:9.1f} {off / on:8.2f}")
    if a.ab:
        runs = {"this": [], "other": []}
        for _ in range(3):  # alternate the trees
            for tag, tree in (("other", os.path.abspath(a.ab)), ("this", HERE)):
                env = dict(os.environ, GANKERN_TREE=tree)
                outp = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--rounds",
                                       str(a.rounds)], env=env, cwd=tree, capture_output=True, text=True,
                                      check=True).stdout
                runs[tag].append(json.loads(outp.strip().splitlines()[-1]))
        print(f"\n{'case':52s} {'this':>9s} {'other':>9s} {'other/this':>10s}")
        for k in res:
            this = sorted(r[k][0] for r in runs["this"])[1]
            other = sorted(r[k][0] for r in runs["other"])[1]
            print(f"{k:52s} {this:9.1f} {other:9.1f} {other / this:10.2f}")


if __name__ == "__main__":
    main()
