"""StyleGAN2: fused (gankern's ops) and plain-torch models hold the same parameters and compute the
same outputs, gradients, R1 and path-length penalties; the training task runs, samples and resumes
exactly through the CLI."""
import pytest
import torch

from conftest import fused_plain_pair, assert_close_to_scale, assert_grads_close

import gankern
from gankern import cli
from gankern import models as M
from gankern.models import stylegan2 as S
from gankern.reference import conv2d_resample as ref_cr
from gankern.reference import upfirdn2d as ref_up
from gankern.regularizers import path_length_penalty, r1_penalty
from gankern.train import checkpoint as C
from gankern.train import train

# fp32 models: the fused kernels and torch sum in other orders, and the networks amplify it a little
RTOL = 2e-4
SMALL = dict(image_size=16, channels=1, z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16)


def _close(a, b, what, rtol=RTOL):
    assert_close_to_scale(a, b, what, rtol)


_grads_close = assert_grads_close


# ---- the plain-torch formulation against gankern's float64 references ------------------------------

@pytest.mark.parametrize("up,down,k", [(2, 1, 3), (1, 2, 3), (1, 2, 1), (1, 1, 3), (1, 1, 1), (2, 1, 1)])
@pytest.mark.parametrize("flip_weight", [True, False])
def test_torch_conv2d_resample_is_the_reference(up, down, k, flip_weight):
    torch.manual_seed(0)
    x, w = torch.randn(2, 3, 7, 9, dtype=torch.float64), torch.randn(5, 3, k, k, dtype=torch.float64)
    f = gankern.setup_filter([1, 3, 3, 1]).double()
    p = k // 2
    want = ref_cr.conv2d_resample(x, w, f, up, down, ref_cr.centring_padding((p,) * 4, (4, 4), up, down), 1,
                                  flip_weight, False)
    got = S.torch_conv2d_resample(x, w, f, up, down, p, flip_weight)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_torch_upsample_and_minibatch_std_are_the_references():
    torch.manual_seed(0)
    x = torch.randn(8, 6, 5, 4, dtype=torch.float64)
    f = gankern.setup_filter([1, 3, 3, 1]).double()
    torch.testing.assert_close(S.torch_upsample2d(x, f), ref_up.upfirdn2d(x, f, 2, 2, 1, 1, 2, 1, 2, 1, False, 4.0))
    from gankern.reference.minibatch_std import minibatch_std as ref_mbstd
    for g, c in ((4, 1), (2, 2), (None, 3)):   # None: one group of the whole batch
        torch.testing.assert_close(S.torch_minibatch_std(x, g, c), ref_mbstd(x, g or x.shape[0], c))


# ---- structure --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [SMALL, dict(image_size=32), dict(image_size=8, channels=3, channel_max=8)])
def test_same_state_dict_keys_and_shapes(kw):
    a, b = M.StyleGAN2(fused=True, **kw).state_dict(), M.StyleGAN2(fused=False, **kw).state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    M.StyleGAN2(fused=False, **kw).load_state_dict(a)    # strict
    # StyleGAN2's layer layout and names
    res = kw["image_size"]
    for key in ("generator.mapping.fc0.weight", "generator.mapping.w_avg", "generator.synthesis.b4.const",
                "generator.synthesis.b4.conv1.affine.weight", "generator.synthesis.b4.conv1.noise_strength",
                "generator.synthesis.b4.conv1.noise_const", f"generator.synthesis.b{res}.conv0.weight",
                f"generator.synthesis.b{res}.torgb.weight", f"discriminator.b{res}.fromrgb.weight",
                f"discriminator.b{res}.skip.weight", "discriminator.b4.fc.weight", "discriminator.b4.out.bias",
                "pl_mean", "num_minibatches"):
        assert key in a, key
    assert f"discriminator.b{res}.skip.bias" not in a


def test_shapes_and_bad_arguments():
    G = M.StyleGAN2Generator(image_size=16, channels=3, z_dim=8, w_dim=8, channel_base=64, channel_max=8)
    assert G.num_ws == 6   # b4: conv1; b8, b16: conv0 + conv1; the last torgb
    assert G(torch.randn(2, 8)).shape == (2, 3, 16, 16)
    D = M.StyleGAN2Discriminator(image_size=16, channels=3, channel_base=64, channel_max=8)
    assert D(torch.randn(8, 3, 16, 16)).shape == (8, 1)
    with pytest.raises(ValueError, match="image_size"):
        M.StyleGAN2Generator(image_size=24)
    with pytest.raises(TypeError, match="fused"):
        M.StyleGAN2(fused=1)
    with pytest.raises(ValueError, match="noise_mode"):
        G(torch.randn(2, 8), noise_mode="bad")


