"""filtered_lrelu: every backend vs the float64 reference over factors, paddings, filter shapes,
bias, clamp and flips; gradients for x and b (the masked op, transposed passes) of first, second
and third order; determinism; opcheck, torch.compile and input validation."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gankern
from gankern.ops import upfirdn2d as up_ops
from gankern.reference import filtered_lrelu as ref

from conftest import KERNEL_BACKENDS, KERNEL_DEVICE, assert_close, skip_unless_runnable


def _ref(x, fu, fd, b=None, up=1, down=1, padding=0, gain=math.sqrt(2), slope=0.2, clamp=None, flip_filter=False):
    upx, upy = up_ops._factor(up, "up")
    downx, downy = up_ops._factor(down, "down")
    return ref.filtered_lrelu(x.double(), fu.double(), fd.double(), None if b is None else b.double(), upx, upy,
                              downx, downy, *up_ops._padding(padding), gain, slope, clamp, flip_filter)


def _run(backend, *args, **kw):
    with gankern.use_backend(backend):
        return gankern.filtered_lrelu(*args, **kw)


@st.composite
def problems(draw, max_taps=5):
    up = draw(st.sampled_from([1, 2, 4, [2, 1]]))
    down = draw(st.sampled_from([1, 2, 4, [1, 2]]))
    shapes = []
    for _ in range(2):
        k = draw(st.integers(1, max_taps))
        shapes.append([k] if draw(st.booleans()) else [draw(st.integers(1, max_taps)), k])
    H, W = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    pad = [draw(st.integers(-2, 6)) for _ in range(4)]
    upx, upy = up_ops._factor(up, "up")
    downx, downy = up_ops._factor(down, "down")
    (kuw, kuh), (kdw, kdh) = (shapes[0][-1], shapes[0][0]), (shapes[1][-1], shapes[1][0])
    # grow pads until the intermediate image fits the down filter
    while ref.intermediate_size(W, upx, pad[0], pad[1], kuw) < kdw:
        pad[0] += 1
        pad[1] += 1
    while ref.intermediate_size(H, upy, pad[2], pad[3], kuh) < kdh:
        pad[2] += 1
        pad[3] += 1
    return dict(shape=(draw(st.integers(1, 2)), draw(st.integers(1, 4)), H, W), fu=shapes[0], fd=shapes[1], up=up,
                down=down, padding=pad, bias=draw(st.booleans()),
                clamp=draw(st.sampled_from([None, 0.5, 3.0])), slope=draw(st.sampled_from([0.2, 0.0, -0.5])),
                gain=draw(st.sampled_from([math.sqrt(2), 1.0])), flip_filter=draw(st.booleans()),
                seed=draw(st.integers(0, 2**31 - 1)))


def _inputs(pb, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(pb["seed"])
    x = torch.randn(pb["shape"], generator=g).to(device, dtype)
    fu = torch.randn(pb["fu"], generator=g).to(device)
    fd = torch.randn(pb["fd"], generator=g).to(device)
    b = torch.randn(pb["shape"][1], generator=g).to(device, dtype) if pb["bias"] else None
    return x, fu, fd, b


def _kw(pb):
    return {k: pb[k] for k in ("up", "down", "padding", "gain", "slope", "clamp", "flip_filter")}


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(max_examples=10, deadline=None)
@given(pb=problems())
def test_forward_and_gradients_random_problems(backend, pb):
    skip_unless_runnable("filtered_lrelu", backend, "cpu")
    x, fu, fd, b = _inputs(pb)
    xk = x.clone().requires_grad_()
    bk = b.clone().requires_grad_() if b is not None else None
    with gankern.use_backend(backend):
        y = gankern.filtered_lrelu(xk, fu, fd, bk, **_kw(pb))
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        grads = torch.autograd.grad(y, [xk] + ([bk] if b is not None else []), dy)
    xd = x.double().requires_grad_()
    bd = b.double().requires_grad_() if b is not None else None
    want = _ref(xd, fu, fd, bd, **_kw(pb))
    what = str({k: pb[k] for k in pb if k != "seed"})
    assert_close(y, want, what=what)
    wgrads = torch.autograd.grad(want, [xd] + ([bd] if b is not None else []), dy.double())
    assert_close(grads[0], wgrads[0], what="dx " + what)
    if b is not None:  # a sum of dx over N, H, W: judged against the size of its terms
        terms = wgrads[0].abs().sum().item() / pb["shape"][1] + 1e-30
        assert_close(grads[1], wgrads[1], scale=terms, what="db " + what)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_first_second_order(backend):
    """float64 gradcheck/gradgradcheck of the custom ops' autograd (reference backend), and the
    kernels' second-order gradients against the reference's."""
    g = torch.Generator().manual_seed(5)
    fu, fd = torch.randn(4, dtype=torch.float64, generator=g), torch.randn(3, 2, dtype=torch.float64, generator=g)
    kw = dict(up=2, down=[2, 1], padding=[2, 1, 0, 3], clamp=0.9, slope=0.3)
    if backend == "reference":
        x = torch.randn(1, 2, 5, 4, dtype=torch.float64, generator=g, requires_grad=True)
        b = torch.randn(2, dtype=torch.float64, generator=g, requires_grad=True)
        with gankern.use_backend("reference"):
            fn = lambda x, b: gankern.filtered_lrelu(x, fu, fd, b, **kw)  # noqa: E731
            assert torch.autograd.gradcheck(fn, (x, b))
            assert torch.autograd.gradgradcheck(fn, (x, b))
        return
    skip_unless_runnable("filtered_lrelu", backend, "cpu")
    x = torch.randn(2, 3, 6, 5, generator=g)
    b = torch.randn(3, generator=g)

    def grads(be, dtype):
        xr, br = x.to(dtype).requires_grad_(), b.to(dtype).requires_grad_()
        with gankern.use_backend(be):
            y = gankern.filtered_lrelu(xr, fu.to(dtype), fd.to(dtype), br, **kw)
            (gx,) = torch.autograd.grad(y.square().sum(), [xr], create_graph=True)
            ggx, ggb = torch.autograd.grad((gx * torch.linspace(-1, 1, gx.numel()).reshape(gx.shape).to(dtype)).sum(),
                                           [xr, br])
        return gx, ggx, ggb

    got, want = grads(backend, torch.float32), grads("reference", torch.float64)
    assert_close(got[0], want[0], what="dx")
    assert_close(got[1], want[1], what="d2x")
    assert_close(got[2], want[2], scale=want[1].abs().sum().item() / 3 + 1e-30, what="d2b")


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
def test_stylegan3_shape_12_taps(backend):
    """StyleGAN3-T style: up 2, down 2, 12-tap separable filters, bias, clamp; deterministic."""
    skip_unless_runnable("filtered_lrelu", backend, "cpu")
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 3, 10, 10, generator=g)
    b = torch.randn(3, generator=g)
    f = gankern.setup_filter(torch.hann_window(12, periodic=False) + 0.05)
    kw = dict(up=2, down=2, padding=[11, 10, 11, 10], clamp=256.0)
    xk = x.clone().requires_grad_()
    y = _run(backend, xk, f, f, b, **kw)
    assert y.shape == (1, 3, 10, 10)
    assert_close(y, _ref(x, f, f, b, **kw))
    dy = torch.randn(y.shape, generator=g)
    with gankern.use_backend(backend):
        (g1,) = torch.autograd.grad(y, [xk], dy, retain_graph=True)
        (g2,) = torch.autograd.grad(y, [xk], dy)
    assert torch.equal(g1, g2), "backward must be deterministic"
    xd = x.double().requires_grad_()
    (want,) = torch.autograd.grad(_ref(xd, f, f, b, **kw), [xd], dy.double())
    assert_close(g1, want)


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["2d_down", "separable_bias"])
def test_half_precision(backend, dtype, case):
    """x and y in the half dtype, the intermediate image, the mask decision and every sum in fp32:
    y and dx (the masked pass) within the format's rounding (conftest.TOL) of float64 at the same x."""
    device = "cpu" if backend == "cpu" else KERNEL_DEVICE
    skip_unless_runnable("filtered_lrelu", backend, device, dtype)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 7, 6, generator=g).to(device, dtype)
    if case == "2d_down":
        fu, fd, b = torch.randn(4, generator=g), torch.randn(3, 3, generator=g), None
        kw = dict(up=2, down=2, padding=2, clamp=4.0)
    else:
        fu, fd, b = torch.randn(6, generator=g), torch.randn(5, generator=g), torch.randn(3, generator=g)
        kw = dict(up=2, down=1, padding=[3, 2, 1, 3], gain=1.5, slope=0.1)
    fu, fd = fu.to(device), fd.to(device)
    b = b.to(device, dtype) if b is not None else None
    xk = x.clone().requires_grad_()
    with gankern.use_backend(backend):
        y = gankern.filtered_lrelu(xk, fu, fd, b, **kw)
        dy = torch.randn(y.shape, generator=g).to(device, dtype)
        y.backward(dy)
    assert y.dtype == dtype and xk.grad.dtype == dtype
    xd = x.double().requires_grad_()
    want = _ref(xd, fu, fd, b.double() if b is not None else None, **kw)
    want.backward(dy.double())
    assert_close(y, want, dtype)
    assert_close(xk.grad, xd.grad, dtype)


