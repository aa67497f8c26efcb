"""modulated_conv2d: every backend vs the float64 reference over shapes, demodulate on/off, up/down,
padding forms, both strategies, noise/bias/activation epilogues and layouts; gradients of first
and second order (gradcheck / gradgradcheck on the reference, kernels against the reference);
half precision on the GPU backends; opcheck, torch.compile and input validation."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gankern
from gankern.ops import modulated_conv as ops
from gankern.ops.upfirdn2d import _padding
from gankern.reference import modulated_conv as ref

from conftest import KERNEL_BACKENDS, KERNEL_DEVICE, assert_close, skip_unless_runnable

OPS = ("modconv_weight", "modconv_dcoefs", "modconv_epilogue")
F4 = gankern.setup_filter([1, 3, 3, 1])


def _skip(backend, device="cpu", dtype=torch.float32):
    for op in OPS:
        skip_unless_runnable(op, backend, device, dtype)


def _ref(x, w, s, pb, fused=False, noise=None, bias=None):
    """The specification in float64."""
    d = lambda t: None if t is None else t.double().cpu()  # noqa: E731
    f = F4.double() if pb["up"] > 1 or pb["down"] > 1 else None
    return ref.modulated_conv2d(d(x), d(w), d(s), pb["demodulate"], _padding(pb["padding"]), pb["up"], pb["down"],
                                f, d(noise), fused, pb["flip_weight"], False, d(bias), pb["act"], 0.2,
                                pb["gain"], pb["clamp"])


def _run(backend, x, w, s, pb, fused, noise=None, bias=None):
    f = F4.to(x.device) if pb["up"] > 1 or pb["down"] > 1 else None
    with gankern.use_backend(backend):
        return gankern.modulated_conv2d(x, w, s, demodulate=pb["demodulate"], padding=pb["padding"], up=pb["up"],
                                        down=pb["down"], resample_filter=f, noise=noise, fused_modconv=fused,
                                        flip_weight=pb["flip_weight"], bias=bias, act=pb["act"], gain=pb["gain"],
                                        clamp=pb["clamp"])


@st.composite
def problems(draw):
    up, down = draw(st.sampled_from([(1, 1), (2, 1), (1, 2)]))
    k = draw(st.sampled_from([1, 3]))
    N, I, O = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    H, W = draw(st.integers(3, 7)), draw(st.integers(3, 7))
    form = draw(st.sampled_from(["int", "xy", "full"]))
    pads = [draw(st.integers(-1, 2)) for _ in range(4)]
    padding = {"int": max(pads[0], 0), "xy": [max(p, 0) for p in pads[:2]], "full": pads}[form]
    pad = ref.resample_padding(F4 if up > 1 or down > 1 else None, up, down, _padding(padding))
    fl = 4 if up > 1 or down > 1 else 1
    if min(ops.output_size(H, k, fl, up, down, pad[2], pad[3]), ops.output_size(W, k, fl, up, down, pad[0], pad[1])) < 1:
        padding = 1
    act = draw(st.sampled_from(["linear", "lrelu", "swish"]))
    return dict(shape=(N, I, H, W), O=O, k=k, up=up, down=down, padding=padding,
                demodulate=draw(st.booleans()), flip_weight=draw(st.booleans()), act=act,
                gain=draw(st.sampled_from([1.0, 2 ** 0.5])), clamp=draw(st.sampled_from([None, 0.5])),
                noise=draw(st.sampled_from(["none", "pixel", "full", "channel"])), bias=draw(st.booleans()),
                channels_last=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)))


def _inputs(pb, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(pb["seed"])
    N, I, H, W = pb["shape"]
    x = torch.randn(pb["shape"], generator=g)
    w = torch.randn(pb["O"], I, pb["k"], pb["k"], generator=g)
    s = torch.randn(N, I, generator=g) + 1
    if pb["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    f = F4 if pb["up"] > 1 or pb["down"] > 1 else None
    pad = ref.resample_padding(f, pb["up"], pb["down"], _padding(pb["padding"]))
    fl = 4 if f is not None else 1
    OH = ops.output_size(H, pb["k"], fl, pb["up"], pb["down"], pad[2], pad[3])
    OW = ops.output_size(W, pb["k"], fl, pb["up"], pb["down"], pad[0], pad[1])
    nshape = {"none": None, "pixel": (N, 1, OH, OW), "full": (N, pb["O"], OH, OW), "channel": (1, pb["O"], 1, 1)}
    noise = torch.randn(nshape[pb["noise"]], generator=g) if nshape[pb["noise"]] else None
    bias = torch.randn(pb["O"], generator=g) if pb["bias"] else None
    mv = lambda t: None if t is None else t.to(device)  # noqa: E731
    return x.to(device, dtype), mv(w), mv(s), (mv(noise).to(dtype) if noise is not None else None), mv(bias)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(max_examples=12, deadline=None)
@given(pb=problems())
def test_forward_random_problems(backend, fused, pb):
    _skip(backend)
    x, w, s, noise, bias = _inputs(pb)
    y = _run(backend, x, w, s, pb, fused, noise, bias)
    assert_close(y, _ref(x, w, s, pb, noise=noise, bias=bias), what=str({k: v for k, v in pb.items() if k != "seed"}))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(max_examples=6, deadline=None)
@given(pb=problems())
def test_backward_random_problems(backend, fused, pb):
    """Gradients of x, weight, styles, noise and bias against the float64 reference's autograd."""
    _skip(backend)
    if pb["demodulate"] and pb["shape"][1] == 1:
        # one input channel: demodulation cancels the style exactly (dstyles = 0 analytically), and
        # what is left is fp32 rounding of cancelling terms larger than every true gradient
        pb = dict(pb, shape=(pb["shape"][0], 2, *pb["shape"][2:]))
    x, w, s, noise, bias = _inputs(pb)
    args = [t for t in (x, w, s, noise, bias) if t is not None]
    ks = [t.clone().requires_grad_() for t in args]
    kx, kw_, ks_ = ks[:3]
    kn = ks[3] if noise is not None else None
    kb = ks[-1] if bias is not None else None
    y = _run(backend, kx, kw_, ks_, pb, fused, kn, kb)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    with gankern.use_backend(backend):
        got = torch.autograd.grad(y, ks, dy)
    ds = [t.double().requires_grad_() for t in args]
    dn = ds[3] if noise is not None else None
    db = ds[-1] if bias is not None else None
    want = torch.autograd.grad(_ref(ds[0], ds[1], ds[2], pb, noise=dn, bias=db), ds, dy.double())
    # one scale for all: demodulation makes some gradients cancel to ~0 (e.g. dweight with I*k*k = 1),
    # where fp32 rounding of the cancelling terms (of the other gradients' size) is all that is left
    scale = max(wg.abs().max().item() for wg in want) + 1e-12
    names = ["x", "weight", "styles"] + ["noise"] * (noise is not None) + ["bias"] * (bias is not None)
    for name, g, wg in zip(names, got, want):
        assert_close(g, wg, scale=scale, what=f"d{name}")


