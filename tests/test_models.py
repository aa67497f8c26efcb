"""gankern.models: fused and unfused models hold the same parameters and compute the same thing."""
import copy

import pytest
import torch

import gankern
from conftest import fused_plain_pair
from gankern import models as M
from gankern.train import data as D

# fp32 models: the fused kernels and torch round differently, and convolutions amplify it a little.
RTOL, ATOL = 2e-4, 2e-5


def _close(a, b, what, rtol=RTOL, atol=ATOL):
    scale = b.abs().max().item() + 1e-12
    err = (a - b).abs().max().item()
    assert err <= atol * scale + rtol * scale, f"{what}: max error {err:.3g} (scale {scale:.3g})"


def _grads_close(m1, m2, rtol=1e-3):
    for (n, p1), (_, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        if p1.grad is None and p2.grad is None:
            continue
        _close(p1.grad, p2.grad, f"grad {n}", rtol=rtol, atol=rtol * 0.1)


@pytest.mark.parametrize("cls,kw", [
    (M.DCGAN, dict(image_size=32)), (M.DCGAN, dict(image_size=64, channels=3)), (M.ConvVAE, {}),
    (M.Autoencoder, {}), (M.VAEGAN, {}),
])
def test_same_state_dict_keys_and_shapes(cls, kw):
    a, b = cls(fused=True, **kw).state_dict(), cls(fused=False, **kw).state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    cls(fused=False, **kw).load_state_dict(a)   # strict: every key fits


def test_fused_must_be_bool():
    with pytest.raises(TypeError, match="fused"):
        M.ConvVAE(fused="yes")
    with pytest.raises(ValueError, match="image_size"):
        M.DCGANGenerator(image_size=48)


def test_dcgan_train_mode_outputs_and_grads():
    f, p = fused_plain_pair(M.DCGAN, image_size=32)
    z = torch.randn(8, 64, 1, 1)
    x = torch.rand(8, 1, 32, 32) * 2 - 1
    outs = []
    for m in (f, p):
        fake = m.generator(z)
        loss = m.discriminator(fake).square().mean() + m.discriminator(x).mean()
        loss.backward()
        outs.append((fake, loss))
    _close(outs[0][0], outs[1][0], "generator output")
    _close(outs[0][1], outs[1][1], "loss")
    _grads_close(f, p)
    for (n, b1), (_, b2) in zip(f.named_buffers(), p.named_buffers()):   # running statistics
        _close(b1.float(), b2.float(), f"buffer {n}")


def test_dcgan_eval_folds_batchnorm():
    f, p = fused_plain_pair(M.DCGAN, image_size=32)
    with torch.no_grad():   # a few training batches so the running statistics are not the identity
        for _ in range(3):
            f.generator(torch.randn(16, 64, 1, 1))
            f.discriminator(torch.randn(16, 1, 32, 32))
    p.load_state_dict(f.state_dict())
    f.eval(), p.eval()
    z, x = torch.randn(8, 64, 1, 1), torch.randn(8, 1, 32, 32)
    _close(f.generator(z), p.generator(z), "eval generator (folded vs BatchNorm)")
    _close(f.discriminator(x), p.discriminator(x), "eval discriminator (folded vs BatchNorm)")
    # the same as gankern.fold_batchnorm applied to a copy of the unfused model
    folded = copy.deepcopy(p.generator)
    assert gankern.fold_batchnorm(folded)
    _close(folded(z), p.generator(z), "fold_batchnorm copy")


@pytest.mark.parametrize("cls", [M.ConvVAE, M.Autoencoder])
def test_vae_loss_and_grads_match(cls):
    f, p = fused_plain_pair(cls)
    x = torch.rand(6, 1, 32, 32) * 2 - 1
    res = []
    for m in (f, p):
        loss, parts = m.loss(x, beta=1.0, seed=123)
        loss.backward()
        res.append((loss, parts))
    _close(res[0][0], res[1][0], "loss")
    _close(res[0][1]["x_hat"], res[1][1]["x_hat"], "reconstruction")
    _close(res[0][1]["kl"], res[1][1]["kl"], "kl")
    _grads_close(f, p)


def test_vae_api():
    torch.manual_seed(0)
    m = M.ConvVAE().eval()
    x = torch.rand(5, 1, 32, 32) * 2 - 1
    q = m.encode(x)
    assert isinstance(q, gankern.DiagonalGaussian) and q.mean.shape == (5, 16)
    assert m.decode(q.mean).shape == x.shape == m.reconstruct(x).shape
    z0, z1 = torch.randn(16), torch.randn(16)
    path = m.interpolate(z0, z1, 4)
    assert path.shape == (4, 1, 32, 32)
    _close(path[0], m.decode(z0[None])[0], "interpolate start")
    _close(path[-1], m.decode(z1[None])[0], "interpolate end")
    s = m.anomaly_score(x)
    assert s.shape == (5,) and (s > 0).all()
    _close(s, (m.reconstruct(x) - x).pow(2).flatten(1).mean(1), "anomaly_score")
    with pytest.raises(ValueError, match="n must"):
        m.interpolate(z0, z1, 1)
    ae = M.Autoencoder().eval()
    assert ae.encode(x).shape == (5, 16) and ae.sample(3).shape == (3, 1, 32, 32)


def test_vaegan_discriminator_match():
    f, p = fused_plain_pair(M.VAEGAN)
    x = torch.randn(4, 1, 32, 32)
    a, b = f.discriminator(x), p.discriminator(x)
    assert a.shape == (4, 1, 6, 6)
    _close(a, b, "patch logits (train)")
    a.sum().backward(), b.sum().backward()
    _grads_close(f.discriminator, p.discriminator)
    f.eval(), p.eval()
    _close(f.discriminator(x), p.discriminator(x), "patch logits (eval, folded)")


def _digits(n=256):
    ds, _ = D.load("digits")
    return ds.images[:n]


def _train_vae(fused, steps, x, batch=16):
    torch.manual_seed(0)
    m = M.ConvVAE(widths=(8, 16, 32), fused=fused)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    losses = []
    g = torch.Generator().manual_seed(0)
    for i in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        loss, _ = m.loss(x[idx], seed=i)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _check_descent(steps):
    x = _digits()
    lf, lp = _train_vae(True, steps, x), _train_vae(False, steps, x)
    k = max(3, steps // 10)
    first, last_f, last_p = sum(lf[:k]) / k, sum(lf[-k:]) / k, sum(lp[-k:]) / k
    assert last_f < 0.7 * first, f"fused loss did not fall: {first:.1f} -> {last_f:.1f}"
    assert abs(last_f - last_p) <= 0.05 * last_p, f"fused {last_f:.2f} vs unfused {last_p:.2f}"


def test_training_lowers_loss_alike():
    _check_descent(30)


@pytest.mark.slow
def test_training_lowers_loss_alike_long():
    _check_descent(300)
