"""Multi-process training: DistributedDataParallel over gloo on the CPU, loopback only."""
import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from gankern.train.tasks import AutoencoderTask, DCGANTask, StyleGAN2Task

CONFIG = dict(AutoencoderTask.defaults, image_size=16, channels=1, num_classes=10, widths=[8, 16, 32])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _grads_of(task, x):
    loss, _ = task.loss_fn(x, CONFIG["beta"])
    loss.backward()
    return {n: p.grad.clone() for n, p in task.model.named_parameters()}


def _worker(rank, world, port, x, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        task = AutoencoderTask(CONFIG, True, torch.device("cpu"))
        task.prepare()   # wraps the loss in DistributedDataParallel
        share = x.shape[0] // world
        grads = _grads_of(task, x[rank * share:(rank + 1) * share])
        torch.save(grads, out / f"grads{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_give_the_whole_batch_gradient(tmp_path):
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    mp.spawn(_worker, args=(2, _free_port(), x, tmp_path), nprocs=2, join=True)
    torch.manual_seed(0)
    single = AutoencoderTask(CONFIG, True, torch.device("cpu"))
    single.prepare()   # not distributed here: the plain module
    want = _grads_of(single, x)
    g0, g1 = torch.load(tmp_path / "grads0.pt"), torch.load(tmp_path / "grads1.pt")
    # Judged against the model's gradient scale: biases just before a GroupNorm have (exactly) zero
    # gradient in exact arithmetic, so their float gradients are rounding residue of either sum order.
    scale = max(g.abs().max().item() for g in want.values())
    for name, g in want.items():
        assert torch.equal(g0[name], g1[name]), f"{name}: the processes disagree after the all-reduce"
        err = (g0[name] - g).abs().max().item()
        assert err <= 1e-5 * scale, f"{name}: DDP gradient differs by {err:.3g} (gradient scale {scale:.3g})"


# ---- GAN tasks: one whole training step (every phase, each with its optimizer step) ----------------

WORLD = 2
BATCH = 8   # the global batch: 4 per process
GAN_CASES = {
    # every phase is due on the first minibatch (num_minibatches 0): G main, path length, D main, R1
    "stylegan2": (StyleGAN2Task, dict(StyleGAN2Task.defaults, image_size=16, channels=1, num_classes=10, z_dim=16,
                                      w_dim=16, channel_base=128, channel_max=16)),
    "dcgan": (DCGANTask, dict(DCGANTask.defaults, image_size=16, channels=1, num_classes=10, nz=16, ngf=8, ndf=8)),
}
_DRAWS = ("randn", "randn_like", "rand", "randint")


def _size(args):
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else tuple(args)


@contextlib.contextmanager
def _whole_batch_draws(rank: int, world: int):
    """Makes `world` processes and one process with the whole batch draw the same random numbers
    for the same sample. The k-th torch.randn / randn_like / rand / randint call of a step draws
    the values of the whole batch from a generator seeded with k and returns this process's rows,
    rank::world: the rows a DistributedSampler gives it (sample i of the whole batch is sample
    i // world of process i % world). A 0-d draw (style mixing's cutoff and coin, one per batch)
    is the same everywhere. Every process runs the same code, so its k-th draw is the same one."""
    real = {name: getattr(torch, name) for name in _DRAWS}
    calls = itertools.count()

    def draw(fn, size, **kw):
        size = list(size)
        g = torch.Generator().manual_seed(1000 + next(calls))
        if not size:
            return fn(size, generator=g, **kw)
        return fn([size[0] * world, *size[1:]], generator=g, **kw)[rank::world].contiguous()

    patched = dict(
        randn=lambda *size, **kw: draw(real["randn"], _size(size), **kw),
        rand=lambda *size, **kw: draw(real["rand"], _size(size), **kw),
        randn_like=lambda t, dtype=None, device=None, **kw: draw(real["randn"], t.shape, dtype=dtype or t.dtype,
                                                                device=device or t.device),
        randint=lambda low, high, size, **kw: draw(lambda s, **k: real["randint"](low, high, s, **k), size, **kw))
    try:
        for name, fn in patched.items():
            setattr(torch, name, fn)
        yield
    finally:
        for name, fn in real.items():
            setattr(torch, name, fn)


@contextlib.contextmanager
def _batch_norm_per_share(model: nn.Module, world: int):
    """Every BatchNorm of `model` normalizes the rows rank::world of its input separately, as
    `world` processes without SyncBatchNorm do (each normalizes its own share)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms

    def per_share(forward):
        return lambda x: torch.stack([forward(x[r::world]) for r in range(world)], dim=1).flatten(0, 1)

    try:
        for m in norms:
            m.forward = per_share(m.forward)
        yield
    finally:
        for m in norms:
            del m.forward


def _gan_step(name: str, x: torch.Tensor, rank: int, world: int, bn_shares: int = 1) -> dict:
    """One task.step on this process's share of x (its BatchNorms normalizing bn_shares shares of
    it separately); returns the gradients each optimizer step saw, in order (name -> gradient),
    and the model's state after the step."""
    cls, config = GAN_CASES[name]
    torch.manual_seed(0)   # the same initial weights everywhere (DDP would broadcast rank 0's anyway)
    task = cls(config, True, torch.device("cpu"))
    opts = task.optimizers(cls.train_defaults["lr"])
    task.prepare()
    names = {p: n for n, p in task.model.named_parameters()}
    phases = []
    for key, opt in opts.items():
        opt.register_step_pre_hook(lambda o, args, kw, key=key: phases.append((key, {
            names[p]: p.grad.clone() for group in o.param_groups for p in group["params"] if p.grad is not None})))
    norms = _batch_norm_per_share(task.model, bn_shares) if bn_shares > 1 else contextlib.nullcontext()
    with _whole_batch_draws(rank, world), norms:
        losses = task.step(x[rank::world], None, opts)
    return dict(phases=phases, state=task.model.state_dict(), losses=losses)


def _gan_worker(rank, world, port, x, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save({name: _gan_step(name, x, rank, world) for name in GAN_CASES}, out / f"gan{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def gan_ddp_runs(tmp_path_factory):
    """One step of each GAN task on 2 processes (gloo), spawned once for the tests below."""
    out = tmp_path_factory.mktemp("gan_ddp")
    torch.manual_seed(0)
    x = torch.rand(BATCH, 1, 16, 16) * 2 - 1
    mp.spawn(_gan_worker, args=(WORLD, _free_port(), x, out), nprocs=WORLD, join=True)
    return x, [torch.load(out / f"gan{r}.pt") for r in range(WORLD)]


def _max_rel_err(got: dict, want: dict) -> tuple[float, str]:
    """The largest error of any tensor, relative to the largest magnitude of the whole set (a
    gradient that is zero in exact arithmetic is rounding residue in either sum order)."""
    scale = max(t.abs().max().item() for t in want.values())
    errs = {k: (got[k] - t).abs().max().item() / scale for k, t in want.items()}
    worst = max(errs, key=errs.get)
    return errs[worst], worst


def _check_ranks_agree(runs):
    r0, r1 = runs
    assert [k for k, _ in r0["phases"]] == [k for k, _ in r1["phases"]]
    for (key, g0), (_, g1) in zip(r0["phases"], r1["phases"]):
        assert list(g0) == list(g1)
        for n in g0:
            assert torch.equal(g0[n], g1[n]), f"{key} phase, {n}: the processes disagree after the all-reduce"
    return r0


def test_stylegan2_step_on_two_processes_is_the_whole_batch_step(gan_ddp_runs):
    """One StyleGAN2 minibatch with every phase due (G main, path length, D main, R1) on 2
    processes of 4 equals one process doing it on the batch of 8: the same gradients in each phase
    (so the same parameter updates), pl_mean and EMA.

    What makes the two comparable: both draw the same latents, style-mixing cutoff, noise inputs
    and path-length directions for the same sample (`_whole_batch_draws`); a process gets the
    rows rank::2 of the batch, as from a DistributedSampler, so minibatch std's groups (4
    samples, i % 2 is the group) are the processes' shares in both. The gradients of the main
    phases are averaged by DDP, those of the regularizers (plain modules: torch.autograd.grad)
    by StyleGAN2Task._reg_step, pl_mean's batch mean by an all_reduce. Not compared: the
    generator's w_avg (a buffer for truncation; each process tracks its own share's mean, and DDP
    broadcasts rank 0's at each generator forward, as StyleGAN2)."""
    x, runs = gan_ddp_runs
    ddp = _check_ranks_agree([r["stylegan2"] for r in runs])
    single = _gan_step("stylegan2", x, 0, 1)
    assert [k for k, _ in ddp["phases"]] == [k for k, _ in single["phases"]] == ["g", "g", "d", "d"]
    assert set(single["losses"]) == {"loss_g", "loss_pl", "loss_d", "loss_r1"}
    for i, ((key, got), (_, want)) in enumerate(zip(ddp["phases"], single["phases"])):
        assert list(got) == list(want)
        err, name = _max_rel_err(got, want)
        assert err <= 1e-5, f"phase {i} ({key}): {name} differs by {err:.3g} of the gradient scale"
    s0, s1 = runs[0]["stylegan2"]["state"], runs[1]["stylegan2"]["state"]
    want = single["state"]
    for k, v in want.items():
        if k.endswith("w_avg"):
            continue
        assert torch.equal(s0[k], s1[k]), f"{k}: the processes disagree after the step"
        if v.is_floating_point():
            torch.testing.assert_close(s0[k], v, rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
        else:
            assert torch.equal(s0[k], v), k
    assert want["pl_mean"] > 0 and int(want["num_minibatches"]) == 1
    # the EMA after the first minibatch is the generator (the ramp-up starts from 0 images)
    for k, v in want.items():
        if k.startswith("generator.") and not k.endswith("w_avg"):
            assert torch.equal(s0["generator_ema." + k[len("generator."):]], s0[k]), k


def test_dcgan_step_on_two_processes_normalizes_each_share(gan_ddp_runs):
    """DCGAN's BatchNorms under DDP keep per-process statistics (no SyncBatchNorm, as
    docs/models.md says): one step on 2 processes equals one process on the whole batch whose
    BatchNorms normalize each process's share separately, and differs from whole-batch
    statistics. Draws and shares as in the StyleGAN2 test."""
    x, runs = gan_ddp_runs
    ddp = _check_ranks_agree([r["dcgan"] for r in runs])
    per_share = _gan_step("dcgan", x, 0, 1, bn_shares=WORLD)
    whole = _gan_step("dcgan", x, 0, 1)
    assert [k for k, _ in ddp["phases"]] == [k for k, _ in per_share["phases"]] == ["d", "g"]
    for i, ((key, got), (_, want), (_, other)) in enumerate(zip(ddp["phases"], per_share["phases"],
                                                                whole["phases"])):
        err, name = _max_rel_err(got, want)
        assert err <= 1e-5, f"phase {i} ({key}): {name} differs by {err:.3g} of the gradient scale"
        assert _max_rel_err(got, other)[0] > 1e-3, f"phase {i} ({key}): looks like whole-batch statistics"
    s0, s1 = runs[0]["dcgan"]["state"], runs[1]["dcgan"]["state"]
    for k in set().union(*(grads for _, grads in per_share["phases"])):   # the parameters
        assert torch.equal(s0[k], s1[k]), f"{k}: the processes disagree after the step"
        torch.testing.assert_close(s0[k], per_share["state"][k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")


def _torchrun_train(tmp_path, model: str, images: int):
    """`torchrun --nproc_per_node 2 -m gankern train MODEL` for one epoch at 16x16, batch 8, on the
    first `images` digits; returns (the run's folder, the completed process)."""
    import numpy as np
    from gankern.train import data as D
    ds, _ = D.load("digits", 8)
    np.savez(tmp_path / "d.npz", x=((ds.images[:images, 0] + 1) * 127.5).round().to(torch.uint8).numpy(),
             y=ds.labels[:images].numpy())
    out = tmp_path / "run"
    r = subprocess.run(["torchrun", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                        str(_free_port()), "-m", "gankern", "train", model, "--data", str(tmp_path / "d.npz"),
                        "--image-size", "16", "--batch-size", "8", "--epochs", "1", "--out", str(out),
                        "--no-progress"], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                       env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "checkpoint.pt").is_file() and r.stderr.count(f"{model} epoch 1/1") == 1   # rank 0 only
    return out, r


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_cli_under_torchrun(tmp_path):
    _torchrun_train(tmp_path, "autoencoder", 64)


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_stylegan2_cli_under_torchrun(tmp_path):
    """The real CLI on 2 processes: 2 minibatches of 4 + 4 (24 digits, 85% for training), the first
    with both lazy regularizers (the manual all-reduces and pl_mean's), then the EMA; rank 0 saves.
    Not marked slow (CI skips those): it is the one run of the StyleGAN2 phases under torchrun."""
    from gankern.train import checkpoint as C
    out, _ = _torchrun_train(tmp_path, "stylegan2", 24)
    ckpt = C.load(out / "checkpoint.pt", expect_task="stylegan2")
    assert ckpt["step"] == 2 and int(ckpt["model"]["num_minibatches"]) == 2 and ckpt["model"]["pl_mean"] > 0
    assert "generator_ema.mapping.fc0.weight" in ckpt["model"]
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == ["epoch", "step", "loss_g", "loss_pl", "loss_d", "loss_r1"]