@pytest.mark.parametrize("fused, demodulate, up, down", [
    (True, True, 1, 1), (False, True, 1, 1), (False, False, 1, 1), (True, False, 1, 1), (True, True, 2, 1),
    (False, True, 1, 2)])
def test_gradcheck_gradgradcheck_reference(fused, demodulate, up, down):
    """The custom ops' autograd formulas, first and second order, in float64 (reference kernels);
    fast_mode (random projections of the Jacobians) keeps the second order affordable."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    s = (torch.randn(2, 2, dtype=torch.float64, generator=g) + 1).requires_grad_()
    n = torch.randn(2, 1, 1, 1, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True)
    f = F4.double() if up > 1 or down > 1 else None
    fn = lambda x, w, s, n, b: gankern.modulated_conv2d(  # noqa: E731
        x, w, s, demodulate=demodulate, padding=1, up=up, down=down, resample_filter=f, noise=n,
        fused_modconv=fused, bias=b, act="swish")
    with gankern.use_backend("reference"):
        assert torch.autograd.gradcheck(fn, (x, w, s, n, b), fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, (x, w, s, n, b), fast_mode=True)


def _path_length_grads(backend, x, w, s, b, fused, up):
    """Path-length-regularization-like second order: d/d(weight, styles, bias) of |d(y . u)/d styles|^2."""
    f = F4.to(x.dtype) if up > 1 else None
    with gankern.use_backend(backend):
        y = gankern.modulated_conv2d(x, w, s, padding=1, up=up, resample_filter=f, fused_modconv=fused, bias=b,
                                     act="lrelu")
        u = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
        (gs,) = torch.autograd.grad((y * u).sum(), [s], create_graph=True)
        gx = torch.autograd.grad((y * u).sum(), [x], create_graph=True)[0]
        loss = gs.square().sum() + gx.square().sum()
        return torch.autograd.grad(loss, [w, s, b])


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_second_order_kernels_vs_reference(backend, fused, up):
    _skip(backend)
    g = torch.Generator().manual_seed(5)
    t = [torch.randn(2, 3, 5, 4, generator=g), torch.randn(4, 3, 3, 3, generator=g),
         torch.randn(2, 3, generator=g) + 1, torch.randn(4, generator=g)]
    got = _path_length_grads(backend, *[a.clone().requires_grad_() for a in t], fused, up)
    want = _path_length_grads("reference", *[a.double().requires_grad_() for a in t], fused, up)
    scale = max(b.abs().max().item() for b in want)  # lrelu: the bias term is exactly 0 (act'' = 0)
    for name, a, b in zip(["weight", "styles", "bias"], got, want):
        assert_close(a, b, scale=scale, what=f"2nd-order d{name}")


def test_strategies_agree():
    g = torch.Generator().manual_seed(2)
    x, w, s = torch.randn(3, 6, 8, 8, generator=g), torch.randn(5, 6, 3, 3, generator=g), torch.randn(3, 6, generator=g)
    a = gankern.modulated_conv2d(x, w, s, padding=1, fused_modconv=True)
    b = gankern.modulated_conv2d(x, w, s, padding=1, fused_modconv=False)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_matches_stylegan2_formulation():
    """The public call against StyleGAN2's published formulation written out in torch (no noise)."""
    g = torch.Generator().manual_seed(4)
    x, w, s = (torch.randn(2, 4, 6, 6, generator=g, dtype=torch.float64),
               torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64),
               torch.randn(2, 4, generator=g, dtype=torch.float64))
    wm = w[None] * s[:, None, :, None, None]
    wm = wm * (wm.square().sum([2, 3, 4]) + 1e-8).rsqrt()[:, :, None, None, None]
    want = torch.nn.functional.conv2d(x.reshape(1, -1, 6, 6), wm.reshape(-1, 4, 3, 3), padding=1, groups=2)
    got = gankern.modulated_conv2d(x, w, s, padding=1)
    torch.testing.assert_close(got, want.reshape(2, 5, 6, 6))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
