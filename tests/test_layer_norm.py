"""layer_norm / add_layer_norm: every backend vs the float64 reference and torch's LayerNorm,
forward and gradients (x, residual, weight, bias), custom-op registration, torch.compile, validation."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import gankern
from gankern.ops.layer_norm import add_layer_norm, layer_norm
from gankern.reference import layer_norm as ref

from conftest import DEVICES, KERNEL_BACKENDS, KERNEL_DEVICE, assert_close, skip_unless_runnable


def _eager(x, r, w, b, eps):
    """The transformer block's own formulation: h = x + r; LayerNorm(h)."""
    h = x if r is None else x + r
    return F.layer_norm(h, h.shape[-1:], w, b, eps), h


def _params(D, affine, g=None, device="cpu"):
    if not affine:
        return None, None
    return (torch.rand(D, generator=g) + 0.5).to(device), torch.randn(D, generator=g).to(device)


def _check(backend, x, r, w, b, eps=1e-5, dtype=torch.float32, g=None):
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, r, w, b)]
    xk, rk, wk, bk = leaves
    with gankern.use_backend(backend):
        if r is None:
            y, h = layer_norm(xk, wk, bk, eps), None
        else:
            y, h = add_layer_norm(xk, rk, wk, bk, eps)
    dd = [t.double().requires_grad_() if t is not None else None for t in (x, r, w, b)]
    want_y, want_h = _eager(*dd, eps)
    assert_close(y, want_y, dtype=dtype, what="y")
    if h is not None:
        assert_close(h, want_h, dtype=dtype, what="h = x + residual")
    dy = torch.randn(y.shape, generator=g).to(y.device)
    loss = (y * dy).sum() + ((h * dy.flip(-1)).sum() if h is not None else 0)  # both outputs used later
    wloss = (want_y * dy.double()).sum() + ((want_h * dy.flip(-1).double()).sum() if h is not None else 0)
    ins = [t for t in leaves if t is not None]
    got = torch.autograd.grad(loss, ins)
    want = torch.autograd.grad(wloss, [t for t in dd if t is not None])
    for name, a, e in zip(["dx", "dresidual", "dweight", "dbias"] if r is not None else ["dx", "dweight", "dbias"],
                          got, want):
        assert_close(a, e, dtype=dtype, what=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_forward_backward(backend, device, residual, affine):
    skip_unless_runnable("layer_norm", backend, device)
    x = (torch.randn(2, 37, 320) * 2 + 1).to(device)
    r = torch.randn_like(x) if residual else None
    w, b = _params(320, affine, device=device)
    _check(backend, x, r, w, b)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(max_examples=10, deadline=None)
@given(lead=st.lists(st.integers(1, 9), min_size=0, max_size=3), D=st.integers(4, 300),
       seed=st.integers(0, 2**31 - 1), residual=st.booleans(), affine=st.booleans(),
       eps=st.sampled_from([1e-5, 1e-6, 0.1]))
def test_random_shapes(backend, lead, D, seed, residual, affine, eps):
    # D >= 4: with 1 or 2 values a row normalizes to constants and dx is pure rounding noise.
    skip_unless_runnable("layer_norm", backend, "cpu")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, D, generator=g) * 3
    r = torch.randn(*lead, D, generator=g) if residual else None
    w, b = _params(D, affine, g)
    _check(backend, x, r, w, b, eps, g=g)


