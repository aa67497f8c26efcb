"""gankern.models.AutoencoderKL and UNet2DModel against diffusers' classes of the same config.

Weights are random (nothing is downloaded): diffusers builds the model, ours loads its state_dict
strictly. Accuracy: diffusers' own model run in float64 is the truth; ours in fp32 may be off by at
most a few times what diffusers' fp32 model is off by (the tolerance is derived per test, not
picked), for fused=True and fused=False, NCHW and channels_last inputs.
"""
import warnings

import pytest
import torch

import gankern
from gankern.models import AutoencoderKL, UNet2DModel

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install gankern[test])")

# Ours may be off by FACTOR x diffusers' fp32 error (different but equally exact summation orders),
# plus FLOOR (relative to the output's RMS) for outputs diffusers happens to get nearly exact.
FACTOR, FLOOR = 4.0, 2e-6

TINY_UNET = dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=16)
UNET_VARIANTS = {
    "tiny": TINY_UNET,
    # DDPM-CIFAR10's choices (no head dim, right/bottom-padded downsampling, cos-first off, shift 1)
    "ddpm_style": dict(TINY_UNET, attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
                       norm_eps=1e-6),
    "scale_shift": dict(TINY_UNET, resnet_time_scale_shift="scale_shift", mid_block_scale_factor=2 ** 0.5,
                        center_input_sample=True, act_fn="swish"),
    "no_mid_attention": dict(TINY_UNET, add_attention=False, block_out_channels=(32, 32), time_embedding_dim=48),
}
# google/ddpm-cifar10-32's config (35.7M parameters): the moderately realistic case.
DDPM_CIFAR10 = dict(sample_size=32, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
                    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                    attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6)
TINY_VAE = dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, layers_per_block=1, latent_channels=4)
VAE_VARIANTS = {
    "tiny": TINY_VAE,
    "deeper": dict(TINY_VAE, block_out_channels=(32, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3,
                   up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=2, scaling_factor=0.13025),
    "no_quant_no_attention": dict(TINY_VAE, use_quant_conv=False, use_post_quant_conv=False,
                                  mid_block_add_attention=False, latent_channels=3),
}


def _randomize(model):
    """diffusers zero-inits nothing here, but its norms start at weight 1 / bias 0: perturb every
    parameter so that a swapped weight or bias cannot go unnoticed."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _layout(x, layout):
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def _rel_err(out, ref):
    return ((out.double() - ref).abs().max() / (ref.pow(2).mean().sqrt() + 1e-30)).item()


def _check_against(ours, theirs32, truth64, what):
    """ours (fp32) vs diffusers in float64, with the bound derived from diffusers' fp32 error."""
    tol = FACTOR * _rel_err(theirs32, truth64) + FLOOR
    err = _rel_err(ours, truth64)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.3g} (diffusers fp32: {tol / FACTOR:.3g})"


def _pair(diffusers_cls, ours_cls, cfg, fused):
    ref = _randomize(diffusers_cls(**cfg)).eval()
    ours = ours_cls.from_config(ref.config, fused=fused).eval()
    ours.load_state_dict(ref.state_dict())  # strict
    ref64 = diffusers_cls(**cfg).eval().double()
    ref64.load_state_dict(ref.state_dict())
    return ref, ref64, ours


# ---- state_dict --------------------------------------------------------------------------------

@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("kind", ["unet", "vae"])
def test_state_dict_keys_and_shapes_equal_diffusers(kind, fused):
    if kind == "unet":
        ref, ours = diffusers.UNet2DModel(**DDPM_CIFAR10), UNet2DModel(**DDPM_CIFAR10, fused=fused)
    else:
        cfg = dict(VAE_VARIANTS["deeper"])
        ref, ours = diffusers.AutoencoderKL(**cfg), AutoencoderKL(**cfg, fused=fused)
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert mine == theirs
    ours.load_state_dict(ref.state_dict(), strict=True)
    theirs_sd = ref.state_dict()
    assert all(torch.equal(v, theirs_sd[k]) for k, v in ours.state_dict().items())


def test_fused_and_unfused_share_checkpoints():
    a, b = UNet2DModel(**TINY_UNET, fused=True), UNet2DModel(**TINY_UNET, fused=False)
    b.load_state_dict(a.state_dict())
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 900])
    with torch.no_grad():
        torch.testing.assert_close(a(x, t).sample, b(x, t).sample, rtol=1e-4, atol=1e-5)


