"""Shared test setup. Conventions (docs/architecture.md, "Tests"):
- every backend that can run here is compared with the reference run in float64;
- kernel outputs are poisoned (NaN-filled) before kernels run, so unwritten elements fail;
- Triton runs under TRITON_INTERPRET=1 when there is no GPU (set here, before triton is imported);
  the cuda backend runs its kernels on the CPU emulator (GANKERN_CUDA_EMULATOR=1) when
  gankern._cuda_emu is built (GANKERN_BUILD_EMULATOR=1 at install).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("GANKERN_CUDA_EMULATOR", "1")
    if os.environ.get("GANKERN_RECORD_TRITON"):  # every kernel specialization run, for a compile check
        from triton_compile_check import start_recording
        start_recording(os.environ["GANKERN_RECORD_TRITON"])

# float32 on a GPU means float32 here: cuDNN's convolutions default to TF32 (a 10-bit mantissa, errors
# near 1e-3), which the float32 bounds below rightly refuse. Users who want TF32 turn it on.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

import gankern  # noqa: E402
from gankern._tensors import poison_outputs  # noqa: E402
from gankern.backends import NAMES, why_not  # noqa: E402

# The one list of backends the tests run (gankern's own: backends.NAMES), and those that are not
# the reference.
KERNEL_BACKENDS = NAMES
KERNEL_ONLY_BACKENDS = tuple(b for b in KERNEL_BACKENDS if b != "reference")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Where the triton and cuda backends run: the GPU, else the CPU (Triton's interpreter, the CUDA
# emulator). Half-precision and layout tests run there, so they run in CI too.
KERNEL_DEVICE = DEVICES[-1]

# Error bounds against the float64 reference, relative to the reference's scale.
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}


# CI runs are reproducible: hypothesis draws the same examples every run (CI=true is set by CI).
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _poisoned_outputs():
    with poison_outputs():
        yield


@pytest.fixture(autouse=True)
def _seeded():
    """Each test starts from the same torch RNG state, whatever ran before it."""
    torch.manual_seed(0)
    yield


def skip_unless_runnable(op: str, backend: str, device, dtype=torch.float32) -> None:
    why = why_not(op, backend, device, dtype)
    if why is not None:
        pytest.skip(why)


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype=torch.float32, scale: float | None = None,
                 what: str = "output") -> None:
    """|out - ref| <= tol * (|ref| + scale) elementwise, NaN only where the reference has NaN;
    scale defaults to the reference's RMS so near-zero elements are judged against the tensor."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    out, ref = out.double().cpu(), ref.double().cpu()
    nan_ref = torch.isnan(ref)
    assert torch.equal(torch.isnan(out), nan_ref), f"{what}: NaN pattern differs (unwritten elements?)"
    out, ref = out[~nan_ref], ref[~nan_ref]
    if ref.numel() == 0:
        return
    fin = torch.isfinite(ref)
    assert torch.equal(out[~fin], ref[~fin]), f"{what}: infinities differ"
    out, ref = out[fin], ref[fin]
    if ref.numel() == 0:
        return
    if scale is None:
        scale = ref.pow(2).mean().sqrt().item() + 1e-30
    tol = TOL[dtype]
    err = (out - ref).abs() / (ref.abs() + scale)
    worst = err.max().item()
    assert worst <= tol, f"{what}: max relative error {worst:.3g} > {tol:g} (dtype {dtype})"


_FAILURE_LOG = os.environ.get("GANKERN_FAILURE_LOG")  # benchmarks/gpu_session.sh sets it
_IS_XDIST_WORKER = False


def pytest_configure(config):
    global _IS_XDIST_WORKER
    _IS_XDIST_WORKER = hasattr(config, "workerinput")
    # every op call in the tests checks, as torch.library does, that no output aliases an input
    # (off in production: gankern/_op.py)
    from gankern import _op
    _op.check_aliasing = True


def pytest_runtest_logreport(report):
    """With GANKERN_FAILURE_LOG set, each failure's traceback is appended to that file the moment
    it happens (by the main process under xdist), so a run cut off by a time limit still says why
    its tests failed: pytest itself prints tracebacks only at the end."""
    if _FAILURE_LOG and report.failed and not _IS_XDIST_WORKER:
        with open(_FAILURE_LOG, "a") as f:
            f.write(f"=== {report.nodeid} ({report.when})\n{report.longreprtext[-6000:]}\n\n")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def fused_plain_pair(cls, **kw):
    """A model built with fused=True and the same model with fused=False holding the same weights
    (the models' state_dicts move between the two)."""
    torch.manual_seed(0)
    fused = cls(fused=True, **kw)
    plain = cls(fused=False, **kw)
    plain.load_state_dict(fused.state_dict())
    return fused, plain


def assert_close_to_scale(a, b, what, rtol):
    """max |a - b| <= rtol * max |b|: a fused model against its plain twin (sums in other orders)."""
    scale = b.abs().max().item() + 1e-12
    err = (a - b).abs().max().item()
    assert err <= rtol * scale, f"{what}: max error {err:.3g} (scale {scale:.3g})"


def assert_grads_close(m1, m2, rtol=1e-3):
    """Every parameter gradient of m1 close to m2's (assert_close_to_scale); at least one exists."""
    n = 0
    for (name, p1), (_, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        assert (p1.grad is None) == (p2.grad is None), name
        if p1.grad is not None:
            assert_close_to_scale(p1.grad, p2.grad, f"grad {name}", rtol)
            n += 1
    assert n > 0


# a tiny .npz dataset for the CLI training tests (StyleGAN2/3)
@pytest.fixture
def tiny_npz(tmp_path):
    """20 digits at 8x8 with labels: an epoch of 16-pixel images is 2 steps of 8."""
    import numpy as np
    from gankern.train import data as D
    ds, _ = D.load("digits", 8)
    x = ((ds.images[:20, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    path = tmp_path / "tiny.npz"
    np.savez(path, x=x, y=ds.labels[:20].numpy())
    return path
