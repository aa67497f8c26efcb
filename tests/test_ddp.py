"""Multi-process training: DistributedDataParallel over gloo on the CPU, loopback only."""
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

from gankern.train.tasks import AutoencoderTask

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


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_cli_under_torchrun(tmp_path):
    import numpy as np
    from gankern.train import data as D
    ds, _ = D.load("digits", 8)
    np.savez(tmp_path / "d.npz", x=((ds.images[:64, 0] + 1) * 127.5).round().to(torch.uint8).numpy(),
             y=ds.labels[:64].numpy())
    out = tmp_path / "run"
    r = subprocess.run(["torchrun", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                        str(_free_port()), "-m", "gankern", "train", "autoencoder", "--data", str(tmp_path / "d.npz"),
                        "--image-size", "16", "--batch-size", "8", "--epochs", "1", "--out", str(out),
                        "--no-progress"], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                       env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "checkpoint.pt").is_file() and r.stderr.count("autoencoder epoch 1/1") == 1   # rank 0 only
