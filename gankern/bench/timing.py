"""Timing primitives: medians of many runs, device-synchronized, warm."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, budget_s: float = 0.5, min_reps: int = 5,
              max_reps: int = 200) -> float:
    """Median wall time of fn() in milliseconds.

    GPU: CUDA events through triton.testing.do_bench when triton is there (it also flushes L2
    between runs), else CUDA events by hand. CPU: perf_counter around each call. Warm-up calls run
    first so compilation and allocator growth stay out of the numbers.
    """
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
            return float(do_bench(fn, warmup=int(budget_s * 250), rep=int(budget_s * 1000), return_mode="median"))
        except ImportError:
            pass
    fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    once = max(time.perf_counter() - t0, 1e-6)
    reps = int(min(max_reps, max(min_reps, budget_s / once)))
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
