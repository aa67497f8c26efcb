"""Datasets for `gankern train/sample/eval`: images as float tensors in [-1, 1], [C, H, W].

    digits   scikit-learn's bundled handwritten digits (1797 8x8 images, 10 classes, nothing
             downloaded), upsampled to image_size (32 by default) with bilinear interpolation.
    FOLDER   every image under a folder (png, jpg, jpeg, bmp, gif, webp, tif), resized so the
             short side is image_size and center-cropped; class labels from the first-level
             subfolder names when there are several (ImageFolder's convention). Images are decoded
             by DataLoader workers.
    FILE.npz images under the key x, images, X or data ([N, H, W], [N, H, W, C] or [N, C, H, W],
             uint8 0..255 or floats 0..1), optional labels under y or labels.

Every dataset is split once, deterministically (a fixed permutation), into train (85%) and test
(15%); training reads the train split, `gankern eval` scores the test split.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .errors import UsageError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TEST_FRACTION = 0.15
SPLIT_SEED = 0


@dataclass
class DataSpec:
    source: str          # "digits", a folder or an .npz path, as given
    image_size: int
    channels: int
    num_classes: int     # 0 when the data has no labels


class TensorImages(Dataset):
    """Images already in memory: [N, C, H, W] in [-1, 1] and labels [N] (-1 = unlabelled)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    def subset(self, idx: torch.Tensor) -> "TensorImages":
        return TensorImages(self.images[idx], self.labels[idx])

    def all_images(self) -> torch.Tensor:
        return self.images


class FolderImages(Dataset):
    """Image files decoded on access (in DataLoader workers): resize short side, center crop."""

    def __init__(self, paths: list[Path], labels: list[int], image_size: int, channels: int):
        self.paths, self.labels = paths, torch.tensor(labels, dtype=torch.long)
        self.image_size, self.mode = image_size, "L" if channels == 1 else "RGB"

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        # the upfront check (Image.verify) does not decode pixels: a truncated JPEG fails only here
        try:
            image = load_image(self.paths[i], self.image_size, self.mode)
        except Exception as e:
            raise UsageError(f"cannot read image {self.paths[i]}: {e}") from None
        return image, self.labels[i]

    def subset(self, idx: torch.Tensor) -> "FolderImages":
        sub = FolderImages([self.paths[int(i)] for i in idx], [], self.image_size, 1 if self.mode == "L" else 3)
        sub.labels = self.labels[idx]
        return sub

    def all_images(self) -> torch.Tensor:
        return torch.stack([self[i][0] for i in range(len(self))])


def load_image(path: Path, size: int, mode: str) -> torch.Tensor:
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert(mode)
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        arr = np.asarray(im, dtype=np.float32)
    t = torch.from_numpy(arr.copy())
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    return t / 127.5 - 1.0