# ---- outputs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("variant", sorted(UNET_VARIANTS))
def test_unet_matches_diffusers(variant, fused, layout):
    ref, ref64, ours = _pair(diffusers.UNet2DModel, UNet2DModel, UNET_VARIANTS[variant], fused)
    x = _layout(torch.randn(3, 3, 16, 16), layout)
    t = torch.tensor([0, 37, 999])
    with torch.no_grad():
        truth, theirs, mine = ref64(x.double(), t).sample, ref(x, t).sample, ours(x, t).sample
        _check_against(mine, theirs, truth, f"UNet {variant}")
        # diffusers' timestep conventions: a Python int and a 0-d tensor broadcast to the batch
        _check_against(ours(x, 500).sample, ref(x, 500).sample, ref64(x.double(), 500).sample, "int timestep")
        _check_against(ours(x, torch.tensor(7))[0], ref(x, torch.tensor(7))[0],
                       ref64(x.double(), torch.tensor(7))[0], "0-d timestep")


def test_unet_ddpm_cifar10_config_matches_diffusers():
    ref, ref64, ours = _pair(diffusers.UNet2DModel, UNet2DModel, DDPM_CIFAR10, fused=True)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 600])
    with torch.no_grad():
        _check_against(ours(x, t).sample, ref(x, t).sample, ref64(x.double(), t).sample, "DDPM-CIFAR10 UNet")


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("variant", sorted(VAE_VARIANTS))
def test_vae_matches_diffusers(variant, fused, layout):
    ref, ref64, ours = _pair(diffusers.AutoencoderKL, AutoencoderKL, VAE_VARIANTS[variant], fused)
    x = _layout(torch.randn(2, 3, 16, 16), layout)
    with torch.no_grad():
        post, post32, post64 = ours.encode(x).latent_dist, ref.encode(x).latent_dist, ref64.encode(x.double()).latent_dist
        assert isinstance(post, gankern.DiagonalGaussian)
        for name in ("mean", "logvar", "std"):
            _check_against(getattr(post, name), getattr(post32, name), getattr(post64, name), f"posterior {name}")
        _check_against(post.kl(), post32.kl(), post64.kl(), "posterior KL")
        _check_against(post.mode(), post32.mode(), post64.mode(), "posterior mode")
        z = _layout(torch.randn(2, ours.config.latent_channels, 4, 4), layout)
        _check_against(ours.decode(z).sample, ref.decode(z).sample, ref64.decode(z.double()).sample, "decode")
        _check_against(ours(x).sample, ref(x).sample, ref64(x.double()).sample, "forward")
    assert ours.config.scaling_factor == ref.config.scaling_factor


# ---- gradients ---------------------------------------------------------------------------------

def _grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss_fn(model).backward()
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("kind", ["unet", "vae"])
def test_gradients_match_diffusers(kind, fused):
    if kind == "unet":
        ref, ref64, ours = _pair(diffusers.UNet2DModel, UNet2DModel, UNET_VARIANTS["ddpm_style"], fused)
        x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
        w = torch.randn(2, 3, 16, 16)

        def loss(m):
            dt = next(m.parameters()).dtype
            return (m(x.to(dt), t).sample * w.to(dt)).sum()
    else:
        ref, ref64, ours = _pair(diffusers.AutoencoderKL, AutoencoderKL, TINY_VAE, fused)
        x, w = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)

        def loss(m):
            dt = next(m.parameters()).dtype
            post = m.encode(x.to(dt)).latent_dist
            return (m.decode(post.mode()).sample * w.to(dt)).sum() + post.kl().sum()
    for m in (ref, ref64, ours):
        m.train()
    g_ours, g32, g64 = _grads(ours, loss), _grads(ref, loss), _grads(ref64, loss)
    assert set(g_ours) == set(g64)
    for name in g64:
        _check_against(g_ours[name], g32[name], g64[name], f"grad of {name}")


# ---- training and sampling ---------------------------------------------------------------------

def _train(fused, steps=8):
    torch.manual_seed(0)
    model = UNet2DModel(**UNET_VARIANTS["ddpm_style"], fused=fused)
    sched = gankern.schedulers.DDPMScheduler(num_train_timesteps=100)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 16, 16, generator=gen) * 2 - 1  # one batch, memorized
    losses = []
    for _ in range(steps):
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 100, (4,), generator=gen)
        xt = sched.add_noise(x0, noise, t)
        loss = gankern.diffusion_loss(model(xt, t).sample, x0, noise, t, sched.alphas_cumprod)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses


