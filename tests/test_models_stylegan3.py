"""StyleGAN3-T: the filter design and band schedule against their definitions; fused (gankern's ops)
and plain-torch models hold the same parameters and compute the same outputs and gradients (also
on the cuda backend under the emulator and Triton under the interpreter); the training task runs,
samples and resumes exactly through the CLI, and refuses another model's checkpoint."""
import math

import pytest
import torch

from conftest import fused_plain_pair, assert_close_to_scale, assert_grads_close

import gankern
from gankern import cli
from gankern import models as M
from gankern.models import stylegan3 as S3
from gankern.train import checkpoint as C
from gankern.train import train

RTOL = 2e-4
# 16x16, 3 layers + ToRGB (one critically sampled), 4-8 channels, margin 2: up 2 / down 2 at one
# rate, the crop to the output size, the ToRGB
SMALL = dict(image_size=16, channels=1, z_dim=8, w_dim=8, mapping_layers=1, num_layers=3, num_critical=1,
             channel_base=64, channel_max=8, margin=2)
# 32x32, 4 layers + ToRGB, 4 channels: also a rate change (16 -> 32: up 4 / down 2)
SMALL_RATES = dict(SMALL, image_size=32, num_layers=4, channel_max=4)


def _close(a, b, what, rtol=RTOL):
    assert_close_to_scale(a, b, what, rtol)


_grads_close = assert_grads_close


# ---- filter design and schedule ---------------------------------------------------------------------

def _response(h, f, fs):
    """|H(f)| of the FIR filter h at frequency f (sampling rate fs)."""
    n = torch.arange(h.shape[0], dtype=torch.float64)
    w = 2 * math.pi * f / fs
    return torch.complex((h * torch.cos(w * n)).sum(), -(h * torch.sin(w * n)).sum()).abs().item()


@pytest.mark.parametrize("numtaps,cutoff,width,fs", [(12, 2.0, 12.0, 32), (24, 5.66, 20.7, 64), (12, 16.0, 7.4, 64),
                                                     (12, 3.36, 9.3, 32), (7, 0.2, 0.1, 1.0),
                                                     (64, 8.0, 4.0, 64)])
def test_lowpass_filter_is_its_definition(numtaps, cutoff, width, fs):
    h = S3.lowpass_filter(numtaps, cutoff, width, fs)
    assert h.dtype == torch.float64 and h.shape == (numtaps,)
    torch.testing.assert_close(h, h.flip(0), rtol=0, atol=1e-15)            # symmetric: linear phase
    assert abs(h.sum().item() - 1) < 1e-12                                   # DC gain 1
    # the window method, spelled out: ideal low-pass (sinc) times the Kaiser window I0(b sqrt(1-r^2)) / I0(b)
    atten = 2.285 * (numtaps - 1) * 2 * math.pi * width / fs + 7.95
    beta = (0.1102 * (atten - 8.7) if atten > 50 else
            0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21) if atten >= 21 else 0.0)
    n = torch.arange(numtaps, dtype=torch.float64)
    r = 2 * n / (numtaps - 1) - 1
    window = torch.special.i0(beta * (1 - r * r).clamp(min=0).sqrt()) / torch.special.i0(torch.tensor(beta))
    ideal = 2 * cutoff / fs * torch.sinc(2 * cutoff / fs * (n - (numtaps - 1) / 2))
    want = ideal * window
    torch.testing.assert_close(h, want / want.sum(), rtol=1e-12, atol=1e-15)
    # an independent design of the same filter (scipy's firwin with a Kaiser window)
    from scipy.signal import firwin
    torch.testing.assert_close(h, torch.from_numpy(firwin(numtaps, cutoff, width=width, fs=fs)), rtol=1e-9,
                               atol=1e-12)
    # the response: where the transition band [cutoff -+ width/2] lies inside (0, fs/2), about 1/2 at
    # the cutoff (a windowed sinc's transition is centred there); where the filter has room for it
    # (attenuation > 50 dB), within 1% of 1 below the band and below 1% above it
    lo, hi = cutoff - width / 2, cutoff + width / 2
    if lo > 0 and hi < fs / 2:
        assert abs(_response(h, cutoff, fs) - 0.5) < 0.05
    if atten > 50:
        for f in torch.linspace(0, max(lo, 0), 5).tolist():
            assert abs(_response(h, f, fs) - 1) < 0.01, f
        for f in torch.linspace(hi, fs / 2, 5).tolist():
            assert _response(h, f, fs) < 0.01, f
    assert S3.lowpass_filter(1, cutoff, width, fs) is None
    with pytest.raises(ValueError, match="cutoff"):
        S3.lowpass_filter(numtaps, fs, width, fs)


