"""pytest-benchmark over gankern.bench.norm cases: gankern vs eager reference vs torch.compile.

    python -m pytest benchmarks/bench_norm.py --benchmark-only               # quick cases
    GANKERN_BENCH_ALL=1 python -m pytest benchmarks/bench_norm.py --benchmark-only   # every shape

Compare the three rows of a case in one run (same process, same machine state); ratios across runs
on a shared machine are noise.
"""
import os

import pytest
import torch

from gankern.bench import norm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = [c for c in norm.cases(DEVICE) if c.quick or os.environ.get("GANKERN_BENCH_ALL")]
_compiled = {}


def _impl(case, which):
    if which == "gankern":
        return case.gankern
    if which == "eager":
        return case.eager
    key = id(case)
    if key not in _compiled:
        _compiled[key] = torch.compile(case.compile or case.eager)
    return _compiled[key]


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("which", ["gankern", "eager", "compile", "clone"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c.variant} {'x'.join(map(str, c.shape))} {c.dtype}".replace(" ", "_")
                                             for c in CASES])
def test_norm(benchmark, case, which):
    inputs = case.setup()
    if which == "clone":  # copy bandwidth of the main tensor, the floor a fused pass aims for
        x = inputs[0].detach()
        fn = lambda: x.clone()  # noqa: E731
    else:
        f = _impl(case, which)
        fn = lambda: f(inputs)  # noqa: E731
    benchmark.extra_info.update(bytes=case.bytes, shape=case.shape, variant=case.variant)

    def run():
        fn()
        _sync()

    benchmark.pedantic(run, warmup_rounds=2, rounds=15, iterations=1)
