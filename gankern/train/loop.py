"""`gankern train` and `gankern sample`: the training loop shared by every task.

Single process, or under torchrun (WORLD_SIZE > 1): DistributedDataParallel with gloo on CPU and
nccl on GPU, a DistributedSampler splitting each global batch of --batch-size across processes,
and only rank 0 writing logs, images and checkpoints. BatchNorm statistics stay per process (no
SyncBatchNorm: each process normalizes its own share of the batch, as torch's DDP default).
"""
from __future__ import annotations

import contextlib
import csv
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from . import checkpoint as C
from . import data as D
from .errors import UsageError
from .images import history_keys, save_grid, save_images, save_loss_curve
from .tasks import TASKS

GRID_N = 36          # images in each epoch's sample grid
GRID_SEED = 1234     # the same latents every epoch, so grids show progress


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: PyTorch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda, got {name!r}")
    return torch.device(name)


def setup_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, this process's device); initializes the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    return dist.get_rank(), dist.get_world_size(), device


def _train_images(ds, limit: int = 1024) -> torch.Tensor:
    if isinstance(ds, D.TensorImages):
        return ds.images[:limit]
    return torch.stack([ds[i][0] for i in range(min(limit, len(ds)))])


def train(model: str, data: str = "digits", epochs: int | None = None, batch_size: int | None = None,
          out: str = "runs/train", fused: bool = True, seed: int = 0, resume: bool = False, device: str | None = None,
          precision: str = "fp32", lr: float | None = None, image_size: int = 32, channels: int | None = None,
          holdout_class: int | None = None, workers: int = 2, progress: bool = True, max_steps: int | None = None,
          deterministic: bool = False):
    """Trains `model` and returns the path of its final checkpoint. See `gankern train --help`."""
    with _deterministic(deterministic):
        return _train(model, data, epochs, batch_size, out, fused, seed, resume, device, precision, lr, image_size,
                      channels, holdout_class, workers, progress, max_steps)


@contextlib.contextmanager
def _deterministic(on: bool):
    """torch's deterministic algorithms for the duration of a run. On the CPU every step is
    reproducible anyway; on a GPU some of torch's kernels (cuDNN's convolution algorithms, the
    backward of nearest upsampling) add with atomics, so two runs, or a run and its resumed copy,
    differ in the last bits unless this is on. It costs speed, so it is off by default."""
    if not on:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    bench = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)   # warn, not fail, where torch has no such kernel
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = bench


def _train(model, data, epochs, batch_size, out, fused, seed, resume, device, precision, lr, image_size, channels,
           holdout_class, workers, progress, max_steps):
    if model not in TASKS:
        raise UsageError(f"unknown model {model!r}; choose from {', '.join(TASKS)}")
    task_cls = TASKS[model]
    out_dir = Path(out)
    dev = resolve_device(device)
    rank, world, dev = setup_distributed(dev)
    ckpt = None
    if resume:
        ckpt = C.load(out_dir / C.LAST, expect_task=model)
        run = dict(ckpt["run"])
        config = ckpt["config"]
        data, batch_size, lr, seed = run["data"], run["batch_size"], run["lr"], run["seed"]
        holdout_class, image_size, channels = run["holdout_class"], config["image_size"], config["channels"]
        if epochs is None:
            epochs = run["epochs"]
    else:
        epochs = task_cls.train_defaults["epochs"] if epochs is None else epochs
        batch_size = task_cls.train_defaults["batch_size"] if batch_size is None else batch_size
        lr = task_cls.train_defaults["lr"] if lr is None else lr
    for name, v in (("epochs", epochs), ("batch-size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UsageError(f"--{name} must be a positive integer, got {v!r}")
    if not lr > 0:
        raise UsageError(f"--lr must be positive, got {lr!r}")
    if precision not in ("fp32", "bf16", "fp16"):
        raise UsageError(f"--precision must be fp32, bf16 or fp16, got {precision!r}")
    if batch_size % world:
        raise UsageError(f"--batch-size {batch_size} must be divisible by the number of processes ({world})")

    ds, spec = D.load(data, image_size, channels)
    train_ds = D.split(ds, "train")
    if holdout_class is not None:
        if spec.num_classes == 0:
            raise UsageError("--holdout-class needs labelled data (digits, class subfolders or an .npz with labels)")
        if not 0 <= holdout_class < spec.num_classes:
            raise UsageError(f"--holdout-class must be in [0, {spec.num_classes}), got {holdout_class}")
        train_ds = D.without_class(train_ds, holdout_class)
    if batch_size > len(train_ds):
        raise UsageError(f"--batch-size {batch_size} is larger than the training set ({len(train_ds)} images "
                         f"of {data}, after the 15% test split)")

    if ckpt is None:
        config = dict(task_cls.defaults, image_size=image_size, channels=spec.channels, num_classes=spec.num_classes)
        run = dict(data=data, batch_size=batch_size, lr=lr, seed=seed, holdout_class=holdout_class, epochs=epochs)
    run["epochs"] = epochs
    torch.manual_seed(seed)                      # identical initial weights on every process
    task = task_cls(config, fused, dev, precision)
    opts = task.optimizers(lr)
    task.prepare()
    torch.manual_seed(seed + 1_000_003 * rank)   # then each process draws its own noise

    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    in_memory = isinstance(train_ds, D.TensorImages)
    loader = DataLoader(train_ds, batch_size=batch_size // world, sampler=sampler, drop_last=True,
                        num_workers=0 if in_memory else workers, pin_memory=dev.type == "cuda",
                        persistent_workers=False)
    start_epoch, step, history = 0, 0, []
    if ckpt is not None:
        task.load_model_state(ckpt["model"])
        for k, o in opts.items():
            o.load_state_dict(ckpt["optimizers"][k])
        task.scaler.load_state_dict(ckpt["scaler"])
        start_epoch, step, history = ckpt["epoch"], ckpt["step"], list(ckpt["history"])
        if rank == 0 and start_epoch >= epochs:
            print(f"gankern train: {out_dir} already has {start_epoch} epochs (--epochs {epochs}); nothing to do",
                  file=sys.stderr)
        C.set_rng_state(ckpt["rng"])
        if rank > 0:   # only rank 0's RNG state is saved; the others continue on a stream of their own
            torch.manual_seed(seed + 1_000_003 * rank + step)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "samples").mkdir(exist_ok=True)
    from tqdm.auto import tqdm
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=f"{model} epoch {epoch + 1}/{epochs}", unit="batch", file=sys.stderr,
                   disable=not progress or rank != 0, leave=False)
        for x, y in bar:
            x = x.to(dev, non_blocking=True)
            losses = task.step(x, y, opts)
            step += 1
            history.append(dict(epoch=epoch + 1, step=step, **losses))
            bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
            if max_steps is not None and step >= max_steps:
                break
        bar.close()
        task.end_epoch(_train_images(train_ds))
        if rank == 0:
            _epoch_outputs(task, model, out_dir, epoch, history)
            summary = _epoch_means(history, epoch + 1)
            print(f"{model} epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k} {v:.4g}" for k, v in summary.items())
                  + f" ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
            C.save(out_dir / C.LAST, dict(
                task=model, config=config, run=run, data_spec=dict(vars(spec)), fused=fused,
                model=task.model.state_dict(), optimizers={k: o.state_dict() for k, o in opts.items()},
                scaler=task.scaler.state_dict(), epoch=epoch + 1, step=step, rng=C.rng_state(), history=history))
        if max_steps is not None and step >= max_steps:
            break
    if world > 1:
        dist.barrier()
    return out_dir / C.LAST


