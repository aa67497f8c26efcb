"""gankern.optimize on other people's models: same outputs and gradients, same Parameter objects,
same state_dict keys, picklable, idempotent; diffusers' UNets, VAE and a whole pipeline."""
import copy
import io

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn

import gankern
from gankern.nn import BatchNormAct2d, GroupNormAct
from gankern.optimize import _TracedForward

from conftest import assert_close


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.LeakyReLU(0.1),
        nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 1), nn.GroupNorm(2, 8),
    )


def _randomize_norms(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def _save_load(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def _assert_close_deep(out, ref, what):
    """Gradients of a whole model's parameters accumulate fp32 rounding over every layer above
    them: judged by the worst error relative to the reference's RMS, at 1e-4."""
    err = (out.double() - ref.double()).abs().max().item()
    rms = ref.double().pow(2).mean().sqrt().item() + 1e-30
    assert err <= 1e-4 * rms, f"{what}: max error {err:.3g} > 1e-4 * RMS {rms:.3g}"


# Parameters whose exact gradient is 0, so that both sides hold only rounding noise: an attention
# key bias (softmax is invariant to it).
_ZERO_GRAD = ("to_k.bias",)


def _check_training(model, want_model, x, params_skip=()):
    """Forward and gradients (input and every parameter) of model against the float64 original."""
    x = x.clone().requires_grad_()
    xd = x.detach().double().requires_grad_()
    y, want = model(x), want_model(xd)
    assert_close(y, want, what="training forward")
    # A random projection as the loss: mean(y**2) after a norm is nearly constant in the inputs.
    r = torch.randn(y.shape)
    (y * r).sum().backward()
    (want * r.double()).sum().backward()
    assert_close(x.grad, xd.grad, what="input gradient")
    for (name, p), q in zip(model.named_parameters(), want_model.parameters()):
        if name not in params_skip and not name.endswith(_ZERO_GRAD):
            _assert_close_deep(p.grad, q.grad, what=f"grad of {name}")


# ---- plain PyTorch models --------------------------------------------------------------------

def test_sequential_cnn_eval_keeps_keys_and_outputs():
    model = _randomize_norms(_cnn()).eval()
    before = copy.deepcopy(model)
    keys = list(model.state_dict())
    report = gankern.optimize(model)
    assert report.folded == [], "folding changes the state_dict: only with fold_bn=True"
    assert list(model.state_dict()) == keys
    assert type(model[1]) is GroupNormAct and model[1].act == "silu" and isinstance(model[2], nn.Identity)
    assert type(model[4]) is BatchNormAct2d and model[4].act == "lrelu" and model[4].alpha == 0.1
    assert type(model[10]) is GroupNormAct and model[10].act is None
    model.load_state_dict(before.state_dict(), strict=True)  # the original checkpoint still loads
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert_close(model(x), before.double()(x.double()), what="optimized eval model")


def test_fold_bn_is_explicit_and_reported():
    model = _randomize_norms(_cnn()).eval()
    before = copy.deepcopy(model).double()
    report = gankern.optimize(model, fold_bn=True)
    assert [bn for _, bn in report.folded] == ["4", "7"]
    assert "folded   4 into 3 (state_dict keys of 4 removed)" in str(report)
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert_close(model(x), before(x.double()), what="folded model")
    with pytest.raises(ValueError, match="eval-mode"):
        gankern.optimize(_cnn(), fold_bn=True)


def test_training_keeps_parameter_objects_and_gradients():
    model = _randomize_norms(_cnn())
    params = {n: p for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # built before optimize()
    want_model = copy.deepcopy(model).double()
    keys = list(model.state_dict())
    gankern.optimize(model)
    assert all(p is params[n] for n, p in model.named_parameters()), "Parameter objects must be kept"
    assert all(b is buffers[n] for n, b in model.named_buffers()), "buffer objects must be kept"
    assert list(model.state_dict()) == keys
    _check_training(model, want_model, torch.randn(4, 3, 8, 8), params_skip=("3.bias", "6.bias"))
    for name in ("4.running_mean", "4.running_var", "7.running_var"):
        assert_close(model.state_dict()[name], want_model.state_dict()[name], what=name)
    w_before = model[1].weight.detach().clone()
    opt.step()  # the optimizer made before optimize() still updates the fused norm's weight
    assert not torch.equal(model[1].weight, w_before)


def test_train_eval_switch_and_twice_is_noop():
    model = _randomize_norms(_cnn())
    ref = copy.deepcopy(model).double()
    first = gankern.optimize(model)
    second = gankern.optimize(model)
    assert first.replaced and second.replaced == [] and second.passes_saved == 0
    x = torch.randn(4, 3, 8, 8)
    for mode in ("eval", "train", "eval"):
        getattr(model, mode)(), getattr(ref, mode)()
        with torch.no_grad():
            assert_close(model(x), ref(x.double()), what=f"{mode} mode")


def test_shared_group_norm_stays_one_module():
    torch.manual_seed(0)
    gn = nn.GroupNorm(2, 8)
    a = nn.Sequential(nn.Conv2d(8, 8, 1), gn, nn.SiLU())
    b = nn.Sequential(gn, nn.Conv2d(8, 8, 1))  # the same norm, no activation after it
    model = nn.Sequential(a, b)
    _randomize_norms(model)
    ref = copy.deepcopy(model).double()
    report = gankern.optimize(model)
    assert model[0][1] is model[1][0], "a shared module must stay one object"
    assert isinstance(model[0][2], nn.SiLU), "the activation stays: the other use of the norm has none"
    assert any("shared" in why for _, why in report.left_alone)
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        assert_close(model(x), ref(x.double()), what="shared norm model")


def test_hooks_are_respected():
    model = _cnn()
    seen = []
    model[1].register_forward_hook(lambda m, i, o: seen.append(o.min().item()))
    report = gankern.optimize(model)
    assert isinstance(model[2], nn.SiLU) and type(model[1]) is nn.GroupNorm
    assert any("hooks" in why for _, why in report.left_alone)
    model(torch.randn(2, 3, 8, 8))
    assert seen and seen[0] < 0, "the hook still sees the norm's output (before the SiLU)"


def test_pickle_deepcopy_and_inplace_false():
    model = _randomize_norms(_cnn()).eval()
    fast = gankern.optimize(model, inplace=False)
    assert type(model[1]) is nn.GroupNorm, "inplace=False must not touch the original"
    assert type(fast[1]) is GroupNormAct and fast.gankern_report.replaced
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = model(x)
        for m in (fast, copy.deepcopy(fast), _save_load(fast)):
            assert_close(m(x), want.double(), what="copy / pickled model")


def test_group_norm_beyond_kernel_dims_falls_back():
    """GroupNorm on 4 spatial dims (the kernels take at most 3) and on a bf16 CPU tensor."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.GroupNorm(2, 4), nn.SiLU())
    ref = copy.deepcopy(model)
    gankern.optimize(model)
    x = torch.randn(2, 4, 3, 3, 3, 3)
    with torch.no_grad():
        assert_close(model(x), ref.double()(x.double()), what="6-D input")
        xb = torch.randn(2, 4, 5, 5).bfloat16()
        assert_close(model.bfloat16()(xb), ref.bfloat16()(xb), dtype=torch.bfloat16, what="bf16 CPU input")


def test_refuses_non_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        gankern.optimize("unet")
    with pytest.raises(TypeError, match="fold_bn must be a bool"):
        gankern.optimize(nn.ReLU(), fold_bn=None)


class _BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock, written out (torchvision is not a dependency)."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class _ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(_BasicBlock(16, 16), _BasicBlock(16, 16))
        self.layer2 = nn.Sequential(_BasicBlock(16, 32, 2), _BasicBlock(32, 32))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def test_resnet_training_fusion_and_eval_folding():
    torch.manual_seed(0)
    model = _randomize_norms(_ResNet())
    want = copy.deepcopy(model).double()
    report = gankern.optimize(model)
    assert type(model.bn1) is BatchNormAct2d and model.bn1.act == "relu" and isinstance(model.relu, nn.Identity)
    # The blocks' relu module also runs after the residual add: bn1 takes the relu, the module
    # stays for the post-add call, and the block's forward is re-generated without the first call.
    block = model.layer1[0]
    assert type(block.bn1) is BatchNormAct2d and block.bn1.act == "relu" and isinstance(block.relu, nn.ReLU)
    assert isinstance(block.__dict__.get("forward"), _TracedForward)
    assert ("bn1", "BatchNormAct2d(act='relu') absorbing the ReLU after it") in report.replaced
    assert any(n == "layer2.1" and "forward re-generated" in what for n, what in report.replaced)
    assert gankern.optimize(model).replaced == []  # twice: nothing more to do
    _check_training(model, want, torch.randn(4, 3, 32, 32))
    for m in (copy.deepcopy(model), _save_load(model)):
        b = m.layer1[0]
        assert b.forward.owner is b, "the re-generated forward must follow its module through copies"
        with torch.no_grad():  # eval: a training-mode call would update the running statistics
            x = torch.randn(2, 3, 16, 16)
            assert_close(m.eval()(x), copy.deepcopy(model).eval()(x).double(), what="copy")
    model.eval(), want.eval()
    keys = set(model.state_dict())
    report = gankern.optimize(model, fold_bn=True)
    folded = {bn for _, bn in report.folded}
    assert {"layer1.0.bn1", "layer1.0.bn2", "layer2.0.downsample.1"} <= folded
    assert {k.rsplit(".", 1)[0] for k in keys - set(model.state_dict())} == folded
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_close(model(x), want(x.double()), what="folded ResNet")


class _FunctionalActs(nn.Module):
    """Activations written as functions in forward(): F.relu(self.bn(x)) and friends."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(4, 8)
        self.gn2 = nn.GroupNorm(2, 8)
        self.bn_out = nn.BatchNorm2d(8)

    def forward(self, x, shift: float = 0.0):
        h = F.relu(self.bn(self.conv(x)))
        h = F.leaky_relu(self.gn(h), 0.1) + shift
        h = self.gn2(h).relu_()
        return torch.sigmoid(self.bn_out(h))  # sigmoid: not a norm-kernel activation, left


class _TrainingBranch(nn.Module):
    """A forward that differs between training and eval: torch.fx would bake one branch in."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return F.relu(self.bn(x)) if self.training else F.silu(self.bn(x))


def test_functional_activations_are_fused_by_rewriting_the_forward():
    torch.manual_seed(0)
    model = _randomize_norms(_FunctionalActs())
    want = copy.deepcopy(model).double()
    keys, params = list(model.state_dict()), list(model.parameters())
    report = gankern.optimize(model)
    assert (model.bn.act, model.gn.act, model.gn2.act) == ("relu", "lrelu", "relu") and model.gn.alpha == 0.1
    assert type(model.bn_out) is nn.BatchNorm2d
    assert isinstance(model.__dict__["forward"], _TracedForward)
    assert list(model.state_dict()) == keys and all(p is q for p, q in zip(model.parameters(), params))
    assert gankern.optimize(model).replaced == []
    _check_training(model, want, torch.randn(3, 4, 6, 6), params_skip=("conv.bias",))  # exact gradient 0
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        assert_close(model(x, shift=0.5), want(x.double(), shift=0.5), what="keyword argument")
        model.eval(), want.eval()
        for m in (model, copy.deepcopy(model), _save_load(model)):
            assert_close(m(x), want(x.double()), what="eval / copies")
    torch._dynamo.reset()
    assert_close(torch.compile(model, fullgraph=True)(x), want(x.double()), what="compiled rewritten forward")

    branchy = _TrainingBranch()
    report = gankern.optimize(branchy)
    assert type(branchy.bn) is nn.BatchNorm2d and "forward" not in branchy.__dict__, \
        "a forward that depends on self.training is not re-generated from one traced branch"


def _dcgan():
    torch.manual_seed(0)
    g = nn.Sequential(
        nn.ConvTranspose2d(16, 32, 4, 1, 0, bias=False), nn.BatchNorm2d(32), nn.ReLU(True),
        nn.ConvTranspose2d(32, 16, 4, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(True),
        nn.ConvTranspose2d(16, 3, 4, 2, 1, bias=False), nn.Tanh())
    d = nn.Sequential(
        nn.Conv2d(3, 16, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(16, 32, 4, 2, 1, bias=False), nn.BatchNorm2d(32), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(32, 1, 4, 1, 0, bias=False))
    return nn.Sequential(g, d)


def test_dcgan_training():
    model = _randomize_norms(_dcgan())
    want = copy.deepcopy(model).double()
    report = gankern.optimize(model)
    assert sum("BatchNormAct2d" in what for _, what in report.replaced) == 3
    _check_training(model, want, torch.randn(4, 16, 1, 1))


# ---- diffusers -------------------------------------------------------------------------------

diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional integration")


def _unet2d(time_norm="default"):
    """DDPM-CIFAR10's UNet2DModel config, narrowed for CI."""
    from diffusers import UNet2DModel
    torch.manual_seed(0)
    return _randomize_norms(UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
        norm_num_groups=8, resnet_time_scale_shift=time_norm,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D")))


def _unet_cond():
    """Stable Diffusion 1.5's UNet2DConditionModel config, narrowed for CI."""
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    return _randomize_norms(UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8))


def _vae():
    """Stable Diffusion's AutoencoderKL config, narrowed for CI."""
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    return _randomize_norms(AutoencoderKL(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, layers_per_block=1))


def _no_plain_group_norm_with_silu(model):
    """Every GroupNorm -> SiLU of the model now runs as one fused pass."""
    from gankern.integrations.diffusers import FusedResnetBlock2D
    from diffusers.models.resnet import ResnetBlock2D
    blocks = [m for m in model.modules() if isinstance(m, ResnetBlock2D)]
    assert blocks and all(type(m) is FusedResnetBlock2D for m in blocks)
    assert model.conv_norm_out.act == "silu" and isinstance(model.conv_act, nn.Identity)


@pytest.mark.parametrize("time_norm", ["default", "scale_shift"])
def test_unet2d_outputs_and_gradients(time_norm):
    unet = _unet2d(time_norm)
    want = copy.deepcopy(unet).double()
    keys = list(unet.state_dict())
    params = list(unet.parameters())
    report = gankern.optimize(unet)
    _no_plain_group_norm_with_silu(unet)
    assert list(unet.state_dict()) == keys and all(p is q for p, q in zip(unet.parameters(), params))
    assert any("channels_last" in what for _, what in report.layouts)
    t = torch.tensor([10, 500])
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    xd = x.detach().double().requires_grad_()
    y, ref = unet(x, t).sample, want(xd, t).sample
    assert_close(y, ref, what="UNet2DModel output")
    r = torch.randn_like(y)
    (y * r).sum().backward()
    (ref * r.double()).sum().backward()
    assert_close(x.grad, xd.grad, what="UNet2DModel input gradient")
    for (name, p), q in zip(unet.named_parameters(), want.parameters()):
        if not name.endswith(_ZERO_GRAD):
            _assert_close_deep(p.grad, q.grad, what=f"grad of {name}")
    assert gankern.optimize(unet).replaced == []  # twice: nothing more to do


def test_unet2d_condition_outputs_and_pickle():
    unet = _unet_cond()
    want = copy.deepcopy(unet).double()
    report = gankern.optimize(unet)
    _no_plain_group_norm_with_silu(unet)
    assert any(n.endswith("attentions.0.norm") and "GroupNormAct" in what for n, what in report.replaced), \
        "the GroupNorm before Transformer2DModel's proj_in runs gankern's kernel"
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 7, 32)
    with torch.no_grad():
        ref = want(x.double(), t, ctx.double()).sample
        assert_close(unet(x, t, ctx).sample, ref, what="UNet2DConditionModel output")
        assert_close(_save_load(unet)(x, t, ctx).sample, ref, what="pickled UNet2DConditionModel")


def test_fused_transformer_blocks_match(monkeypatch):
    """The fused BasicTransformerBlock / GEGLU / Transformer2DModel forwards (installed when the
    native kernels exist; forced here on the reference backend) give diffusers' outputs and grads."""
    from diffusers.models.activations import GEGLU
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from gankern.integrations import diffusers as dif
    unet = _unet_cond().to(memory_format=torch.channels_last)
    want = copy.deepcopy(unet).double()
    for m in unet.modules():
        for base, fused in ((GEGLU, dif.FusedGEGLU), (BasicTransformerBlock, dif.FusedBasicTransformerBlock),
                            (Transformer2DModel, dif.FusedTransformer2DModel)):
            if type(m) is base:
                m.__class__ = fused
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    xd = x.detach().double().requires_grad_()
    t, ctx = torch.tensor([10, 500]), torch.randn(2, 7, 32)
    y, ref = unet(x, t, ctx).sample, want(xd, t, ctx.double()).sample
    assert_close(y, ref, what="fused transformer blocks")
    r = torch.randn_like(y)
    (y * r).sum().backward()
    (ref * r.double()).sum().backward()
    assert_close(x.grad, xd.grad, what="input gradient")
    for (name, p), q in zip(unet.named_parameters(), want.parameters()):
        if not name.endswith(_ZERO_GRAD):
            _assert_close_deep(p.grad, q.grad, what=f"grad of {name}")


def test_vae_encode_decode():
    vae = _vae()
    want = copy.deepcopy(vae).double()
    gankern.optimize(vae)
    for part in ("encoder", "decoder"):
        _no_plain_group_norm_with_silu(getattr(vae, part))
    with torch.no_grad():
        img = torch.randn(1, 3, 16, 16)
        assert_close(vae.encode(img).latent_dist.mean, want.encode(img.double()).latent_dist.mean, what="encode")
        z = torch.randn(1, 4, 8, 8)
        assert_close(vae.decode(z).sample, want.decode(z.double()).sample, what="decode")


def test_ada_group_norm_blocks_and_spatial_norm_left():
    """ResnetBlockCondNorm2D as diffusers builds it for time_embedding_norm="ada_group" (AdaGroupNorm
    + SiLU fused) and "spatial" (SpatialNorm: left, reported)."""
    from diffusers.models.resnet import ResnetBlockCondNorm2D
    from gankern.integrations.diffusers import FusedAdaGroupNorm, FusedResnetBlockCondNorm2D
    torch.manual_seed(0)
    ada = ResnetBlockCondNorm2D(in_channels=16, out_channels=32, temb_channels=12, groups=4,
                                time_embedding_norm="ada_group", down=True)
    spatial = ResnetBlockCondNorm2D(in_channels=32, out_channels=32, temb_channels=4, groups=4,
                                    time_embedding_norm="spatial")
    model = nn.ModuleList([ada, spatial])
    want = copy.deepcopy(model).double()
    report = gankern.optimize(model)
    assert type(ada) is FusedResnetBlockCondNorm2D and type(ada.norm1) is FusedAdaGroupNorm
    assert type(spatial) is ResnetBlockCondNorm2D
    assert any(n == "1.norm1" and "SpatialNorm" in why for n, why in report.left_alone)
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    temb = torch.randn(2, 12, requires_grad=True)
    xd, tembd = (t.detach().double().requires_grad_() for t in (x, temb))
    y, ref = ada(x, temb), want[0](xd, tembd)
    assert_close(y, ref, what="ada_group block")
    r = torch.randn_like(y)
    (y * r).sum().backward()
    (ref * r.double()).sum().backward()
    assert_close(x.grad, xd.grad, what="input gradient")
    assert_close(temb.grad, tembd.grad, what="embedding gradient")
    for (name, p), q in zip(ada.named_parameters(), want[0].parameters()):
        _assert_close_deep(p.grad, q.grad, what=f"grad of {name}")
    zq = torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        assert_close(spatial(y.detach(), zq), want[1](y.detach().double(), zq.double()), what="spatial block")
        assert_close(_save_load(ada)(x, temb), y.detach().double(), what="pickled")


def test_time_embedding_mlp_fused():
    from diffusers.models.embeddings import TimestepEmbedding
    from gankern.integrations.diffusers import FusedTimestepEmbedding
    torch.manual_seed(0)
    for act in ("silu", "gelu", "relu"):
        emb = TimestepEmbedding(16, 32, act_fn=act, cond_proj_dim=8)
        want = copy.deepcopy(emb).double()
        report = gankern.optimize(emb)
        assert type(emb) is FusedTimestepEmbedding and report.replaced
        s, c = torch.randn(3, 16, requires_grad=True), torch.randn(3, 8)
        sd = s.detach().double().requires_grad_()
        y, ref = emb(s, c), want(sd, c.double())
        assert_close(y, ref, what=f"{act} time embedding")
        y.sum().backward(), ref.sum().backward()
        assert_close(s.grad, sd.grad, what=f"{act} time embedding gradient")
        assert_close(emb.linear_1.bias.grad, want.linear_1.bias.grad, what="bias gradient")
    assert type(_unet_cond_optimized().time_embedding) is FusedTimestepEmbedding


def _unet_cond_optimized():
    unet = _unet_cond()
    gankern.optimize(unet)
    return unet


def test_torch_compile_adds_no_graph_breaks():
    import torch._dynamo
    from diffusers.models.resnet import ResnetBlock2D
    torch.manual_seed(0)
    block = _randomize_norms(ResnetBlock2D(in_channels=16, out_channels=32, temb_channels=8, groups=4))
    model = _cnn()
    gankern.optimize(block), gankern.optimize(model)
    x, temb = torch.randn(2, 16, 6, 6), torch.randn(2, 8)
    want = block(x, temb)
    torch._dynamo.reset()
    assert_close(torch.compile(block, fullgraph=True)(x, temb), want.double(), what="compiled fused block")
    explain = torch._dynamo.explain(model)(torch.randn(2, 3, 8, 8))
    assert explain.graph_break_count == 0
    unet = gankern.optimize(_unet_cond(), inplace=False)
    torch._dynamo.reset()
    explain = torch._dynamo.explain(unet)(torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 7, 32))
    assert explain.graph_break_count == 0, [r.reason for r in explain.break_reasons]
    vae = gankern.optimize(_vae().eval(), inplace=False)
    torch._dynamo.reset()
    explain = torch._dynamo.explain(vae.decode)(torch.randn(1, 4, 8, 8))
    assert explain.graph_break_count == 0, [r.reason for r in explain.break_reasons]
    resnet = _ResNet()
    gankern.optimize(resnet)  # its blocks' forwards are re-generated (_TracedForward)
    torch._dynamo.reset()
    explain = torch._dynamo.explain(resnet)(torch.randn(2, 3, 16, 16))
    assert explain.graph_break_count == 0, [r.reason for r in explain.break_reasons]


def test_ddim_pipeline_same_images_and_scheduler_swap():
    from diffusers import DDIMPipeline, DDIMScheduler
    unet = _unet2d()
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    want = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                output_type="np").images
    fast = gankern.optimize(pipe, inplace=False)
    assert type(pipe.scheduler) is DDIMScheduler and type(pipe.unet.mid_block.resnets[0]).__name__ == "ResnetBlock2D"
    assert isinstance(fast.scheduler, gankern.schedulers.DDIMScheduler)
    assert "DDIMScheduler -> gankern.schedulers.DDIMScheduler" in fast.gankern_report.scheduler
    for p in (fast, copy.deepcopy(fast)):  # an optimized pipeline deep-copies (gankern scheduler included)
        got = p(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                output_type="np").images
        assert_close(torch.from_numpy(got), torch.from_numpy(want).double(), what="pipeline images")


def test_bf16_opt_in_keeps_parameters_and_pickles():
    vae = _vae().eval()
    want = copy.deepcopy(vae)
    params = list(vae.parameters())
    report = gankern.optimize(vae, dtype=torch.bfloat16)
    assert all(p is q and p.dtype == torch.bfloat16 for p, q in zip(vae.parameters(), params))
    assert any("bfloat16" in what for _, what in report.layouts)
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        got = vae.decode(z).sample  # a float32 latent, cast by the pre-hook of post_quant_conv
        ref = want.decode(z).sample
        assert got.dtype == torch.bfloat16
        assert_close(got, ref.double(), dtype=torch.bfloat16, scale=ref.abs().max().item(), what="bf16 decode")
        assert _save_load(vae).decode(z).sample.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="dtype"):
        gankern.optimize(nn.Linear(2, 2), dtype=torch.int8)