def test_band_schedule_follows_the_paper():
    bands = S3.band_schedule(32, 1, num_layers=6, num_critical=2, channel_base=1024, channel_max=32, margin=10)
    assert len(bands) == 7
    cut = [b.cutoff for b in bands]
    stop = [b.stopband for b in bands]
    assert cut[0] == 2 and stop[0] == pytest.approx(2 ** 2.1)
    for i in range(1, 4):   # geometric up to layer num_layers - num_critical
        assert cut[i + 1] / cut[i] == pytest.approx(cut[1] / cut[0])
        assert stop[i + 1] / stop[i] == pytest.approx(stop[1] / stop[0])
    assert cut[4:] == [16.0] * 3 and stop[4] == pytest.approx(16 * 2 ** 0.3)
    for b in bands:   # the smallest power of two above twice the stopband, at most the output size
        assert b.sampling_rate == min(32, 2 ** math.ceil(math.log2(2 * b.stopband)))
        assert b.half_width == pytest.approx(max(b.stopband, b.sampling_rate / 2) - b.cutoff)
        assert b.cutoff <= b.sampling_rate / 2
    assert [b.sampling_rate for b in bands] == [16, 16, 32, 32, 32, 32, 32]
    assert all(b.cutoff == b.sampling_rate / 2 for b in bands[-3:])    # critically sampled
    assert [b.size for b in bands] == [36, 36, 52, 52, 52, 32, 32]
    assert [b.channels for b in bands] == [32] * 6 + [1]
    with pytest.raises(ValueError, match="num_critical"):
        S3.band_schedule(32, 1, num_layers=2, num_critical=2, channel_base=1024, channel_max=32, margin=10)


@pytest.mark.parametrize("kw", [dict(SMALL), dict(image_size=32)])
def test_layers_are_centred(kw):
    """A layer's resampling keeps the image centred: with symmetric filters, the filtered leaky ReLU
    of a mirrored input is the mirrored output (a half-sample offset would break this)."""
    torch.manual_seed(0)
    syn = S3.SynthesisNetwork(8, kw["image_size"], 1, **{k: v for k, v in kw.items() if k in (
        "num_layers", "num_critical", "channel_base", "channel_max", "margin")})
    for name in syn.layer_names:
        layer = getattr(syn, name)
        n = layer.b_in.size + layer.conv_kernel - 1
        x = torch.randn(2, layer.out_channels, n, n, dtype=torch.float64)
        args = (layer.up_filter, layer.down_filter, None, layer.up_factor, layer.down_factor, layer.padding)

        def fl(t):
            from gankern.reference.filtered_lrelu import filtered_lrelu as ref
            fu = torch.ones(1, dtype=t.dtype) if args[0] is None else args[0].double()
            fd = torch.ones(1, dtype=t.dtype) if args[1] is None else args[1].double()
            p = args[5]
            return ref(t, fu, fd, None, args[3], args[3], args[4], args[4], *p, 2 ** 0.5, 0.2, None, False)
        y = fl(x)
        assert y.shape[-1] == layer.b_out.size, name
        torch.testing.assert_close(fl(x.flip(3)), y.flip(3))
        torch.testing.assert_close(fl(x.flip(2)), y.flip(2))


