"""gankern.optimize on foreign models: same outputs and state_dict before and after patching."""
import copy

import pytest
import torch
from torch import nn

import gankern
from gankern.nn import BatchNormAct2d, GroupNormAct

from conftest import assert_close


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.LeakyReLU(0.1),
        nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 1), nn.GroupNorm(2, 8),
    )


def _randomize_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def test_sequential_cnn_eval_folds_and_fuses():
    model = _cnn()
    _randomize_bn(model)
    model.eval()
    before = copy.deepcopy(model)
    keys = set(model.state_dict())
    report = gankern.optimize(model)
    assert [bn for _, bn in report.folded] == ["4", "7"]
    assert isinstance(model[1], GroupNormAct) and model[1].act == "silu" and isinstance(model[2], nn.Identity)
    assert isinstance(model[10], GroupNormAct) and model[10].act is None
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert_close(model(x), before(x).double(), what="optimized eval model")
    assert "folded 4 into 3" in str(report)
    # folded BatchNorms are gone from the state_dict; everything else is unchanged
    assert {k for k in keys if not k.startswith(("4.", "7."))} <= set(model.state_dict())


def test_sequential_cnn_training_keeps_batchnorm_and_gradients():
    model = _cnn()
    want_model = copy.deepcopy(model).double()  # the float64 original is the judge
    keys = model.state_dict().keys()
    report = gankern.optimize(model)
    assert report.folded == []
    assert isinstance(model[4], BatchNormAct2d) and model[4].act == "lrelu" and model[4].alpha == 0.1
    assert list(model.state_dict().keys()) == list(keys), "state_dict keys must not change"
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    xd = x.detach().double().requires_grad_()
    # A random projection as the loss: mean(y**2) after a norm is nearly constant in the inputs,
    # whose gradients would then be pure rounding noise.
    r = torch.randn(4, 8, 16, 16)
    y, want = model(x), want_model(xd)
    assert_close(y, want, what="training forward")
    (y * r).sum().backward()
    (want * r.double()).sum().backward()
    assert_close(x.grad, xd.grad, what="input gradient")
    for (name, p), q in zip(model.named_parameters(), want_model.parameters()):
        if name in ("3.bias", "6.bias"):  # conv bias before a training-mode BatchNorm: gradient is 0
            continue
        assert_close(p.grad, q.grad, what=f"grad of {name}")
    for name in ("4.running_mean", "4.running_var", "7.running_var"):
        assert_close(model.state_dict()[name], want_model.state_dict()[name], what=name)


def test_refuses_non_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        gankern.optimize("unet")


diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional integration")


@pytest.mark.parametrize("time_norm", ["default", "scale_shift"])
def test_diffusers_unet_matches(time_norm):
    from diffusers import UNet2DModel
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(32, 64), norm_num_groups=8, resnet_time_scale_shift=time_norm,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    with torch.no_grad():  # non-trivial norm affine parameters
        for m in unet.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    before = copy.deepcopy(unet)
    keys = list(unet.state_dict())
    report = gankern.optimize(unet)
    patched = [n for n, what in report.replaced if "ResnetBlock2D" in what]
    assert len(patched) == sum(type(m).__name__ == "ResnetBlock2D" for m in before.modules())
    assert list(unet.state_dict()) == keys
    from diffusers.models.resnet import ResnetBlock2D
    assert all(isinstance(m, ResnetBlock2D) for m in unet.modules() if "ResnetBlock2D" in type(m).__name__)
    before = before.double()
    x, t = torch.randn(2, 3, 16, 16, requires_grad=True), torch.tensor([10, 500])
    xd = x.detach().double().requires_grad_()
    y, want = unet(x, t).sample, before(xd, t).sample
    assert_close(y, want, what="UNet output")
    r = torch.randn_like(y)
    (gx,) = torch.autograd.grad((y * r).sum(), [x])
    (wx,) = torch.autograd.grad((want * r.double()).sum(), [xd])
    assert_close(gx, wx, what="UNet input gradient")
    # patching twice changes nothing
    assert not [w for _, w in gankern.optimize(unet).replaced if "ResnetBlock2D" in w]
