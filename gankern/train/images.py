"""PNG output: single images at the model's resolution and grids (Pillow, no torchvision)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> [N, H, W, C] uint8."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def _pil(arr: np.ndarray):
    from PIL import Image
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def save_images(x: torch.Tensor, folder: Path, prefix: str = "sample") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, a in enumerate(to_uint8(x)):
        p = folder / f"{prefix}_{i:05d}.png"
        _pil(a).save(p)
        paths.append(p)
    return paths


def save_grid(x: torch.Tensor, path: Path, pad: int = 2, columns: int | None = None) -> Path:
    arr = to_uint8(x)
    n, h, w, c = arr.shape
    cols = columns or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for i, a in enumerate(arr):
        r, q = divmod(i, cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = a
    path.parent.mkdir(parents=True, exist_ok=True)
    _pil(grid).save(path)
    return path


def history_keys(history: list[dict]) -> list[str]:
    """Every key of the step records, in order of first appearance (a task may report some losses
    only on some steps, e.g. lazy regularizers)."""
    return list(dict.fromkeys(k for h in history for k in h))


def save_loss_curve(history: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [k for k in history_keys(history) if k not in ("epoch", "step")]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(3.2 * max(1, len(keys)), 2.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        # a loss may be reported on some steps only (StyleGAN2's lazy regularizers)
        steps = np.array([h["step"] for h in history if k in h])
        v = np.array([h[k] for h in history if k in h], dtype=float)
        ax.plot(steps, v, lw=0.5, alpha=0.4)
        win = max(1, len(v) // 30)
        if len(v) >= win > 1:
            ax.plot(steps[win - 1:], np.convolve(v, np.ones(win) / win, mode="valid"), lw=1.2)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