def test_mapping_normalizes_tracks_w_avg_and_truncates():
    torch.manual_seed(0)
    G = M.StyleGAN2Generator(**{k: v for k, v in SMALL.items()})
    z = torch.randn(4, 16)
    m = G.mapping
    torch.testing.assert_close(m(z * 7.0, update_w_avg=False), m(z, update_w_avg=False))  # 2nd-moment norm
    assert m.w_avg.abs().sum() == 0
    w = m(z)   # training mode: w_avg moves 0.5% towards the batch mean
    torch.testing.assert_close(m.w_avg, w[:, 0].mean(0) * (1 - m.w_avg_beta))
    G.eval()
    before = m.w_avg.clone()
    wt = m(z, truncation_psi=0.0)
    torch.testing.assert_close(wt, before.expand_as(wt))     # psi 0: every w is w_avg
    assert torch.equal(m.w_avg, before)                      # eval: not updated
    wc = m(z, truncation_psi=0.5, truncation_cutoff=2)
    torch.testing.assert_close(wc[:, :2], before.lerp(w[:, :2], 0.5))
    torch.testing.assert_close(wc[:, 2:], w[:, 2:])


def test_style_mixing_replaces_a_suffix_of_ws():
    torch.manual_seed(0)
    G = M.StyleGAN2Generator(**SMALL)
    z = torch.randn(3, 16)
    ws = G.mixed_ws(z, style_mixing_prob=1.0)
    base = G.mapping(z, update_w_avg=False)
    same = (ws == base).all(dim=2)[0]                 # one cutoff per batch
    cut = int(same.sum())
    assert 1 <= cut < G.num_ws and same[:cut].all() and not same[cut:].any()
    assert torch.equal(G.mixed_ws(z, 0.0), base)


# ---- fused == plain torch ---------------------------------------------------------------------------

