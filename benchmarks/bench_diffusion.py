"""pytest-benchmark over gankern.bench.diffusion's cases: each timed as gankern, eager (diffusers'
step + eager guidance) and torch.compile of the reference step.

    pytest benchmarks/bench_diffusion.py --benchmark-only --benchmark-group-by=param:case
"""
import pytest
import torch

from gankern.bench.diffusion import cases

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = cases(DEVICE)
IDS = [f"{c.variant}-{'x'.join(map(str, c.shape))}" for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("impl", ["gankern", "eager", "compile"])
def test_diffusion(benchmark, case, impl):
    a = case.setup()
    fn = {"gankern": case.gankern, "eager": case.eager}.get(impl)
    if fn is None:
        fn = torch.compile(case.compile or case.eager)
    fn(a)  # warm-up (compilation, allocator)
    if DEVICE.type == "cuda":
        def run():
            fn(a)
            torch.cuda.synchronize()
        benchmark(run)
    else:
        benchmark(fn, a)
