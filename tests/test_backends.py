"""Backend reporting, forcing and fallback; the native build."""
import importlib.util
import os
import shutil
import warnings

import pytest
import torch

import gankern
import gankern.backends  # noqa: F401  (the function gankern.backends shadows the module attribute)
import sys
B = sys.modules["gankern.backends"]


def test_backends_report():
    report = gankern.backends()
    assert set(report) == {"reference", "triton", "cpu", "cuda"}
    assert report["reference"].available
    for status in report.values():
        assert status.reason, f"{status.name} must say why"


def test_version():
    assert isinstance(gankern.__version__, str) and gankern.__version__.count(".") >= 2


def test_cpu_module_built():
    assert gankern.backends()["cpu"].available, gankern.backends()["cpu"].reason


def test_cuda_module_built_where_nvcc_exists():
    """The install builds gankern._cuda whenever a CUDA compiler exists (unless GANKERN_CUDA=0)."""
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
    from setup import find_nvcc
    if find_nvcc() is None or os.environ.get("GANKERN_CUDA") == "0":
        pytest.skip("no nvcc here (or GANKERN_CUDA=0): the CUDA module is not expected")
    spec = importlib.util.find_spec("gankern._cuda")
    assert spec is not None, "nvcc exists but gankern._cuda was not built"
    cuda = importlib.import_module("gankern._cuda")  # imports without a GPU: static cudart
    assert cuda.runtime_version() >= 12000


def test_use_backend_forces_and_restores():
    x = torch.randn(3, 4)
    with gankern.use_backend("reference"):
        assert B.which("bias_act", x) == "reference"
        with gankern.use_backend(None):
            assert B.which("bias_act", x) != "reference" or not gankern.backends()["cpu"].available
    assert B.forced_backend() is None


def test_env_variable(monkeypatch):
    monkeypatch.setenv("GANKERN_BACKEND", "reference")
    assert B.which("bias_act", torch.randn(2)) == "reference"
    monkeypatch.setenv("GANKERN_BACKEND", "nope")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        gankern.bias_act(torch.randn(2))


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="expected one of"):
        with gankern.use_backend("fast"):
            pass


def test_forced_backend_that_cannot_run_raises():
    x = torch.randn(3, 4)
    with gankern.use_backend("cuda"), pytest.raises(RuntimeError, match="backend 'cuda' was requested"):
        gankern.bias_act(x.double())  # no backend but the reference runs float64
    with gankern.use_backend("cpu"), pytest.raises(RuntimeError, match="does not support torch.float64"):
        gankern.bias_act(x.double())


def test_cuda_backend_on_cpu_only_under_the_emulator(monkeypatch):
    monkeypatch.setattr(B._native, "cuda_emulated", lambda: False)
    B.clear_cache()
    try:
        assert B.why_not("bias_act", "cuda", "cpu", torch.float32) is not None
    finally:
        monkeypatch.undo()
        B.clear_cache()


def test_fallback_warns_once_per_reason():
    x = torch.randn(3, 4, dtype=torch.float64)
    B._warned.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            gankern.bias_act(x, act="relu")
    msgs = [str(w.message) for w in caught if "gankern.bias_act" in str(w.message)]
    if gankern.backends()["cpu"].available:
        assert len(msgs) == 1 and "falling back to the reference backend" in msgs[0]


def test_cli_info(capsys):
    from gankern.cli import main
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("gankern", "torch", "reference", "cpu", "cuda", "triton"):
        assert word in out


