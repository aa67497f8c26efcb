"""minibatch_std: every backend vs the float64 reference (StyleGAN2's reshape formulation) over
shapes, group sizes (N not a multiple of group_size -> G = min(G, N)) and statistics channels;
the fused backward vs autograd of the reference; gradcheck / gradgradcheck (R1's double backward);
half precision; the layer; opcheck, compile and bad inputs. Layouts, empty batches and non-finite
inputs: tests/contract_cases/minibatch_std.py."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gankern
from gankern.ops.minibatch_std import group_size_for
from gankern.reference import minibatch_std as ref

from conftest import KERNEL_BACKENDS, KERNEL_DEVICE, assert_close, skip_unless_runnable


def _stylegan(x, group_size, num_channels):
    """StyleGAN2's MinibatchStdLayer, written out independently of gankern's reference (float64)."""
    N, C, H, W = x.shape
    G = min(group_size, N) if group_size is not None else N
    y = x.double().reshape(G, -1, num_channels, C // num_channels, H, W)
    y = y - y.mean(dim=0)
    y = (y.square().mean(dim=0) + 1e-8).sqrt().mean(dim=[2, 3, 4])
    y = y.reshape(-1, num_channels, 1, 1).repeat(G, 1, H, W)
    return torch.cat([x.double(), y], dim=1)


@st.composite
def problems(draw):
    G = draw(st.sampled_from([1, 2, 3, 4, None]))
    n = draw(st.integers(1, 3))
    F = draw(st.integers(1, 3))
    N = n * (G or draw(st.integers(1, 4)))
    if G is not None and draw(st.booleans()):
        N = draw(st.integers(1, G))  # a batch smaller than the group: G = N
    return dict(shape=(N, F * draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 7))),
                group_size=G, num_channels=F, scale=draw(st.sampled_from([1.0, 1e-3, 30.0])),
                seed=draw(st.integers(0, 2**31 - 1)))


def _x(pb, requires_grad=False):
    g = torch.Generator().manual_seed(pb["seed"])
    return (torch.randn(pb["shape"], generator=g) * pb["scale"]).requires_grad_(requires_grad)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(max_examples=20, deadline=None)
@given(pb=problems())
def test_forward_backward_random_problems(backend, pb):
    skip_unless_runnable("minibatch_std", backend, "cpu")
    x = _x(pb, requires_grad=True)
    with gankern.use_backend(backend):
        y = gankern.minibatch_std(x, pb["group_size"], pb["num_channels"])
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        (gx,) = torch.autograd.grad(y, [x], dy)
    xd = x.detach().double().requires_grad_()
    want = _stylegan(xd, pb["group_size"], pb["num_channels"])
    assert_close(y, want, what=str(pb))
    (gwant,) = torch.autograd.grad(want, [xd], dy.double())
    assert_close(gx, gwant, what="dx")


def test_reference_closed_form_backward_equals_autograd():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 4, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    dy = torch.randn(6, 6, 3, 2, dtype=torch.float64, generator=g)
    (want,) = torch.autograd.grad(ref.minibatch_std(x, 3, 2), [x], dy)
    assert_close(ref.minibatch_std_backward(dy, x.detach(), 3, 2), want, dtype=torch.float64)


def test_gradcheck_gradgradcheck():
    """First and second order through the custom ops (the backward op's autograd) in float64 (the
    kernels' second order: test_second_order_kernels_match_reference)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 4, 2, 3, dtype=torch.float64, generator=g, requires_grad=True)
    with gankern.use_backend("reference"):
        fn = lambda x: gankern.minibatch_std(x, 2, 2)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
def test_second_order_kernels_match_reference(backend):
    """The R1 pattern: grad with create_graph through the kernels, then a gradient of a function of it."""
    skip_unless_runnable("minibatch_std", backend, "cpu")
    x0 = torch.randn(8, 6, 3, 3, generator=torch.Generator().manual_seed(4))

    def grads(be, dtype):
        x = x0.to(dtype).requires_grad_()
        with gankern.use_backend(be):
            y = gankern.minibatch_std(x, 4, 3)
            (gx,) = torch.autograd.grad((y.sin() * y).sum(), [x], create_graph=True)
            (ggx,) = torch.autograd.grad(gx.square().sum(), [x])
        return gx, ggx

    got, want = grads(backend, torch.float32), grads("reference", torch.float64)
    assert_close(got[0], want[0], what="first order")
    assert_close(got[1], want[1], what="second order")


@pytest.mark.parametrize("backend, device", [("cpu", "cpu"), ("triton", KERNEL_DEVICE), ("cuda", KERNEL_DEVICE)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(backend, device, dtype):
    skip_unless_runnable("minibatch_std", backend, device, dtype)
    x = torch.randn(6, 4, 5, 3, generator=torch.Generator().manual_seed(6))
    xh = x.to(device, dtype).requires_grad_()
    with gankern.use_backend(backend):
        y = gankern.minibatch_std(xh, 3, 2)
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
        (gx,) = torch.autograd.grad(y, [xh], dy)
    assert y.dtype == dtype and gx.dtype == dtype
    xd = xh.detach().double().cpu().requires_grad_()
    want = ref.minibatch_std(xd, 3, 2)
    (gwant,) = torch.autograd.grad(want, [xd], dy.double().cpu())
    assert_close(y, want, dtype=dtype)
    assert_close(gx, gwant, dtype=dtype, what="dx")


def test_group_rule():
    assert group_size_for(8, 4) == 4 and group_size_for(3, 4) == 3 and group_size_for(5, None) == 5
    with pytest.raises(ValueError, match="divisible by the group size"):
        group_size_for(6, 4)


def test_layer_and_compile():
    layer = gankern.nn.MinibatchStdDev(group_size=2, num_channels=2)
    assert not list(layer.state_dict())
    x = torch.randn(4, 4, 3, 3, requires_grad=True)
    y = layer(x)
    assert y.shape == (4, 6, 3, 3)
    assert_close(y, _stylegan(x.detach(), 2, 2))
    got = torch.compile(layer, fullgraph=True, backend="aot_eager")(x)
    assert_close(got, y)


def test_opcheck():
    x = torch.randn(6, 4, 3, 2, requires_grad=True)
    torch.library.opcheck(torch.ops.gankern.minibatch_std.default, (x, 3, 2))
    torch.library.opcheck(torch.ops.gankern.minibatch_std_backward.default,
                          (torch.randn(6, 6, 3, 2, requires_grad=True), x, 3, 2))


X = torch.randn(6, 4, 3, 3)


@pytest.mark.parametrize("call, exc, words", [
    (lambda: gankern.minibatch_std(X, group_size=4), ValueError, ["batch size 6", "divisible", "group size"]),
    (lambda: gankern.minibatch_std(X, num_channels=3), ValueError, ["C=4", "num_channels=3"]),
    (lambda: gankern.minibatch_std(X, group_size=0), ValueError, ["group_size"]),
    (lambda: gankern.minibatch_std(X, group_size=2.0), ValueError, ["group_size"]),
    (lambda: gankern.minibatch_std(X, num_channels=0), ValueError, ["num_channels"]),
    (lambda: gankern.minibatch_std(X.long()), TypeError, ["x", "floating"]),
    (lambda: gankern.minibatch_std(X[0]), ValueError, ["x", "4-D"]),
    (lambda: gankern.minibatch_std(torch.randn(2, 0, 3, 3), 2), ValueError, ["channel"]),
])
def test_bad_inputs(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value!s}"