def test_unet_trains_with_diffusion_loss_fused_as_unfused():
    _, fused = _train(True)
    _, plain = _train(False)
    assert all(map(torch.isfinite, torch.tensor(fused)))
    assert sum(fused[-3:]) < 0.85 * sum(fused[:3]), fused  # the loss falls
    # same weights, same data: the runs follow each other step for step
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(plain), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "DPMSolverMultistepScheduler"])
def test_unet_samples_with_gankern_sample(scheduler):
    ref, _, ours = _pair(diffusers.UNet2DModel, UNet2DModel, UNET_VARIANTS["ddpm_style"], fused=True)
    sched = getattr(gankern.schedulers, scheduler)(num_train_timesteps=1000)

    def run(model):
        return gankern.sample(lambda x, t: model(x, t).sample, sched, (2, 3, 16, 16), num_inference_steps=6,
                              seed=123, progress=False)
    ours_out, ref_out = run(ours), run(ref)
    assert ours_out.shape == (2, 3, 16, 16) and torch.isfinite(ours_out).all()
    # With random weights the multistep solver's samples reach magnitudes in the hundreds, so fp32
    # rounding differences of the fused norms (~1e-7 of that scale per op, amplified over the steps)
    # are judged against the output's scale, not a fixed 1e-4 (which one element near zero exceeded
    # by 5e-5 on some weight draws, before and after the small-plane GroupNorm change).
    scale = ref_out.abs().max().item()
    torch.testing.assert_close(ours_out, ref_out, rtol=1e-3, atol=1e-4 + 1e-6 * scale)
    torch.testing.assert_close(run(ours), ours_out, rtol=0, atol=0)  # one seed, one trajectory


def test_vae_conventions():
    ref, _, ours = _pair(diffusers.AutoencoderKL, AutoencoderKL, TINY_VAE, fused=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        (post,) = ours.encode(x, return_dict=False)
        (dec,) = ours.decode(post.mode(), return_dict=False)
        torch.testing.assert_close(dec, ours(x).sample)
        a = post.sample(generator=torch.Generator().manual_seed(5))
        b = post.sample(generator=torch.Generator().manual_seed(5))
        assert torch.equal(a, b) and not torch.equal(a, post.mean)
        g1 = ours(x, sample_posterior=True, generator=torch.Generator().manual_seed(5)).sample
        g2 = ours(x, sample_posterior=True, generator=torch.Generator().manual_seed(5), return_dict=False)[0]
        assert torch.equal(g1, g2)
    assert ours.config.latent_channels == ref.config["latent_channels"]


def test_from_config_accepts_mappings_and_warns_on_unknown_options():
    ref = diffusers.UNet2DModel(**TINY_UNET)
    a = UNet2DModel.from_config(ref.config)            # diffusers' FrozenDict
    b = UNet2DModel.from_config(dict(ref.config))      # a plain dict with _class_name etc.
    c = UNet2DModel.from_config(ref)                   # anything with .config
    assert a.config == b.config == c.config and a.fused
    assert UNet2DModel.from_config(ref.config, fused=False, layers_per_block=2).config.layers_per_block == 2
    with pytest.warns(UserWarning, match="not_an_option"):
        UNet2DModel.from_config({**TINY_UNET, "not_an_option": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AutoencoderKL.from_config(diffusers.AutoencoderKL(**TINY_VAE).config)
    with pytest.raises(TypeError, match="config"):
        UNet2DModel.from_config(3)


@pytest.mark.parametrize("option, value", [
    ("time_embedding_type", "fourier"), ("class_embed_type", "timestep"), ("num_class_embeds", 10),
    ("down_block_types", ("DownBlock2D", "CrossAttnDownBlock2D")), ("up_block_types", ("SkipUpBlock2D", "UpBlock2D")),
    ("mid_block_type", "UNetMidBlock2DCrossAttn"), ("downsample_type", "resnet"), ("upsample_type", "resnet"),
    ("act_fn", "mish"), ("resnet_time_scale_shift", "ada_group"), ("norm_num_groups", 7),
    ("block_out_channels", (32, 64, 64)),
])
def test_unet_refuses_unsupported_options(option, value):
    with pytest.raises(ValueError, match=option):
        UNet2DModel(**{**TINY_UNET, option: value})


@pytest.mark.parametrize("option, value", [
    ("down_block_types", ("DownEncoderBlock2D", "AttnDownEncoderBlock2D")), ("up_block_types", ("UpDecoderBlock2D",)),
    ("act_fn", "tanh"), ("norm_num_groups", 5),
])
def test_vae_refuses_unsupported_options(option, value):
    with pytest.raises(ValueError, match=option):
        AutoencoderKL(**{**TINY_VAE, option: value})


def test_fused_must_be_bool():
    with pytest.raises(TypeError, match="fused"):
        UNet2DModel(**TINY_UNET, fused="yes")
