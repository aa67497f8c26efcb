"""pytest-benchmark over the same cases `gankern bench` runs (gankern/bench/<family>.py).

    pytest benchmarks/ --benchmark-only                 # every case, CPU (or CUDA if present)
    pytest benchmarks/bench_bias_act.py -k "fwd and gankern" --benchmark-json out.json

Each case is timed three ways (gankern, eager, compile); compare them with pytest-benchmark's
table or `--benchmark-group-by=param:case`.
"""
import importlib

import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
IMPLS = ("gankern", "eager", "compile")


def family_cases(family: str):
    mod = importlib.import_module(f"gankern.bench.{family}")
    return mod.cases(DEVICE)


def parametrize_cases(family: str):
    cases = family_cases(family)
    ids = [f"{c.variant}-{'x'.join(map(str, c.shape))}-{str(c.dtype).replace('torch.', '')}" for c in cases]
    return pytest.mark.parametrize("case", cases, ids=ids)


@pytest.fixture(params=IMPLS)
def impl(request):
    return request.param


def run_case(benchmark, case, impl):
    inputs = case.setup()
    fn = {"gankern": case.gankern, "eager": case.eager}.get(impl)
    if fn is None:
        torch._dynamo.reset()
        fn = torch.compile(case.compile or case.eager)
        fn(inputs)  # compile outside the timed region

    def call():
        fn(inputs)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    benchmark.extra_info.update(bytes=case.bytes, shape=list(case.shape), dtype=str(case.dtype))
    benchmark.pedantic(call, warmup_rounds=1, rounds=5, iterations=1)
