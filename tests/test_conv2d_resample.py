"""conv2d_resample: the cheap order of operations (1x1 shortcuts, filter before a strided conv,
transposed conv before the filter) equals the naive order of the float64 reference on every
upfirdn2d backend, over shapes, groups, up/down, padding forms and both flips; gradients (first and
second order) through autograd; channels_last; torch.compile; input validation."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gankern
from gankern.ops import upfirdn2d as U
from gankern.reference import conv2d_resample as ref

from conftest import KERNEL_BACKENDS, KERNEL_DEVICE, assert_close, skip_unless_runnable

FILTERS = {"none": None, "box2": [1, 1], "binomial4": [1, 3, 3, 1], "tri3": [1, 2, 1], "sep8": [1, 2, 3, 4, 4, 3, 2, 1]}


def _ref(x, w, f, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False):
    fd = torch.ones(1, 1, dtype=torch.float64) if f is None else f.double()
    pad = ref.centring_padding(U._padding(padding), U.filter_size(f), up, down)
    return ref.conv2d_resample(x.double(), w.double(), fd, up, down, pad, groups, flip_weight, flip_filter)


@st.composite
def problems(draw):
    up, down = draw(st.sampled_from([(1, 1), (2, 1), (1, 2), (2, 2), (3, 1), (1, 3), (4, 2)]))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    kh = draw(st.sampled_from([1, 1, 2, 3]))
    kw = kh if draw(st.booleans()) else draw(st.integers(1, 3))
    form = draw(st.sampled_from(["int", "xy", "full"]))
    pads = [draw(st.integers(-1, 3)) for _ in range(4)]
    return dict(N=draw(st.integers(1, 2)), Cin=groups * draw(st.integers(1, 3)), Cout=groups * draw(st.integers(1, 3)),
                H=draw(st.integers(kh + 3, 10)), W=draw(st.integers(kw + 3, 10)), kh=kh, kw=kw, up=up, down=down,
                groups=groups, padding={"int": pads[0], "xy": pads[:2], "full": pads}[form],
                filt=draw(st.sampled_from(sorted(FILTERS))), flip_weight=draw(st.booleans()),
                flip_filter=draw(st.booleans()), channels_last=draw(st.booleans()),
                seed=draw(st.integers(0, 2**31 - 1)))


def _inputs(pb):
    g = torch.Generator().manual_seed(pb["seed"])
    x = torch.randn(pb["N"], pb["Cin"], pb["H"], pb["W"], generator=g)
    w = torch.randn(pb["Cout"], pb["Cin"] // pb["groups"], pb["kh"], pb["kw"], generator=g)
    if pb["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    taps = FILTERS[pb["filt"]]
    f = None if taps is None else gankern.setup_filter(taps)
    kw = {k: pb[k] for k in ("up", "down", "padding", "groups", "flip_weight", "flip_filter")}
    return x, w, f, kw


def _valid(x, w, f, kw):
    """The naive order leaves at least one output sample (tiny images with crops may not)."""
    try:
        return _ref(x, w, f, **kw).numel() > 0
    except (RuntimeError, ValueError):
        return False


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(max_examples=30, deadline=None)
@given(pb=problems())
def test_matches_naive_order(backend, pb):
    skip_unless_runnable("upfirdn2d", backend, "cpu")
    x, w, f, kw = _inputs(pb)
    if not _valid(x, w, f, kw):
        return
    want = _ref(x, w, f, **kw)
    with gankern.use_backend(backend):
        y = gankern.conv2d_resample(x, w, f, **kw)
    assert_close(y, want, what=str({k: pb[k] for k in pb if k != "seed"}))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@settings(max_examples=10, deadline=None)
@given(pb=problems())
def test_gradients_match_naive_order(backend, pb):
    """dL/dx and dL/dw through the cheap order equal the naive order's autograd gradients."""
    skip_unless_runnable("upfirdn2d", backend, "cpu")
    x, w, f, kw = _inputs(pb)
    if not _valid(x, w, f, kw):
        return
    xk, wk = x.clone().requires_grad_(), w.clone().requires_grad_()
    with gankern.use_backend(backend):
        y = gankern.conv2d_resample(xk, wk, f, **kw)
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        gx, gw = torch.autograd.grad(y, [xk, wk], dy)
    xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
    want = torch.autograd.grad(_ref(xd, wd, f, **kw), [xd, wd], dy.double())
    assert_close(gx, want[0], what="dx")
    assert_close(gw, want[1], what="dw")


@pytest.mark.parametrize("up, down, k, groups, padding", [
    (2, 1, 3, 1, 1), (1, 2, 3, 2, 0), (2, 2, 3, 1, [1, 0, -1, 2]), (1, 2, 1, 1, 0), (2, 1, 1, 2, 0), (1, 1, 3, 1, [2, 0])])