def test_half_precision(backend, fused, dtype):
    """fp16/bf16 activations (fp32 weight and styles, as StyleGAN2's layers hold them); fp16 with
    demodulation goes through the pre-normalization, which must leave the result unchanged."""
    skip_unless_runnable("modconv_epilogue", backend, KERNEL_DEVICE, dtype)
    _skip(backend, KERNEL_DEVICE)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 8, 6, 6, generator=g).to(KERNEL_DEVICE, dtype)
    w = (torch.randn(6, 8, 3, 3, generator=g) * 30).to(KERNEL_DEVICE)
    s = (torch.randn(2, 8, generator=g) * 30).to(KERNEL_DEVICE)
    b = torch.randn(6, generator=g).to(KERNEL_DEVICE)
    with gankern.use_backend(backend):
        y = gankern.modulated_conv2d(x, w, s, padding=1, fused_modconv=fused, bias=b, act="lrelu")
    assert y.dtype == dtype
    want = ref.modulated_conv2d(x.double().cpu(), w.double().cpu(), s.double().cpu(), True, (1, 1, 1, 1), 1, 1, None,
                                None, fused, True, False, b.double().cpu(), "lrelu", 0.2, 2 ** 0.5, None)
    assert_close(y, want, dtype=dtype, scale=want.abs().max().item())


