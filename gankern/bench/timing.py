"""Timing primitives: medians of many runs, device-synchronized, warm, contenders interleaved."""
from __future__ import annotations

import resource
import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def median_ms(fn: Callable[[], object], device: torch.device, budget_s: float = 0.5, min_reps: int = 5,
              max_reps: int = 200) -> float:
    """Median wall time of fn() in milliseconds (one contender; see `interleaved` for several)."""
    return interleaved({"fn": fn}, device, budget_s, min_reps, max_reps)["fn"].ms


class Timing:
    """Median ms of one contender, and (CPU) the page faults one call takes: a large fresh output
    costs one fault per 4 KiB page, or one per 2 MiB with huge pages, and on VMs those faults can
    be most of a memory-bound op's time, so the count explains many a surprising number."""

    def __init__(self, times_ms: list[float], faults: float | None):
        self.times_ms, self.faults = times_ms, faults

    @property
    def ms(self) -> float:
        return statistics.median(self.times_ms)


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, budget_s: float = 0.5,
                min_reps: int = 5, max_reps: int = 200, rounds: int = 5) -> dict[str, Timing]:
    """Times every contender in `fns` with its runs spread over `rounds` rounds, the contenders
    taking turns within each round (order rotated), so a change of machine load during the
    measurement hits every contender alike instead of whichever happened to run then.
    `budget_s` is per contender.

    GPU: CUDA events (triton.testing.do_bench per contender when triton is there; it also flushes
    L2 between runs). CPU: perf_counter around each call. Two warm-up calls run first, so
    compilation and allocator growth stay out of the numbers. The result of each call is dropped
    before the next starts, as in a user's loop.

    CPU: each contender's turn starts with one untimed call, so its timed calls run in the state
    a user's loop runs in: the memory its outputs take was freed a moment ago by its own previous
    call. Without it, the first call after the other contenders' turns (the eager ones take
    seconds) gets memory that sat free: on VMs with free page reporting (virtio-balloon, page
    order >= 9) the guest has handed those 2 MiB blocks back to the host, and faulting them in
    again costs ~2.3 ms per 2 MiB, 20x a recycled block (benchmarks/NOTES.md, "Issue #9 item 6
    closed out"): a 512 MiB output then takes 300-600 ms instead of ~30.
    """
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
            return {k: Timing([float(do_bench(f, warmup=int(budget_s * 250), rep=int(budget_s * 1000),
                                              return_mode="median"))], None) for k, f in fns.items()}
        except ImportError:
            pass
    reps = {}
    for k, fn in fns.items():
        fn()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        once = max(time.perf_counter() - t0, 1e-6)
        reps[k] = int(min(max_reps, max(min_reps, budget_s / once)))
    times: dict[str, list[float]] = {k: [] for k in fns}
    faults: dict[str, int] = {k: 0 for k in fns}
    names = list(fns)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            n = -(-reps[k] * (r + 1) // rounds) - -(-reps[k] * r // rounds)  # this round's share
            if device.type == "cpu" and len(fns) > 1:
                fns[k]()  # back to its own loop's memory (docstring)
            f0 = _minor_faults()
            for _ in range(n):
                if device.type == "cuda":
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    fns[k]()
                    end.record()
                    end.synchronize()
                    times[k].append(start.elapsed_time(end))
                else:
                    t0 = time.perf_counter()
                    fns[k]()
                    times[k].append((time.perf_counter() - t0) * 1e3)
            faults[k] += _minor_faults() - f0
    return {k: Timing(times[k], faults[k] / max(1, len(times[k])) if device.type == "cpu" else None)
            for k in fns}