def _epoch_means(history, epoch):
    rows = [h for h in history if h["epoch"] == epoch]
    keys = [k for k in history_keys(rows) if k not in ("epoch", "step")]
    means = {}
    for k in keys:   # over the steps that report k (lazy regularizers report on some steps only)
        v = [r[k] for r in rows if k in r]
        means[k] = sum(v) / len(v)
    return means


def _epoch_outputs(task, model, out_dir: Path, epoch: int, history: list[dict]) -> None:
    imgs = task.generate(GRID_N, GRID_SEED, steps=20)
    save_grid(imgs, out_dir / "samples" / f"epoch_{epoch + 1:03d}.png")
    if history:
        save_loss_curve(history, out_dir / "loss.png", f"{model}: loss per step")
        keys = history_keys(history)
        with open(out_dir / "metrics.csv", "w", newline="") as f:   # rewritten whole: resume-safe
            w = csv.DictWriter(f, fieldnames=keys, restval="")   # empty: not computed that step
            w.writeheader()
            w.writerows(history)


def load_task(ckpt: dict, fused: bool | None, device: torch.device):
    """The task of a checkpoint, its weights loaded, fused as asked (default: as trained)."""
    task_cls = TASKS.get(ckpt["task"])
    if task_cls is None:
        raise UsageError(f"checkpoint of unknown model {ckpt['task']!r}")
    task = task_cls(ckpt["config"], ckpt["fused"] if fused is None else fused, device)
    try:
        task.load_model_state(ckpt["model"])
    except RuntimeError as e:
        raise UsageError(f"checkpoint weights do not fit the {ckpt['task']} model: {str(e)[:300]}") from None
    task.model.eval()
    return task


def sample(model: str, checkpoint: str, n: int = 64, out: str = "samples", steps: int | None = None,
           scheduler: str = "ddim", seed: int = 0, device: str | None = None, fused: bool | None = None,
           progress: bool = True) -> list[Path]:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"--n must be a positive integer, got {n!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise UsageError(f"--steps must be a positive integer, got {steps!r}")
    ckpt = C.load(checkpoint, expect_task=model)
    dev = resolve_device(device)
    task = load_task(ckpt, fused, dev)
    if ckpt["task"] == "ddpm" and steps is not None and steps > ckpt["config"]["num_train_timesteps"]:
        raise UsageError(f"--steps must be at most {ckpt['config']['num_train_timesteps']} (training timesteps)")
    imgs = task.generate(n, seed, steps=steps, scheduler=scheduler, progress=progress)
    out_dir = Path(out)
    paths = save_images(imgs, out_dir)
    save_grid(imgs, out_dir / "grid.png")
    return paths