def test_prenormalize_is_a_no_op_of_the_result():
    g = torch.Generator().manual_seed(7)
    w, s = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64), torch.randn(2, 3, generator=g, dtype=torch.float64)
    w2, s2 = ref.prenormalize(w, s)
    torch.testing.assert_close(ref.modulate(w2, s2, True), ref.modulate(w, s, True))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_opcheck(backend):
    _skip(backend)
    g = torch.Generator().manual_seed(8)
    w, s = torch.randn(4, 3, 3, 3, generator=g), torch.randn(2, 3, generator=g)
    y, sc = torch.randn(2, 4, 5, 3, generator=g), torch.randn(2, 4, generator=g)
    nz, b = torch.randn(2, 1, 5, 3, generator=g), torch.randn(4, generator=g)
    with gankern.use_backend(backend):
        for demod in (True, False):
            torch.library.opcheck(torch.ops.gankern.modconv_weight, (w.requires_grad_(), s.requires_grad_(), demod))
        torch.library.opcheck(torch.ops.gankern.modconv_dcoefs, (w, s))
        for yy in (y, y.contiguous(memory_format=torch.channels_last)):
            torch.library.opcheck(torch.ops.gankern.modconv_epilogue,
                                  (yy.requires_grad_(), sc.requires_grad_(), nz.requires_grad_(), b.requires_grad_(),
                                   "lrelu", 0.2, 1.4, 0.8))
            torch.library.opcheck(torch.ops.gankern.modconv_epilogue, (yy, sc, None, None, "linear", 0.0, 1.0, None))


@pytest.mark.parametrize("fused", [True, False])
def test_torch_compile_fullgraph(fused):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 4, 6, 6, generator=g, requires_grad=True)
    w = torch.randn(3, 4, 3, 3, generator=g, requires_grad=True)
    s = torch.randn(2, 4, generator=g, requires_grad=True)
    nz, b = torch.randn(2, 1, 12, 12, generator=g), torch.randn(3, generator=g, requires_grad=True)

    def fn(x, w, s, nz, b):
        return gankern.modulated_conv2d(x, w, s, up=2, padding=1, resample_filter=F4, noise=nz, bias=b,
                                        act="lrelu", fused_modconv=fused, clamp=256.0)

    torch._dynamo.reset()
    y = torch.compile(fn, fullgraph=True)(x, w, s, nz, b)
    want = fn(x, w, s, nz, b)
    torch.testing.assert_close(y, want)
    gy = torch.randn(y.shape, generator=g)
    got = torch.autograd.grad(y, [x, w, s, b], gy)
    exp = torch.autograd.grad(want, [x, w, s, b], gy)
    for a, e in zip(got, exp):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_bad_inputs():
    x, w, s = torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3), torch.randn(2, 3)
    with pytest.raises(ValueError, match="styles"):
        gankern.modulated_conv2d(x, w, torch.randn(2, 4))
    with pytest.raises(ValueError, match="styles"):
        gankern.modulated_conv2d(x, w, torch.randn(3, 3))
    with pytest.raises(ValueError, match="styles"):
        gankern.modulated_conv2d(x, w, torch.randn(2, 3, 1))
    with pytest.raises(ValueError, match="weight"):
        gankern.modulated_conv2d(x, torch.randn(4, 2, 3, 3), s)
    with pytest.raises(ValueError, match="weight"):
        gankern.modulated_conv2d(x, torch.randn(4, 3, 3), s)
    with pytest.raises(ValueError, match="x"):
        gankern.modulated_conv2d(torch.randn(3, 5, 5), w, s)
    with pytest.raises(TypeError, match="x"):
        gankern.modulated_conv2d(x.long(), w, s)
    with pytest.raises(TypeError, match="weight"):
        gankern.modulated_conv2d(x, w.int(), s)
    with pytest.raises(TypeError, match="styles"):
        gankern.modulated_conv2d(x, w, s.long())
    with pytest.raises(TypeError, match="styles"):
        gankern.modulated_conv2d(x, w, [[1.0] * 3] * 2)
    with pytest.raises(TypeError, match="up"):
        gankern.modulated_conv2d(x, w, s, up=1.5)
    with pytest.raises(ValueError, match="down"):
        gankern.modulated_conv2d(x, w, s, down=0)
    with pytest.raises(ValueError, match="padding"):
        gankern.modulated_conv2d(x, w, s, padding=[1, 2, 3])
    with pytest.raises(ValueError, match="noise"):
        gankern.modulated_conv2d(x, w, s, padding=1, noise=torch.randn(2, 1, 4, 5))
    with pytest.raises(ValueError, match="bias"):
        gankern.modulated_conv2d(x, w, s, bias=torch.randn(3))
    with pytest.raises(TypeError, match="fused_modconv"):
        gankern.modulated_conv2d(x, w, s, fused_modconv=1)
    with pytest.raises(ValueError, match="resample_filter"):
        gankern.modulated_conv2d(x, w, s, up=2, resample_filter=torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="no output"):
        gankern.modulated_conv2d(torch.randn(2, 3, 2, 2), w, s)
    with pytest.raises(ValueError, match="act|activation"):
        gankern.modulated_conv2d(x, w, s, act="nope")