# ---- structure --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [SMALL, dict(image_size=32)])
def test_same_state_dict_keys_and_shapes(kw):
    torch.manual_seed(0)
    a, b = M.StyleGAN3(fused=True, **kw).state_dict(), M.StyleGAN3(fused=False, **kw).state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    M.StyleGAN3(fused=False, **kw).load_state_dict(a)    # strict
    for key in ("generator.mapping.fc0.weight", "generator.mapping.w_avg", "generator.synthesis.input.freqs",
                "generator.synthesis.input.phases", "generator.synthesis.input.weight",
                "generator.synthesis.input.affine.weight", "generator.synthesis.L0_36_32.magnitude_ema",
                "generator.synthesis.L0_36_32.up_filter", "generator.synthesis.L2_52_32.weight",
                "generator.synthesis.L6_32_1.weight", "discriminator.b32.fromrgb.weight", "discriminator.b4.out.bias",
                "num_minibatches"):
        if kw["image_size"] == 32:
            assert key in a, key
    assert a["generator.synthesis.input.affine.weight"].abs().sum() == 0   # starts at the identity transform


def test_shapes_and_bad_arguments():
    G = M.StyleGAN3Generator(**{k: v for k, v in SMALL.items()})
    assert G.num_ws == 5   # input, 3 layers, ToRGB
    assert G(torch.randn(2, 8)).shape == (2, 1, 16, 16)
    assert M.StyleGAN3(image_size=8, channels=3, num_layers=2, num_critical=1, margin=2, channel_max=4,
                       d_channel_max=8).generator(torch.randn(2, 64)).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="image_size"):
        M.StyleGAN3Generator(image_size=24)
    with pytest.raises(TypeError, match="fused"):
        M.StyleGAN3(fused=1)
    with pytest.raises(ValueError, match="noise_mode"):
        G(torch.randn(2, 8), noise_mode="bad")


def test_input_layer_transform():
    """The Fourier features are sinusoids of the pixel coordinates; the affine's (c, s, tx, ty)
    rotates and shifts them: a shift by t at the identity rotation is the features at p - t."""
    torch.manual_seed(0)
    inp = S3.SynthesisInput(4, 6, 10, 16, 2.0).double()
    w = torch.randn(3, 4, dtype=torch.float64)
    base = inp(w)
    assert base.shape == (3, 6, 10, 10)
    coords = (torch.arange(10, dtype=torch.float64) + 0.5 - 5) / 16
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    tx, ty = 0.05, -0.02
    with torch.no_grad():
        inp.affine.bias.copy_(torch.tensor([2.0, 0.0, 2 * tx, 2 * ty]))   # normalized by |(c, s)| = 2
    f, ph = inp.freqs.double(), inp.phases.double()
    feats = torch.sin(2 * math.pi * ((px - tx)[None] * f[:, 0, None, None] + (py - ty)[None] * f[:, 1, None, None]
                                     + ph[:, None, None]))
    want = torch.einsum("chw,dc->dhw", feats, inp.weight.double() / math.sqrt(6))
    torch.testing.assert_close(inp(w)[0], want)
    with torch.no_grad():   # a quarter turn: R = [[0, -1], [1, 0]]
        inp.affine.bias.copy_(torch.tensor([0.0, 3.0, 0.0, 0.0]))
    qx, qy = -py, px
    feats = torch.sin(2 * math.pi * (qx[None] * f[:, 0, None, None] + qy[None] * f[:, 1, None, None]
                                     + ph[:, None, None]))
    torch.testing.assert_close(inp(w)[1], torch.einsum("chw,dc->dhw", feats, inp.weight.double() / math.sqrt(6)))


# ---- fused == plain torch ---------------------------------------------------------------------------