def _digits(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # a dependency of gankern; say what is missing rather than a traceback
        raise UsageError("the digits dataset needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]     # [N, 1, 8, 8] in [0, 1]
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(0, 1)
    return x * 2 - 1, torch.from_numpy(d.target.astype(np.int64))


def _npz(path: Path, image_size: int, channels: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        arrays = np.load(path, allow_pickle=False)
    except Exception as e:
        raise UsageError(f"cannot read {path} as an .npz file: {e}") from None
    key = next((k for k in ("x", "images", "X", "data") if k in arrays.files), None)
    if key is None:
        raise UsageError(f"{path}: no image array; expected one under the key x, images, X or data "
                         f"(found: {', '.join(arrays.files) or 'nothing'})")
    x = arrays[key]
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise UsageError(f"{path}: images must be [N, H, W], [N, H, W, C] or [N, C, H, W], got shape {x.shape}")
    if x.shape[0] == 0:
        raise UsageError(f"{path}: the image array is empty")
    if not np.issubdtype(x.dtype, np.number):
        raise UsageError(f"{path}: images must be numeric, got dtype {x.dtype}")
    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    t = t / 255.0 if x.dtype == np.uint8 or t.max() > 1.5 else t
    if not torch.isfinite(t).all():
        raise UsageError(f"{path}: images contain NaN or infinite values")
    t = t[:, :3]
    if channels == 1 and t.shape[1] == 3:
        t = t.mean(1, keepdim=True)
    elif channels == 3 and t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    h, w = t.shape[-2:]
    s = min(h, w)
    t = t[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    if s != image_size:
        t = F.interpolate(t, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=s > image_size)
    t = t.clamp(0, 1) * 2 - 1
    lkey = next((k for k in ("y", "labels") if k in arrays.files), None)
    if lkey is None:
        y = torch.full((t.shape[0],), -1, dtype=torch.long)
    else:
        y = torch.from_numpy(np.asarray(arrays[lkey]).reshape(-1).astype(np.int64))
        if y.shape[0] != t.shape[0]:
            raise UsageError(f"{path}: {y.shape[0]} labels for {t.shape[0]} images")
    return t.contiguous(), y


def _folder(path: Path, image_size: int, channels: int) -> FolderImages:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise UsageError(f"no images in {path} (looked for {', '.join(sorted(IMAGE_EXTS))}, in subfolders too)")
    from PIL import Image
    for p in files:   # fail here, with the file's name, rather than inside a DataLoader worker
        try:
            with Image.open(p) as im:
                im.verify()
        except Exception as e:
            raise UsageError(f"cannot read image {p}: {e}") from None
    classes = sorted({p.relative_to(path).parts[0] for p in files if len(p.relative_to(path).parts) > 1})
    if len(classes) > 1 and all(len(p.relative_to(path).parts) > 1 for p in files):
        index = {c: i for i, c in enumerate(classes)}
        labels = [index[p.relative_to(path).parts[0]] for p in files]
    else:
        labels = [-1] * len(files)
    return FolderImages(files, labels, image_size, channels)


def load(source: str, image_size: int = 32, channels: int | None = None):
    """(dataset, DataSpec) for "digits", a folder or an .npz file."""
    if not isinstance(image_size, int) or image_size < 8:
        raise UsageError(f"--image-size must be an integer >= 8, got {image_size}")
    if source == "digits":
        if channels not in (None, 1):
            raise UsageError("the digits dataset has 1 channel; drop --channels or pass --channels 1")
        x, y = _digits(image_size)
        ds = TensorImages(x, y)
        channels = 1
    else:
        path = Path(os.path.expanduser(source))
        if not path.exists():
            raise UsageError(f"--data {source}: no such file or folder (or use --data digits)")
        if path.is_dir():
            channels = 3 if channels is None else channels
            ds = _folder(path, image_size, channels)
        elif path.suffix == ".npz":
            x, y = _npz(path, image_size, channels)
            ds = TensorImages(x, y)
            channels = x.shape[1]
        else:
            raise UsageError(f"--data {source}: expected 'digits', a folder of images or an .npz file")
    labels = ds.labels
    num_classes = int(labels.max()) + 1 if (labels >= 0).all() and len(labels) else 0
    return ds, DataSpec(source, image_size, channels, num_classes)


def split(ds, part: str):
    """The deterministic train or test part of a dataset (a fixed permutation, 15% test)."""
    n = len(ds)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = max(1, int(round(n * TEST_FRACTION))) if n > 1 else 0
    if part == "test":
        return ds.subset(perm[:n_test])
    if part == "train":
        return ds.subset(perm[n_test:])
    if part == "all":
        return ds
    raise ValueError(f"part must be 'train', 'test' or 'all', got {part!r}")


def without_class(ds, label: int):
    keep = torch.nonzero(ds.labels != label).flatten()
    return ds.subset(keep)


def only_class(ds, label: int):
    return ds.subset(torch.nonzero(ds.labels == label).flatten())