def test_gradcheck_gradgradcheck(up, down, k, groups, padding):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(2, 2 // groups, k, k, dtype=torch.float64, generator=g, requires_grad=True)
    f = gankern.setup_filter([1, 3, 3, 1]).double()
    with gankern.use_backend("reference"):
        fn = lambda x, w: gankern.conv2d_resample(x, w, f, up, down, padding, groups)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, w))
        assert torch.autograd.gradgradcheck(fn, (x, w))


def test_stylegan_shapes_keep_size_ratio():
    """StyleGAN's blocks: 3x3 with padding 1 keeps the size; up=2 doubles it, down=2 halves it."""
    x, w = torch.randn(2, 4, 8, 8), torch.randn(5, 4, 3, 3)
    f = gankern.setup_filter([1, 3, 3, 1])
    assert gankern.conv2d_resample(x, w, f, padding=1).shape == (2, 5, 8, 8)
    assert gankern.conv2d_resample(x, w, f, up=2, padding=1).shape == (2, 5, 16, 16)
    assert gankern.conv2d_resample(x, w, f, down=2, padding=1).shape == (2, 5, 4, 4)
    assert gankern.conv2d_resample(x, w[:, :, :1, :1], f, down=2).shape == (2, 5, 4, 4)


def test_channels_last_and_compile():
    f = gankern.setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(4, 4, 3, 3, requires_grad=True)

    def fn(x, w):
        y = gankern.conv2d_resample(x, w, f, up=2, padding=1)
        return gankern.conv2d_resample(y, w, f, down=2, padding=1)

    want = fn(x, w)
    got = torch.compile(fn, fullgraph=True, backend="aot_eager")(x, w)
    assert_close(got, want)
    assert_close(want, _ref(_ref(x, w, f, up=2, padding=1), w, f, down=2, padding=1))


X = torch.randn(1, 4, 6, 6)
W3 = torch.randn(4, 4, 3, 3)
F4 = gankern.setup_filter([1, 3, 3, 1])


@pytest.mark.parametrize("call, exc, words", [
    (lambda: gankern.conv2d_resample(X, W3, F4, up=2.0), TypeError, ["up", "int"]),
    (lambda: gankern.conv2d_resample(X, W3, F4, up=[2, 2]), TypeError, ["up", "int"]),
    (lambda: gankern.conv2d_resample(X, W3, F4, down=0), ValueError, ["down", ">= 1"]),
    (lambda: gankern.conv2d_resample(X, W3, F4, padding=[1, 2, 3]), ValueError, ["padding", "3 values"]),
    (lambda: gankern.conv2d_resample(X, W3, torch.ones(2, 2, 2), up=2), ValueError, ["f", "1-D", "2-D"]),
    (lambda: gankern.conv2d_resample(X.long(), W3, F4), TypeError, ["x", "floating"]),
    (lambda: gankern.conv2d_resample(X, W3.int(), F4), TypeError, ["w", "floating"]),
    (lambda: gankern.conv2d_resample(X, W3[0], F4), ValueError, ["w", "4-D"]),
    (lambda: gankern.conv2d_resample(X, W3, F4, groups=3), ValueError, ["groups"]),
    (lambda: gankern.conv2d_resample(X, W3, F4, groups=0), ValueError, ["groups"]),
    (lambda: gankern.conv2d_resample(X, W3, F4, flip_weight=1), TypeError, ["flip_weight"]),
    (lambda: gankern.conv2d_resample(X, W3, F4, padding=-2), ValueError, ["no output"]),
    (lambda: gankern.conv2d_resample(X, W3, F4, down=2, padding=[0, 0, -3, -3]), ValueError, ["no output"]),
    (lambda: gankern.conv2d_resample(X[:, :, :0], W3, F4, padding=2), ValueError, ["row"]),
])
def test_bad_inputs(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value!s}"


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("up, down", [(2, 1), (1, 2), (1, 1)])
def test_half_precision(backend, dtype, up, down):
    skip_unless_runnable("upfirdn2d", backend, KERNEL_DEVICE, dtype)
    g = torch.Generator().manual_seed(7)
    x, w = torch.randn(2, 4, 6, 7, generator=g), torch.randn(3, 4, 3, 3, generator=g)
    f = gankern.setup_filter([1, 3, 3, 1])
    with gankern.use_backend(backend):
        y = gankern.conv2d_resample(x.to(KERNEL_DEVICE, dtype), w.to(KERNEL_DEVICE, dtype), f.to(KERNEL_DEVICE),
                                    up=up, down=down, padding=1)
    assert y.dtype == dtype
    want = _ref(x.to(dtype), w.to(dtype), f, up=up, down=down, padding=1)
    assert_close(y, want, dtype=dtype)
