"""geglu: every backend vs the float64 reference, forward and gradients (first and second order),
custom-op registration, torch.compile, validation."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import gankern
from gankern.ops.geglu import geglu
from gankern.reference import geglu as ref

from conftest import DEVICES, KERNEL_BACKENDS, KERNEL_DEVICE, assert_close, skip_unless_runnable


def _eager(x, approximate="none"):
    """diffusers' GEGLU after its projection: the user's formulation is the judge of the spec."""
    h, g = x.chunk(2, dim=-1)
    return h * F.gelu(g, approximate=approximate)


def _run(backend, x, approximate="none"):
    with gankern.use_backend(backend):
        return geglu(x, approximate)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_forward_backward(backend, device, approximate):
    skip_unless_runnable("geglu", backend, device)
    x = (torch.randn(2, 37, 2 * 40) * 3).to(device)
    want = _eager(x.double(), approximate)
    assert_close(ref.geglu(x.double(), approximate), want, dtype=torch.float64, what="reference vs eager")
    xk = x.clone().requires_grad_()
    y = _run(backend, xk, approximate)
    assert_close(y, want, what="forward")
    dy = torch.randn_like(y)
    y.backward(dy)
    xd = x.double().requires_grad_()
    _eager(xd, approximate).backward(dy.double())
    assert_close(xk.grad, xd.grad, what="dx")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(max_examples=10, deadline=None)
@given(lead=st.lists(st.integers(1, 7), min_size=0, max_size=3), half=st.integers(1, 70), seed=st.integers(0, 2**31 - 1),
       strided=st.booleans())
def test_random_shapes(backend, lead, half, seed, strided):
    skip_unless_runnable("geglu", backend, "cpu")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, 2 * half, generator=g) * 2
    if strided:  # a non-contiguous view with the same values
        wide = torch.empty(*lead, 4 * half)
        wide[..., ::2] = x
        x = wide[..., ::2]
    xk = x.clone().requires_grad_() if not strided else x.requires_grad_()
    y = _run(backend, xk)
    assert_close(y, _eager(x.detach().double()), what="forward")
    dy = torch.randn(y.shape, generator=g)
    (gx,) = torch.autograd.grad(y, [xk], dy)
    xd = x.detach().double().requires_grad_()
    (wx,) = torch.autograd.grad(_eager(xd), [xd], dy.double())
    assert_close(gx, wx, what="dx")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_nan_inf_and_empty(backend):
    skip_unless_runnable("geglu", backend, "cpu")
    x = torch.tensor([[1.0, float("nan"), float("inf"), -2.0, 0.5, float("-inf")]])
    assert_close(_run(backend, x), _eager(x.double()), what="NaN/Inf")
    assert _run(backend, torch.randn(0, 4)).shape == (0, 2)


def test_reference_and_op_gradcheck_second_order():
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    for approximate in ("none", "tanh"):
        assert torch.autograd.gradcheck(lambda x: ref.geglu(x, approximate), (x,))
        with gankern.use_backend("reference"):
            assert torch.autograd.gradcheck(lambda x: geglu(x, approximate), (x,))
            assert torch.autograd.gradgradcheck(lambda x: geglu(x, approximate), (x,))


def test_opcheck_compile_export():
    x = torch.randn(2, 3, 8, requires_grad=True)
    torch.library.opcheck(torch.ops.gankern.geglu.default, (x, "none"))
    torch.library.opcheck(torch.ops.gankern.geglu_backward.default, (torch.randn(2, 3, 4), x, "tanh"))
    f = torch.compile(lambda x: geglu(x) * 2, fullgraph=True, backend="aot_eager")
    y = f(x)
    assert_close(y, 2 * _eager(x.detach().double()))
    y.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("call, exc, words", [
    (lambda: geglu(torch.randn(2, 3)), ValueError, ["even", "(2, 3)"]),
    (lambda: geglu(torch.arange(4)), TypeError, ["x", "floating"]),
    (lambda: geglu(torch.randn(2, 4), approximate="fast"), ValueError, ["approximate", "fast"]),
    (lambda: geglu(torch.tensor(1.0)), ValueError, ["x", "dimensions"]),
])
def test_bad_inputs(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value!s}"


def _check_half(backend, x, approximate="none", g=None):
    """Half x: loads and stores in x's dtype, math in fp32, so y and dx are within the format's
    rounding (conftest.TOL) of the float64 formula evaluated at the same (already rounded) x."""
    dtype = x.dtype
    xk = x.clone().requires_grad_()
    y = _run(backend, xk, approximate)
    assert y.dtype == dtype
    assert_close(y, _eager(x.double(), approximate), dtype=dtype)
    dy = torch.randn(y.shape, generator=g).to(x.device, dtype)
    y.backward(dy)
    xd = x.double().requires_grad_()
    _eager(xd, approximate).backward(dy.double())
    assert xk.grad.dtype == dtype
    assert_close(xk.grad, xd.grad, dtype=dtype, what="dx")


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_half_precision(backend, dtype, approximate):
    device = "cpu" if backend == "cpu" else KERNEL_DEVICE
    skip_unless_runnable("geglu", backend, device, dtype)
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(3, 17, 2 * 33, generator=g) * 2).to(device, dtype)
    _check_half(backend, x, approximate, g)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@settings(max_examples=8, deadline=None)
@given(lead=st.lists(st.integers(1, 7), min_size=0, max_size=3), half=st.integers(1, 70),
       seed=st.integers(0, 2**31 - 1))
def test_cpu_half_random_shapes(dtype, lead, half, seed):
    """The CPU kernels' half path at odd half-widths (the vector loops' tails)."""
    skip_unless_runnable("geglu", "cpu", "cpu", dtype)
    g = torch.Generator().manual_seed(seed)
    _check_half("cpu", (torch.randn(*lead, 2 * half, generator=g) * 2).to(dtype), g=g)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_half_nan_inf(dtype):
    """NaN and infinities survive the half conversions as the float64 formula gives them."""
    skip_unless_runnable("geglu", "cpu", "cpu", dtype)
    x = torch.tensor([[1.0, float("nan"), float("inf"), -2.0, 0.5, float("-inf"), 3.0, 0.25]]).to(dtype)
    assert_close(_run("cpu", x), _eager(x.double()), dtype=dtype)