# ---- layers -------------------------------------------------------------------------------------

def _sg2_layer_eager(layer, x, w):
    """StyleGAN2's SynthesisLayer (up 1, noise_mode="const") from its published semantics."""
    from gankern.bench.modulated_conv import stylegan2_synthesis_layer
    return stylegan2_synthesis_layer(layer, x, w, layer.noise_const[None, None], fused_modconv=True)


def test_synthesis_layer_state_dict_and_stylegan2_semantics():
    torch.manual_seed(0)
    layer = gankern.nn.SynthesisLayer(6, 5, 8, resolution=7, conv_clamp=256)
    assert set(layer.state_dict()) == {"affine.weight", "affine.bias", "weight", "noise_const", "noise_strength",
                                       "bias", "resample_filter"}
    assert layer.affine.weight.shape == (6, 8) and layer.noise_const.shape == (7, 7)
    with torch.no_grad():
        layer.noise_strength.fill_(0.3)
        layer.bias.normal_()
    x, w = torch.randn(3, 6, 7, 7), torch.randn(3, 8)
    want = _sg2_layer_eager(layer, x, w)
    for fused in (True, False, None):
        torch.testing.assert_close(layer(x, w, noise_mode="const", fused_modconv=fused), want, rtol=1e-4, atol=1e-4)
    assert layer(x, w, noise_mode="random").shape == want.shape
    with pytest.raises(ValueError, match="noise_mode"):
        layer(x, w, noise_mode="sometimes")


def test_synthesis_layer_up2_and_torgb():
    torch.manual_seed(1)
    layer = gankern.nn.SynthesisLayer(4, 3, 8, resolution=10, up=2, use_noise=False)
    x, w = torch.randn(2, 4, 5, 5), torch.randn(2, 8)
    styles = layer.affine(w)
    want = ref.modulated_conv2d(x.double(), layer.weight.double(), styles.double(), True, (1, 1, 1, 1), 2, 1,
                                layer.resample_filter.double(), None, True, False, False, layer.bias.double(),
                                "lrelu", 0.2, 2 ** 0.5, None)
    assert_close(layer(x, w), want, scale=want.abs().max().item())
    rgb = gankern.nn.ToRGBLayer(4, 3, 8)
    assert set(rgb.state_dict()) == {"affine.weight", "affine.bias", "weight", "bias"}
    st = rgb.affine(w) / 2  # weight_gain = 1/sqrt(4*1*1)
    want = torch.nn.functional.conv2d(x * st[:, :, None, None], rgb.weight) + rgb.bias[:, None, None]
    torch.testing.assert_close(rgb(x, w), want, rtol=1e-4, atol=1e-5)


