"""GroupNormAct, BatchNormAct2d, ConvNormAct, fold_batchnorm against the torch modules they replace."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gankern
from gankern.nn import Activation, BatchNormAct2d, ConvNormAct, GroupNormAct


def _close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_group_norm_act_loads_torch_state_dict():
    torch.manual_seed(0)
    ref = nn.GroupNorm(8, 32)
    nn.init.normal_(ref.weight)
    nn.init.normal_(ref.bias)
    layer = GroupNormAct(8, 32, act="silu")
    layer.load_state_dict(ref.state_dict())
    assert set(layer.state_dict()) == set(ref.state_dict())
    x = torch.randn(2, 32, 9, 9).to(memory_format=torch.channels_last)
    _close(layer(x), F.silu(ref(x)))
    temb, scale = torch.randn(2, 32), torch.randn(2, 32) * 0.1
    _close(layer(x, temb=temb, scale=scale), F.silu(ref(x + temb[..., None, None]) * (1 + scale[..., None, None])))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("cl", [False, True])
def test_batch_norm_act_matches_torch_over_steps(momentum, cl):
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(6, momentum=momentum)
    layer = BatchNormAct2d(6, momentum=momentum, act="lrelu")
    nn.init.normal_(ref.weight)
    layer.load_state_dict(ref.state_dict())
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    for step in range(4):
        x = torch.randn(4, 6, 5, 7) * (step + 1) + step
        if cl:
            x = x.to(memory_format=torch.channels_last)
        y_ref = F.leaky_relu(ref(x), 0.2)
        y = layer(x)
        _close(y, y_ref)
        for o, yy in ((opt_ref, y_ref), (opt, y)):
            o.zero_grad()
            (yy * torch.linspace(-1, 1, yy.numel()).reshape(yy.shape)).sum().backward()
            o.step()
    for k, v in ref.state_dict().items():
        _close(layer.state_dict()[k], v) if v.is_floating_point() else torch.testing.assert_close(
            layer.state_dict()[k], v)
    ref.eval()
    layer.eval()
    _close(layer(x), F.leaky_relu(ref(x), 0.2))


def test_batch_norm_act_without_running_stats():
    ref = nn.BatchNorm2d(4, track_running_stats=False)
    layer = BatchNormAct2d(4, track_running_stats=False, act=None)
    x = torch.randn(3, 4, 5, 5)
    _close(layer(x), ref(x))
    layer.eval()
    ref.eval()
    _close(layer(x), ref(x))


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("norm", ["batch", "group", None])
def test_conv_norm_act_matches_sequential(norm, transposed):
    torch.manual_seed(0)
    m = ConvNormAct(8, 16, 3, stride=2, padding=1, norm=norm, act="relu", transposed=transposed, num_groups=4)
    conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(8, 16, 3, stride=2, padding=1, bias=norm is None)
    normm = {"batch": nn.BatchNorm2d(16), "group": nn.GroupNorm(4, 16), None: nn.Identity()}[norm]
    ref = nn.Sequential(conv, normm, nn.ReLU())
    ref.load_state_dict(m.state_dict())  # the same keys: "0.*", "1.*"
    x = torch.randn(2, 8, 9, 9)
    _close(m(x), ref(x))


@pytest.mark.parametrize("transposed", [False, True])
def test_conv_norm_act_fuse(transposed):
    torch.manual_seed(0)
    m = ConvNormAct(6, 8, 3, padding=1, norm="batch", act="lrelu", transposed=transposed, groups=2)
    for _ in range(3):
        m(torch.randn(4, 6, 7, 7) * 2 + 1)  # training steps move the running statistics
    with torch.no_grad():
        m[1].weight.normal_()
        m[1].bias.normal_()
    m.eval()
    x = torch.randn(2, 6, 7, 7)
    want = m(x)
    with pytest.raises(RuntimeError, match="eval"):
        ConvNormAct(6, 8, 3, norm="batch").fuse()
    m.fuse()
    assert isinstance(m[1], Activation) and m.norm is None
    _close(m(x), want, 1e-4)


def test_fold_batchnorm_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Sequential(nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(6), nn.SiLU()),
        ConvNormAct(6, 4, 3, padding=1, norm="batch", act="gelu"),
        ConvNormAct(4, 4, 1, norm="group", num_groups=2),
    )
    for _ in range(3):
        model(torch.randn(4, 3, 8, 8))
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            with torch.no_grad():
                mod.weight.normal_()
                mod.bias.normal_()
    with pytest.raises(ValueError, match="eval"):
        gankern.fold_batchnorm(model)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    want = model(x)
    folded = gankern.fold_batchnorm(model)
    assert folded == [("0", "1"), ("3.0", "3.1"), ("4.0", "4.1")]
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in model.modules())
    _close(model(x), want, 1e-4)


def test_group_norm_act_compiles_fullgraph():
    """Inductor traces through the custom ops (fake kernels, autograd) without graph breaks."""
    torch._dynamo.reset()
    layer = GroupNormAct(4, 16, act="gelu")
    x = torch.randn(2, 16, 6, 6).to(memory_format=torch.channels_last)
    temb = torch.randn(2, 16)
    compiled = torch.compile(layer, fullgraph=True)
    xr, tr = x.clone().requires_grad_(), temb.clone().requires_grad_()
    y = compiled(xr, temb=tr)
    x2, t2 = x.clone().requires_grad_(), temb.clone().requires_grad_()
    want = F.gelu(F.group_norm(x2 + t2[..., None, None], 4, layer.weight, layer.bias))
    _close(y, want)
    y.sum().backward()
    want.sum().backward()
    _close(xr.grad, x2.grad, 1e-4)
    _close(tr.grad, t2.grad, 1e-4)


def test_layer_bad_arguments():
    with pytest.raises(ValueError, match="act"):
        GroupNormAct(2, 4, act="tanh")
    with pytest.raises(ValueError, match="norm"):
        ConvNormAct(2, 4, 3, norm="layer")
    with pytest.raises(ValueError, match="num_groups|divisible"):
        GroupNormAct(3, 4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_layers_run_the_cpu_kernels_in_half_precision(dtype, monkeypatch):
    """Half-precision activations (e.g. from a convolution under torch.autocast) go to the CPU
    kernels in their dtype, with fp32 parameters."""
    from gankern.ops import norm as ops_norm
    calls = []
    real = ops_norm._CpuKernels.group_forward
    monkeypatch.setattr(ops_norm._CpuKernels, "group_forward", lambda self, x, *a: calls.append(x.dtype) or
                        real(self, x, *a))
    torch.manual_seed(0)
    ref = nn.GroupNorm(4, 16)
    layer = GroupNormAct(4, 16, act="silu")
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(2, 16, 7, 7)
    conv = nn.Conv2d(16, 16, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16) if dtype == torch.bfloat16 else torch.no_grad():
        h = conv(x) if dtype == torch.bfloat16 else conv(x).to(dtype)
        y = layer(h)
    assert h.dtype == dtype and y.dtype == dtype and calls == [dtype]
    want = F.silu(ref(h.float()))
    torch.testing.assert_close(y.float(), want, rtol=2e-2, atol=2e-2)
    bn = BatchNormAct2d(16, act="relu").train()
    tbn = nn.BatchNorm2d(16).train()
    yb = bn(h.detach())
    assert yb.dtype == dtype
    torch.testing.assert_close(yb.float(), F.relu(tbn(h.detach().float())), rtol=2e-2, atol=2e-2)
