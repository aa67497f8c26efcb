"""`gankern bench --models`: every suite's cases build, run and report at the tiny scale, and the
variants of a case compute the same output (timings are never asserted)."""
import pytest
import torch

from gankern.bench import models as BM

CPU = torch.device("cpu")
TINY = BM.collect(CPU, "tiny")


def _id(c):
    return f"{c.model}-{c.what}"


def test_every_suite_has_cases_and_the_quick_set_is_a_subset():
    assert {s.split(":")[1] for s in BM.SUITES} == {"gankern_models", "diffusers_models", "stylegan_models"}
    names = {(c.model, c.what) for c in BM.collect(CPU, "quick")}
    assert ("dcgan", "train step (G + D)") in names and ("ddpm", "UNet train step") in names
    assert any(m.startswith("diffusers") for m, _ in names)
    assert len(BM.collect(CPU, "full")) >= len(names)
    with pytest.raises(ValueError, match="scale"):
        BM.collect(CPU, "huge")


@pytest.mark.parametrize("case", TINY, ids=_id)
def test_tiny_case_runs_and_variants_agree(case):
    r = BM.run_case(case, CPU, budget=0.001, rounds=1, compile=False)
    ran = [v for v in case.variants if "compile" not in v]
    assert "failed" not in r.notes, r.notes
    assert list(r.ms) == ran and all(ms > 0 for ms in r.ms.values())
    assert r.ratio(case.baseline) == pytest.approx(1.0)
    assert case.what in BM.table([r])
    if case.compare:
        for v in ran:
            if "bf16" not in v:
                assert r.err[v] is not None and r.err[v] < 1e-3, (v, r.err)


def test_compile_variant_and_profile_of_one_case():
    case = next(c for c in TINY if c.what == "decode")
    r = BM.run_case(case, CPU, budget=0.001, rounds=1)
    assert set(r.ms) == {"fused", "eager", "compile"} and r.ratio("fused", r.compiled) > 0
    prof = BM.profile_case(case, CPU)
    assert set(prof) == {"fused", "eager"}
    eager = prof["eager"]
    assert sum(eager.shares.values()) == pytest.approx(1.0) and "matmul" in eager.shares
    assert eager.device_ms is None and eager.host_ms > 0 and len(eager.top_host) > 0


def test_peak_mb_sees_a_large_allocation():
    mb = BM.peak_mb(lambda: torch.ones(64, 2**20 // 4).sum(), CPU)   # 64 MiB, written
    assert mb is None or mb >= 48


def test_run_models_writes_json_and_chart(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(BM, "SUITES", BM.SUITES[:1])
    BM.run_models("cpu", str(tmp_path), compile=False, budget=0.001, progress=False, rounds=1, scale="tiny")
    assert len(list(tmp_path.glob("*.json"))) == 1 and len(list(tmp_path.glob("*.png"))) == 1
    assert "x vs eager" in capsys.readouterr().out