@pytest.mark.parametrize("noise_mode", ["random", "const"])
def test_generator_fused_equals_plain_outputs_and_grads(noise_mode):
    f, p = fused_plain_pair(M.StyleGAN2Generator, **SMALL)
    for m in (f, p):   # non-zero noise strengths and biases, so every term is exercised
        with torch.no_grad():
            for n, t in m.named_parameters():
                if n.endswith("noise_strength") or n.endswith(".bias"):
                    t.add_(0.1 * torch.randn_like(t, generator=torch.Generator().manual_seed(len(n))))
    z = torch.randn(4, 16)
    outs = []
    for m in (f, p):
        torch.manual_seed(1)   # the same noise draws
        img = m(z, noise_mode=noise_mode)
        # random weights: a symmetric one cancels in the sums some gradients are (torgb biases)
        (img * torch.randn(img.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
        outs.append(img)
    _close(outs[0], outs[1], "image")
    _grads_close(f, p)


def test_discriminator_fused_equals_plain_outputs_and_grads():
    f, p = fused_plain_pair(M.StyleGAN2Discriminator, image_size=16, channels=3, channel_base=128, channel_max=16)
    x = torch.randn(8, 3, 16, 16)
    outs = []
    for m in (f, p):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        (y * torch.arange(8.0)[:, None]).sum().backward()
        outs.append((y, xi.grad))
    _close(outs[0][0], outs[1][0], "logits")
    _close(outs[0][1], outs[1][1], "input grad", 1e-3)
    _grads_close(f, p)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_fused_model_on_the_gpu_backends(backend):
    """The fused model with every op forced onto the CUDA kernels (the emulator here) or Triton (the
    interpreter here): G and D forward + backward equal the plain-torch model's."""
    from conftest import skip_unless_runnable
    for op in ("bias_act", "upfirdn2d", "modconv_epilogue", "minibatch_std"):
        skip_unless_runnable(op, backend, torch.device("cpu"))
    kw = dict(image_size=8, channels=1, z_dim=8, w_dim=8, mapping_layers=1, channel_base=32, channel_max=8)
    f, p = fused_plain_pair(M.StyleGAN2, **kw)
    z = torch.randn(4, 8)
    outs = []
    for m, ctx in ((f, gankern.use_backend(backend)), (p, gankern.use_backend("reference"))):
        with ctx:
            torch.manual_seed(1)
            img = m.generator(z)
            logits = m.discriminator(img)
            (logits * torch.tensor([[1.0], [-2.0], [0.5], [3.0]])).sum().backward()
        outs.append((img, logits))
    _close(outs[0][0], outs[1][0], "image")
    _close(outs[0][1], outs[1][1], "logits")
    _grads_close(f, p)


def test_r1_through_the_discriminator_equals_a_reference_computation():
    """gankern.r1_penalty through the fused discriminator (gankern's ops, their double backward)
    equals R1 computed by hand with torch.autograd on the plain-torch one, and so do the
    discriminator's parameter gradients of the penalty (the double backward)."""
    f, p = fused_plain_pair(M.StyleGAN2Discriminator, image_size=16, channels=1, channel_base=128, channel_max=16)
    real = torch.randn(8, 1, 16, 16)
    gamma = 10.0
    pen_f = r1_penalty(f, real, gamma=gamma)
    pen_f.mean().backward()
    x = real.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(p(x).sum(), x, create_graph=True)
    pen_p = g.square().sum(dim=[1, 2, 3]) * (gamma / 2)
    pen_p.mean().backward()
    _close(pen_f, pen_p, "R1", 1e-3)
    _grads_close(f, p, 2e-3)


def test_path_length_penalty_fused_equals_plain():
    f, p = fused_plain_pair(M.StyleGAN2Generator, **SMALL)
    z = torch.randn(4, 16)
    res = []
    for m in (f, p):
        torch.manual_seed(3)
        ws = m.mapping(z, update_w_avg=False)
        pen, mean = path_length_penalty(lambda w: m.synthesis(w, "const"), ws, torch.zeros([]), weight=2.0)
        pen.mean().backward()
        res.append((pen, mean))
    _close(res[0][0], res[1][0], "path-length penalty", 1e-3)
    _close(res[0][1], res[1][1], "pl_mean", 1e-3)
    _grads_close(f, p, 3e-3)


# ---- training ---------------------------------------------------------------------------------------

def test_training_step_fused_equals_plain(monkeypatch):
    """A few task steps with every phase due (R1 and path length on step 0, path length again on
    step 2): the fused and plain models see the same noise and stay equal."""
    from gankern.train.tasks import StyleGAN2Task
    config = dict(StyleGAN2Task.defaults, image_size=16, channels=1, num_classes=10, z_dim=16, w_dim=16,
                  channel_base=128, channel_max=16, pl_interval=2, r1_interval=2)
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    runs = []
    for fused in (True, False):
        torch.manual_seed(0)
        task = StyleGAN2Task(config, fused, torch.device("cpu"))
        opts = task.optimizers(2e-3)
        task.prepare()
        losses = [task.step(x, None, opts) for _ in range(3)]
        runs.append((task, losses))
    (tf, lf), (tp, lp) = runs
    assert list(tf.model.state_dict()) == list(tp.model.state_dict())   # the EMA generator's keys included
    for a, b in zip(lf, lp):
        assert list(a) == list(b)
        for k in a:
            assert abs(a[k] - b[k]) <= 1e-3 * max(abs(b[k]), 1e-3), (k, a[k], b[k])
    assert set(lf[0]) == {"loss_g", "loss_pl", "loss_d", "loss_r1"} and set(lf[1]) == {"loss_g", "loss_d"}
    assert int(tf.model.num_minibatches) == 3 and tf.model.pl_mean > 0
    for (n, a), b in zip(tf.model.state_dict().items(), tp.model.state_dict().values()):
        if a.is_floating_point():
            _close(a, b, n, 5e-3)


def test_cli_train_sample_and_exact_resume(tiny_npz, tmp_path, monkeypatch):
    from gankern.train.tasks import StyleGAN2Task
    monkeypatch.setattr(StyleGAN2Task, "defaults", dict(StyleGAN2Task.defaults, z_dim=16, w_dim=16, channel_base=128,
                                                         channel_max=16, pl_interval=2, r1_interval=3))
    monkeypatch.setenv("GANKERN_CACHE_DIR", str(tmp_path / "cache"))
    tiny = ["--image-size", "16", "--batch-size", "8", "--no-progress", "--data", str(tiny_npz)]
    out = tmp_path / "run"
    assert cli.main(["train", "stylegan2", "--out", str(out), "--epochs", "1", *tiny]) == 0
    for name in ("checkpoint.pt", "metrics.csv", "loss.png", "samples/epoch_001.png"):
        assert (out / name).is_file(), name
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == ["epoch", "step", "loss_g", "loss_pl", "loss_d", "loss_r1"]
    sdir = tmp_path / "samples"
    assert cli.main(["sample", "stylegan2", "--checkpoint", str(out / "checkpoint.pt"), "--n", "2", "--out",
                     str(sdir), "--no-progress", "--no-fused"]) == 0
    assert sorted(q.name for q in sdir.glob("*.png")) == ["grid.png", "sample_00000.png", "sample_00001.png"]
    # resume: 2 epochs in one go == 1 epoch, then resumed to 2 (lazy schedule and pl_mean included)
    kw = dict(data=str(tiny_npz), batch_size=8, image_size=16, seed=3, progress=False, deterministic=True)
    full = C.load(train("stylegan2", epochs=2, out=str(tmp_path / "full"), **kw))
    train("stylegan2", epochs=1, out=str(tmp_path / "part"), **kw)
    resumed = C.load(train("stylegan2", epochs=2, out=str(tmp_path / "part"), resume=True, progress=False,
                           deterministic=True))
    assert resumed["step"] == full["step"] == 4
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), f"{k} differs after resume"
    assert full["history"] == resumed["history"]
    # the EMA generator is in the checkpoint and, after 4 minibatches, no longer the generator
    ema = {k: v for k, v in full["model"].items() if k.startswith("generator_ema.")}
    assert len(ema) == sum(k.startswith("generator.") for k in full["model"])
    assert any(not torch.equal(v, full["model"]["generator." + k[len("generator_ema."):]]) for k, v in ema.items())


def _ema_task(**kw):
    from gankern.train.tasks import StyleGAN2Task
    config = dict(StyleGAN2Task.defaults, image_size=8, channels=1, num_classes=10, z_dim=8, w_dim=8, channel_base=32,
                  channel_max=8, **kw)
    torch.manual_seed(0)
    return StyleGAN2Task(config, True, torch.device("cpu"))


@pytest.mark.parametrize("minibatches,beta", [
    (0, 0.0),                        # first minibatch: the ramp-up makes the half-life 0, EMA = G
    (10, 0.5 ** (8 / (80 * 0.05))),  # ramp-up: half-life 5% of the 80 images seen
    (1000, 0.5 ** (8 / 100)),        # then ema_kimg: 100 images
])
def test_generator_ema_half_life_rule(minibatches, beta):
    task = _ema_task(ema_kimg=0.1, ema_rampup=0.05)
    m = task.model
    assert not any(p.requires_grad for p in m.generator_ema.parameters())
    assert list(m.generator_ema.state_dict()) == list(m.generator.state_dict())
    with torch.no_grad():   # an EMA and buffers that differ from the generator's
        for t in [*m.generator_ema.parameters(), m.generator.mapping.w_avg]:
            t.normal_()
    before = {k: v.clone() for k, v in m.generator_ema.state_dict().items()}
    m.num_minibatches.fill_(minibatches)
    task.update_ema(8)
    params = {n for n, _ in m.generator.named_parameters()}
    for k, g in m.generator.state_dict().items():
        got = m.generator_ema.state_dict()[k]
        want = g.lerp(before[k], beta) if k in params else g   # buffers: copied
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, msg=lambda msg: f"{k}: {msg}")


def test_samples_come_from_the_ema_generator():
    task = _ema_task()
    m = task.model
    with torch.no_grad():
        for p in m.generator_ema.parameters():
            p.add_(0.1 * torch.randn_like(p))
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(5))
    want = m.generator_ema.eval()(z, noise_mode="const").clamp(-1, 1)
    got = task.generate(3, 5)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, m.generator.eval()(z, noise_mode="const").clamp(-1, 1))
    # a checkpoint from before the EMA existed loads, its EMA starting as its generator
    old = {k: v for k, v in m.state_dict().items() if not k.startswith("generator_ema.")}
    fresh = _ema_task()
    fresh.load_model_state(old)
    for k, v in fresh.model.generator.state_dict().items():
        assert torch.equal(fresh.model.generator_ema.state_dict()[k], v), k