def test_channels_last_keeps_layout():
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    f = torch.randn(4)
    y = gankern.filtered_lrelu(x, f, f, up=2, down=2, padding=2)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, _ref(x, f, f, up=2, down=2, padding=2))


def test_opcheck():
    x = torch.randn(2, 3, 5, 6, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    fu, fd = torch.randn(4), torch.randn(3, 2)
    torch.library.opcheck(torch.ops.gankern.filtered_lrelu.default,
                          (x, fu, fd, b, [2, 2], [2, 1], [2, 1, 2, 1], 1.4, 0.2, 2.0, False))
    torch.library.opcheck(torch.ops.gankern.filtered_lrelu.default,
                          (x, fu, fd, None, [1, 2], [1, 1], [0, 0, 1, 1], 1.0, 0.1, None, True))


def test_torch_compile_fullgraph_double_backward():
    f = gankern.setup_filter([1, 3, 3, 1], separable=True)
    b = torch.randn(3, requires_grad=True)

    def fn(x):
        y = gankern.filtered_lrelu(x, f, f, b, up=2, down=2, padding=2, clamp=2.0)
        (g,) = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
        return g.square().sum()

    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    want = fn(x)
    (wb,) = torch.autograd.grad(want, [b])
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        got = torch.compile(fn, fullgraph=True, backend="aot_eager")(x)
    (gb,) = torch.autograd.grad(got, [b])
    assert_close(got, want)
    assert_close(gb, wb)


X = torch.randn(1, 2, 6, 6)


@pytest.mark.parametrize("call, exc, words", [
    (lambda: gankern.filtered_lrelu(X, up=0), ValueError, ["up", ">= 1"]),
    (lambda: gankern.filtered_lrelu(X, down=1.5), TypeError, ["down"]),
    (lambda: gankern.filtered_lrelu(X, padding=[1, 2, 3]), ValueError, ["padding"]),
    (lambda: gankern.filtered_lrelu(X, torch.ones(2, 2, 2)), ValueError, ["f", "1-D"]),
    (lambda: gankern.filtered_lrelu(X, None, torch.ones(3, dtype=torch.int32)), TypeError, ["f", "floating"]),
    (lambda: gankern.filtered_lrelu(X.int()), TypeError, ["x", "floating"]),
    (lambda: gankern.filtered_lrelu(X, b=torch.ones(3)), ValueError, ["b", "[2]"]),
    (lambda: gankern.filtered_lrelu(X, clamp=-1.0), ValueError, ["clamp"]),
    (lambda: gankern.filtered_lrelu(X, slope="a"), TypeError, ["slope"]),
    (lambda: gankern.filtered_lrelu(X, torch.ones(12), torch.ones(12), padding=-2), ValueError, ["no output"]),
])
def test_bad_inputs(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value!s}"