def test_synthesis_layer3():
    torch.manual_seed(2)
    f = [0.1, 0.2, 0.4, 0.2, 0.1]
    layer = gankern.nn.SynthesisLayer3(4, 3, 8, up_filter=f, down_filter=f, up=2, down=2, padding=4)
    assert set(layer.state_dict()) == {"affine.weight", "affine.bias", "weight", "bias", "magnitude_ema",
                                       "up_filter", "down_filter"}
    x, w = torch.randn(2, 4, 9, 9), torch.randn(2, 8)
    y = layer(x, w, update_emas=True)
    assert layer.magnitude_ema.item() != 1.0
    # the same layer, spelled out: modulated conv (input gain after demodulation), filtered_lrelu
    ig = layer.magnitude_ema.rsqrt()
    c = ref.modulated_conv2d(x.double(), layer.weight.double(), layer.affine(w).double(), True, (2, 2, 2, 2), 1, 1,
                             None, None, True, True, False, input_gain=ig.double())
    want = gankern.filtered_lrelu(c.float(), layer.up_filter, layer.down_filter, layer.bias, up=2, down=2, padding=4,
                                  clamp=256)
    torch.testing.assert_close(layer(x, w), want, rtol=1e-4, atol=1e-4)
    del y
    torgb = gankern.nn.SynthesisLayer3(4, 3, 8, up=1, down=1, conv_kernel=1, is_torgb=True)
    assert torgb(x, w).shape == (2, 3, 9, 9)


@pytest.mark.parametrize("which", ["synthesis", "torgb", "synthesis3"])
def test_layers_torch_compile_fullgraph(which):
    torch.manual_seed(3)
    if which == "synthesis":
        layer, x = gankern.nn.SynthesisLayer(4, 3, 8, resolution=6, conv_clamp=256), torch.randn(2, 4, 6, 6)
        call = lambda layer, x, w: layer(x, w, noise_mode="const")  # noqa: E731
    elif which == "torgb":
        layer, x = gankern.nn.ToRGBLayer(4, 3, 8), torch.randn(2, 4, 6, 6)
        call = lambda layer, x, w: layer(x, w)  # noqa: E731
    else:
        layer = gankern.nn.SynthesisLayer3(4, 3, 8, up_filter=[1, 2, 1], down_filter=[1, 2, 1], padding=2)
        x = torch.randn(2, 4, 6, 6)
        call = lambda layer, x, w: layer(x, w)  # noqa: E731
    w = torch.randn(2, 8, requires_grad=True)
    x.requires_grad_()
    torch._dynamo.reset()
    y = torch.compile(call, fullgraph=True)(layer, x, w)
    want = call(layer, x, w)
    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)
    gy = torch.randn(y.shape)
    params = [x, w, layer.weight, layer.bias]
    for a, b in zip(torch.autograd.grad(y, params, gy), torch.autograd.grad(want, params, gy)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_bench_baselines_match_gankern():
    """The StyleGAN2 formulations `gankern bench --ops modulated_conv` times do the same work."""
    from gankern.bench import modulated_conv as B
    g = torch.Generator().manual_seed(10)
    x, w, s = torch.randn(2, 6, 5, 5, generator=g), torch.randn(6, 6, 3, 3, generator=g), torch.randn(2, 6, generator=g)
    nz = torch.randn(2, 1, 5, 5, generator=g)
    for fused in (True, False):
        torch.testing.assert_close(B.stylegan2_modulated_conv2d(x, w, s, nz, fused_modconv=fused),
                                   gankern.modulated_conv2d(x, w, s, padding=1, noise=nz), rtol=1e-4, atol=1e-4)
    a = B._layer_setup((2, 6, 5, 5), torch.device("cpu"), torch.float32, True)()
    ours = B._fwd_bwd(lambda a: B._gk_layer(a, None))(a)
    for fused in (True, False):
        theirs = B._fwd_bwd(lambda a: B.stylegan2_synthesis_layer(a[0], a[1], a[2], a[3], fused))(a)
        for p, q in zip(ours, theirs):
            assert (p is None) == (q is None)
            if p is not None:
                torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-4)
