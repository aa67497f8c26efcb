"""`gankern bench --models`: the cases build, run and report (timings are never asserted)."""
import torch

from gankern.bench import models as BM


def test_cases_collect_and_one_runs():
    cases = BM.collect(torch.device("cpu"), full=False)
    names = {(c.model, c.variant) for c in cases}
    assert ("dcgan", "train step (G + D)") in names and ("ddpm", "UNet train step") in names
    decode = next(c for c in cases if c.variant == "decode")
    r = BM.run_case(decode, torch.device("cpu"), ("fused", "eager"), budget=0.01, rounds=1)
    assert set(r.ms) == {"fused", "eager"} and r.ratio() > 0
    assert "decode" in BM.table([r])


def test_saved_bytes_counts_activations():
    x = torch.randn(64, 64, requires_grad=True)
    assert BM._saved_bytes(lambda: (x * x).sum()) >= 64 * 64 * 4