def _perturb(m):
    """Non-zero biases, affine transforms and magnitude EMAs, so every term is exercised."""
    with torch.no_grad():
        for n, t in list(m.named_parameters()) + list(m.named_buffers()):
            g = torch.Generator().manual_seed(len(n))
            if n.endswith(".bias") or n.endswith("input.affine.weight"):
                t.add_(0.1 * torch.randn(t.shape, generator=g))
            elif n.endswith("magnitude_ema"):
                t.fill_(0.5 + torch.rand((), generator=g).item())


@pytest.mark.parametrize("kw", [SMALL, SMALL_RATES], ids=["16px", "32px-rate-change"])
def test_generator_fused_equals_plain_outputs_and_grads(kw):
    f, p = fused_plain_pair(M.StyleGAN3Generator, **kw)
    assert any(getattr(f.synthesis, n).up_factor == 4 for n in f.synthesis.layer_names) == (kw is SMALL_RATES)
    _perturb(f)
    _perturb(p)
    z = torch.randn(4, 8)
    outs = []
    for m in (f, p):
        img, _ = m.train_forward(z)    # training mode: the magnitude EMAs update
        (img * torch.randn(img.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
        outs.append(img)
    _close(outs[0], outs[1], "image")
    _grads_close(f, p)
    for (n, a), b in zip(f.state_dict().items(), p.state_dict().values()):
        _close(a, b, n)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_fused_model_on_the_gpu_backends(backend):
    """The fused model with every op forced onto the CUDA kernels (the emulator here) or Triton (the
    interpreter here): G and D forward + backward equal the plain-torch model's."""
    from conftest import skip_unless_runnable
    for op in ("bias_act", "upfirdn2d", "modconv_epilogue", "minibatch_std", "filtered_lrelu"):
        skip_unless_runnable(op, backend, torch.device("cpu"))
    # 2 taps per factor instead of 6: the Triton interpreter runs filtered_lrelu's taps one by one
    kw = dict(SMALL, image_size=8, num_layers=2, channel_max=4, d_channel_base=32, d_channel_max=8, filter_size=2)
    f, p = fused_plain_pair(M.StyleGAN3, **kw)
    z = torch.randn(4, 8)
    outs = []
    for m, ctx in ((f, gankern.use_backend(backend)), (p, gankern.use_backend("reference"))):
        with ctx:
            img, _ = m.generator.train_forward(z)
            logits = m.discriminator(img)
            (logits * torch.tensor([[1.0], [-2.0], [0.5], [3.0]])).sum().backward()
        outs.append((img, logits))
    _close(outs[0][0], outs[1][0], "image")
    _close(outs[0][1], outs[1][1], "logits")
    _grads_close(f, p)


# ---- training ---------------------------------------------------------------------------------------

TINY_TASK = dict(z_dim=8, w_dim=8, mapping_layers=1, num_layers=3, num_critical=1, channel_base=64, channel_max=8,
                 margin=2, d_channel_base=128, d_channel_max=16)


def test_task_defaults_and_training_step_fused_equals_plain():
    """StyleGAN3Task is StyleGAN2Task's loop with no path length and no style mixing; a few steps
    with R1 due on step 0 and 2 keep the fused and plain models equal."""
    from gankern.train.tasks import StyleGAN2Task, StyleGAN3Task
    assert StyleGAN3Task.defaults["pl_weight"] == 0 and StyleGAN3Task.defaults["style_mixing_prob"] == 0
    assert StyleGAN3Task.step is StyleGAN2Task.step and StyleGAN3Task.d_reg is StyleGAN2Task.d_reg
    config = dict(StyleGAN3Task.defaults, image_size=16, channels=1, num_classes=10, r1_interval=2, **TINY_TASK)
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    runs = []
    for fused in (True, False):
        torch.manual_seed(0)
        task = StyleGAN3Task(config, fused, torch.device("cpu"))
        assert isinstance(task.model, M.StyleGAN3)
        opts = task.optimizers(2e-3)
        assert opts["g"].defaults["lr"] == 2e-3 and opts["g"].defaults["betas"] == (0.0, 0.99)   # not lazy
        task.prepare()
        losses = [task.step(x, None, opts) for _ in range(3)]
        runs.append((task, losses))
    (tf, lf), (tp, lp) = runs
    for a, b in zip(lf, lp):
        assert list(a) == list(b)
        for k in a:
            assert abs(a[k] - b[k]) <= 1e-3 * max(abs(b[k]), 1e-3), (k, a[k], b[k])
    assert set(lf[0]) == {"loss_g", "loss_d", "loss_r1"} and set(lf[1]) == {"loss_g", "loss_d"}
    sd = tf.model.state_dict()
    assert int(sd["num_minibatches"]) == 3 and sd["pl_mean"] == 0
    assert all(v != 1 for k, v in sd.items() if k.endswith("magnitude_ema"))   # updated in the G phase
    for (n, a), b in zip(sd.items(), tp.model.state_dict().values()):
        if a.is_floating_point():
            _close(a, b, n, 5e-3)


def test_cli_train_sample_eval_resume_and_wrong_checkpoint(tiny_npz, tmp_path, monkeypatch, capsys):
    from gankern.train.tasks import StyleGAN2Task, StyleGAN3Task
    monkeypatch.setattr(StyleGAN3Task, "defaults", dict(StyleGAN3Task.defaults, r1_interval=3, **TINY_TASK))
    monkeypatch.setattr(StyleGAN2Task, "defaults", dict(StyleGAN2Task.defaults, z_dim=8, w_dim=8, channel_base=64,
                                                         channel_max=8))
    monkeypatch.setenv("GANKERN_CACHE_DIR", str(tmp_path / "cache"))
    tiny = ["--image-size", "16", "--batch-size", "8", "--no-progress", "--data", str(tiny_npz)]
    out = tmp_path / "run"
    assert cli.main(["train", "stylegan3", "--out", str(out), "--epochs", "1", *tiny]) == 0
    for name in ("checkpoint.pt", "metrics.csv", "loss.png", "samples/epoch_001.png"):
        assert (out / name).is_file(), name
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == ["epoch", "step", "loss_g", "loss_d", "loss_r1"]
    sdir = tmp_path / "samples"
    assert cli.main(["sample", "stylegan3", "--checkpoint", str(out / "checkpoint.pt"), "--n", "2", "--out",
                     str(sdir), "--no-progress", "--no-fused"]) == 0
    assert sorted(q.name for q in sdir.glob("*.png")) == ["grid.png", "sample_00000.png", "sample_00001.png"]
    assert cli.main(["eval", "--checkpoint", str(out), "--n", "16", "--no-progress"]) == 0
    assert "stylegan3" in capsys.readouterr().out
    # another model's checkpoint: a message and exit status 2, not a traceback
    other = tmp_path / "sg2"
    assert cli.main(["train", "stylegan2", "--out", str(other), "--epochs", "1", *tiny]) == 0
    capsys.readouterr()
    assert cli.main(["sample", "stylegan3", "--checkpoint", str(other), "--n", "1", "--out", str(sdir)]) == 2
    err = capsys.readouterr().err
    assert "'stylegan2' model, not 'stylegan3'" in err and "Traceback" not in err
    assert cli.main(["train", "stylegan3", "--out", str(other), "--resume", "--epochs", "2", "--no-progress"]) == 2
    assert "not 'stylegan3'" in capsys.readouterr().err
    # resume: 2 epochs in one go == 1 epoch, then resumed to 2 (magnitude EMAs and the R1 schedule included)
    kw = dict(data=str(tiny_npz), batch_size=8, image_size=16, seed=3, progress=False, deterministic=True)
    full = C.load(train("stylegan3", epochs=2, out=str(tmp_path / "full"), **kw))
    train("stylegan3", epochs=1, out=str(tmp_path / "part"), **kw)
    resumed = C.load(train("stylegan3", epochs=2, out=str(tmp_path / "part"), resume=True, progress=False,
                           deterministic=True))
    assert resumed["step"] == full["step"] == 4
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), f"{k} differs after resume"
    assert full["history"] == resumed["history"]