def test_reference_matches_torch_and_gradcheck():
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    r = torch.randn_like(x, requires_grad=True)
    w = torch.rand(16, dtype=torch.float64, requires_grad=True)
    b = torch.randn(16, dtype=torch.float64, requires_grad=True)
    y, h, mean, rstd = ref.layer_norm(x, r, w, b, 1e-5)
    assert_close(y, _eager(x, r, w, b, 1e-5)[0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *a: ref.layer_norm(*a, 1e-5)[:2], (x, r, w, b))
    with gankern.use_backend("reference"):
        assert torch.autograd.gradcheck(lambda *a: add_layer_norm(*a, 1e-5), (x, r, w, b))
        assert torch.autograd.gradcheck(lambda x, w, b: layer_norm(x, w, b, 1e-5), (x, w, b))


def test_opcheck_and_compile():
    x = torch.randn(2, 3, 8, requires_grad=True)
    r, w, b = torch.randn(2, 3, 8, requires_grad=True), torch.rand(8, requires_grad=True), torch.randn(8)
    torch.library.opcheck(torch.ops.gankern.layer_norm.default, (x, r, w, b, 1e-5))
    torch.library.opcheck(torch.ops.gankern.layer_norm.default, (x, None, None, None, 1e-6))
    f = torch.compile(lambda x, r: add_layer_norm(x, r, w, b), fullgraph=True, backend="aot_eager")
    y, h = f(x, r)
    assert_close(y, _eager(x.double(), r.double(), w.double(), b.double(), 1e-5)[0])
    (y.sum() + h.square().sum()).backward()
    assert x.grad is not None and r.grad is not None and w.grad is not None


@pytest.mark.parametrize("call, exc, words", [
    (lambda: layer_norm(torch.randn(2, 3), torch.randn(4)), ValueError, ["weight", "[3]", "(4,)"]),
    (lambda: add_layer_norm(torch.randn(2, 3), torch.randn(3, 2)), ValueError, ["residual", "(2, 3)"]),
    (lambda: add_layer_norm(torch.randn(2, 3), None), TypeError, ["residual", "Tensor"]),
    (lambda: layer_norm(torch.arange(3)), TypeError, ["x", "floating"]),
    (lambda: layer_norm(torch.randn(2, 3), eps=0.0), ValueError, ["eps", "> 0"]),
    (lambda: layer_norm(torch.randn(2, 3), torch.randn(3, device="meta")), ValueError, ["weight", "device"]),
])
def test_bad_inputs(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value!s}"


def _check_half(backend, x, r, w, b, eps=1e-5, g=None):
    """Half inputs: h = x + r is stored in the input dtype (as torch's add rounds it) and y
    normalizes that stored h (as eager code normalizing the rounded sum does), so the float64
    expectation is taken of the rounded h; the kernels' math is fp32, the outputs rounded once
    (conftest.TOL: a few units of the format's epsilon). Gradients: dx (= dresidual) vs autograd of
    the float64 LayerNorm at the stored h, dweight/dbias (fp32 sums) vs float64."""
    dtype = x.dtype
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, r, w, b)]
    xk, rk, wk, bk = leaves
    with gankern.use_backend(backend):
        if r is None:
            y, h = layer_norm(xk, wk, bk, eps), None
        else:
            y, h = add_layer_norm(xk, rk, wk, bk, eps)
    assert y.dtype == dtype and (h is None or h.dtype == dtype)
    want_h = x if r is None else (x.float() + r.float()).to(dtype)
    if h is not None:
        assert_close(h, want_h.double(), dtype=dtype, what="h")
    hd = want_h.double().requires_grad_()
    wd, bd = (t.double().requires_grad_() if t is not None else None for t in (w, b))
    want_y = F.layer_norm(hd, hd.shape[-1:], wd, bd, eps)
    assert_close(y, want_y, dtype=dtype, what="y")
    dy = torch.randn(y.shape, generator=g).to(x.device, dtype)
    got = torch.autograd.grad(y, [t for t in leaves if t is not None], dy)
    want = torch.autograd.grad(want_y, [t for t in (hd, wd, bd) if t is not None], dy.double())
    assert got[0].dtype == dtype
    assert_close(got[0], want[0], dtype=dtype, what="dx")
    if r is not None:
        assert_close(got[1], want[0], dtype=dtype, what="dresidual")
    for name, a, e in zip(("dweight", "dbias"), got[2 if r is not None else 1:], want[1:]):
        assert_close(a, e, dtype=dtype, scale=e.abs().max().item(), what=name)


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("residual", [False, True])
def test_half_precision(backend, dtype, residual):
    device = "cpu" if backend == "cpu" else KERNEL_DEVICE
    skip_unless_runnable("layer_norm", backend, device, dtype)
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(3, 17, 96, generator=g) * 2 + 1).to(device, dtype)
    r = torch.randn(x.shape, generator=g).to(device, dtype) if residual else None
    w, b = _params(96, True, g, device=device)
    _check_half(backend, x, r, w, b, g=g)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@settings(max_examples=8, deadline=None)
@given(lead=st.lists(st.integers(1, 9), min_size=0, max_size=3), D=st.integers(4, 300),
       seed=st.integers(0, 2**31 - 1), residual=st.booleans(), affine=st.booleans(),
       eps=st.sampled_from([1e-5, 0.1]))
def test_cpu_half_random_shapes(dtype, lead, D, seed, residual, affine, eps):
    """The CPU kernels' half path at odd row lengths (the vector loops' tails) and row counts."""
    skip_unless_runnable("layer_norm", "cpu", "cpu", dtype)
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*lead, D, generator=g) * 3).to(dtype)
    r = torch.randn(*lead, D, generator=g).to(dtype) if residual else None
    w, b = _params(D, affine, g)
    _check_half("cpu", x, r, w, b, eps, g=g)
