"""`gankern eval`: sample quality and anomaly detection measured without downloads.

A small CNN classifier is trained once on the real training split and cached (in
$GANKERN_CACHE_DIR, else $XDG_CACHE_HOME/gankern, else ~/.cache/gankern; keyed by the data and
image size). Its penultimate activations are the feature space of the Fréchet distance
(FID's formula with this classifier in place of Inception); its predictions give class coverage.
For models that reconstruct (vae, autoencoder, vaegan): the mean squared reconstruction error on
the test split, and, when the model was trained with --holdout-class K, the ROC AUC of
anomaly_score separating class K (never seen in training) from the test split's other classes.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as C
from . import data as D
from .errors import UsageError
from .loop import load_task, resolve_device

CLASSIFIER_VERSION = 2
COVERAGE_SHARE = 0.25   # a class is covered when it gets >= 1/4 of its fair share of the samples


def cache_dir() -> Path:
    env = os.environ.get("GANKERN_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gankern"


class Classifier(nn.Module):
    """Images at 16x16 (cheap; digits carry 8x8 of detail) -> three convolutions -> 64 features."""

    def __init__(self, channels: int, num_classes: int, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.AdaptiveAvgPool2d(16),
            nn.Conv2d(channels, width, 3, 1, 1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, 2, 1), nn.ReLU(),
            nn.Flatten(), nn.Linear(2 * width * 16, 64), nn.ReLU())
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def _fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(str(CLASSIFIER_VERSION).encode())
    h.update(np.ascontiguousarray(images.float().numpy()).tobytes())
    h.update(labels.numpy().tobytes())
    return h.hexdigest()[:16]


def classifier_for(train_images: torch.Tensor, train_labels: torch.Tensor, num_classes: int,
                   epochs: int = 15, verbose: bool = True) -> Classifier:
    """The cached classifier of these images, trained (on CPU, seconds) if absent."""
    path = cache_dir() / "classifiers" / f"{_fingerprint(train_images, train_labels)}.pt"
    clf = Classifier(train_images.shape[1], num_classes)
    if path.is_file():
        try:
            clf.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return clf.eval()
        except Exception:
            pass   # a stale or corrupt cache file is rebuilt
    if verbose:
        print(f"gankern eval: training the feature classifier once (cached in {path.parent})", flush=True)
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clf = Classifier(train_images.shape[1], num_classes)
        opt = torch.optim.Adam(clf.parameters(), lr=2e-3)
        n = train_images.shape[0]
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for idx in perm.split(64):
                x = train_images[idx]
                x = x + 0.05 * torch.randn(x.shape, generator=gen)   # a little noise: robust to generator artefacts
                loss = F.cross_entropy(clf(x), train_labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    torch.save(clf.state_dict(), tmp)
    os.replace(tmp, path)
    return clf.eval()


@torch.no_grad()
def features_and_predictions(clf: Classifier, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    feats, preds = [], []
    for xb in images.float().cpu().split(256):
        f = clf.features(xb)
        feats.append(f)
        preds.append(clf.head(f).argmax(1))
    return torch.cat(feats).double().numpy(), torch.cat(preds).numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the trace of the root through the
    eigenvalues of the symmetric S_a^(1/2) S_b S_a^(1/2) (no scipy needed)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root_a @ sb @ root_a
    tr_root = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * tr_root)


def coverage(preds: np.ndarray, num_classes: int) -> tuple[float, list[int]]:
    counts = np.bincount(preds, minlength=num_classes)[:num_classes]
    need = max(1.0, COVERAGE_SHARE * len(preds) / num_classes)
    return float((counts >= need).mean()), counts.tolist()


def roc_auc(scores_pos: np.ndarray, scores_neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting half (Mann-Whitney U / (n_pos n_neg))."""
    s = np.concatenate([scores_pos, scores_neg])
    order = s.argsort(kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):   # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n_pos, n_neg = len(scores_pos), len(scores_neg)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def evaluate(checkpoint: str, data: str | None = None, n: int = 500, steps: int | None = None,
             scheduler: str = "ddim", seed: int = 0, device: str | None = None, fused: bool | None = None,
             progress: bool = True) -> dict:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise UsageError(f"--n must be an integer >= 2, got {n!r}")
    ckpt = C.load(checkpoint)
    dev = resolve_device(device)
    task = load_task(ckpt, fused, dev)
    cfg = ckpt["config"]
    data = data or ckpt["run"]["data"]
    ds, spec = D.load(data, cfg["image_size"], cfg["channels"])
    if spec.channels != cfg["channels"]:
        raise UsageError(f"--data {data} has {spec.channels} channels; the model was trained on {cfg['channels']}")
    report: dict = {"model": ckpt["task"], "epochs": ckpt["epoch"], "data": data, "samples": n}
    train_ds, test_ds = D.split(ds, "train"), D.split(ds, "test")
    test_x = test_ds.all_images()
    labelled = spec.num_classes > 1
    if labelled:
        clf = classifier_for(train_ds.all_images(), train_ds.labels, spec.num_classes, verbose=progress)
        real_f, real_p = features_and_predictions(clf, test_x)
        report["classifier_test_accuracy"] = float((real_p == test_ds.labels.numpy()).mean())
        gen = task.generate(n, seed, steps=steps, scheduler=scheduler, progress=progress).cpu()
        gen_f, gen_p = features_and_predictions(clf, gen)
        all_f, _ = features_and_predictions(clf, ds.all_images())
        report["frechet_distance"] = frechet_distance(all_f, gen_f)
        # the yardstick: the test split against the rest of the real data
        report["frechet_distance_real_test"] = frechet_distance(all_f, real_f)
        report["class_coverage"], report["class_counts"] = coverage(gen_p, spec.num_classes)
    else:
        report["note"] = "unlabelled data: no classifier, so no Fréchet distance or class coverage"
    if task.reconstructs:
        ae = task.autoencoder.to(dev).eval()
        holdout = ckpt["run"]["holdout_class"]
        normal = test_ds if holdout is None else D.without_class(test_ds, holdout)
        nx = normal.all_images().to(dev)
        with torch.no_grad():
            scores_normal = torch.cat([ae.anomaly_score(xb) for xb in nx.split(256)]).cpu().numpy()
        report["reconstruction_mse"] = float(scores_normal.mean())
        if holdout is not None:
            ax = D.only_class(ds, holdout).all_images().to(dev)   # class never seen in training
            with torch.no_grad():
                scores_anom = torch.cat([ae.anomaly_score(xb) for xb in ax.split(256)]).cpu().numpy()
            report["holdout_class"] = holdout
            report["holdout_reconstruction_mse"] = float(scores_anom.mean())
            report["anomaly_auc"] = roc_auc(scores_anom, scores_normal)
    return report
