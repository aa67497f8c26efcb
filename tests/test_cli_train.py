"""`gankern train / sample / eval` end to end on a tiny setting, exact resume, and bad inputs."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gankern import cli
from gankern.train import checkpoint as C
from gankern.train import data as D
from gankern.train import train

MODELS = ["dcgan", "vae", "autoencoder", "vaegan", "ddpm"]
TINY = ["--image-size", "16", "--batch-size", "8", "--epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """40 digits (4 of each class) at 8x8 as uint8, with labels: one epoch is 4 steps of 8."""
    ds, _ = D.load("digits", 8)
    idx = torch.cat([torch.nonzero(ds.labels == c).flatten()[:4] for c in range(10)])
    x = ((ds.images[idx, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x=x, y=ds.labels[idx].numpy())
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GANKERN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("model", MODELS)
def test_train_sample_end_to_end(model, tiny_npz, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", model, "--data", str(tiny_npz), "--out", str(out), *TINY]) == 0
    for f in ("checkpoint.pt", "metrics.csv", "loss.png", "samples/epoch_001.png"):
        assert (out / f).is_file(), f
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["epoch", "step"] and len(header) > 2
    ckpt = C.load(out / "checkpoint.pt", expect_task=model)
    assert ckpt["step"] == 4 and ckpt["epoch"] == 1
    for key in ("model", "optimizers", "rng", "scaler"):
        assert key in ckpt
    sdir = tmp_path / "samples"
    assert cli.main(["sample", model, "--checkpoint", str(out / "checkpoint.pt"), "--n", "3", "--out", str(sdir),
                     "--steps", "2", "--no-progress", "--no-fused"]) == 0
    pngs = sorted(p.name for p in sdir.glob("*.png"))
    assert pngs == ["grid.png", "sample_00000.png", "sample_00001.png", "sample_00002.png"]
    from PIL import Image
    with Image.open(sdir / "sample_00000.png") as im:
        assert im.size == (16, 16)


def test_eval_reports(tiny_npz, tmp_path, capsys):
    out = tmp_path / "vae"
    assert cli.main(["train", "vae", "--data", str(tiny_npz), "--out", str(out), "--holdout-class", "3", *TINY]) == 0
    capsys.readouterr()
    report = tmp_path / "r.json"
    assert cli.main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--n", "20", "--json", str(report),
                     "--no-progress"]) == 0
    import json
    r = json.loads(report.read_text())
    for key in ("frechet_distance", "class_coverage", "reconstruction_mse", "anomaly_auc", "classifier_test_accuracy"):
        assert key in r, key
    assert 0 <= r["anomaly_auc"] <= 1 and 0 <= r["class_coverage"] <= 1 and r["frechet_distance"] >= 0
    assert len(list((tmp_path / "cache" / "classifiers").glob("*.pt"))) == 1   # cached once


def test_frechet_and_auc_helpers():
    from gankern.train.quality import coverage, frechet_distance, roc_auc
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, rng.normal(size=(4000, 3))) < 0.05
    # N(0, I) vs N(1, 4I) in 3-d: 3 * 1 + 3 * (1 + 4 - 2 * 2) = 6
    assert abs(frechet_distance(a, 1 + 2 * rng.normal(size=(4000, 3))) - 6.0) < 0.4
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert roc_auc(np.array([1.0]), np.array([1.0])) == 0.5
    assert coverage(np.array([0, 0, 1, 1]), 4)[0] == 0.5


@pytest.mark.parametrize("model", ["dcgan", "vae"])
def test_resume_is_bit_exact(model, tiny_npz, tmp_path):
    # deterministic: on a GPU some of torch's kernels add with atomics (a no-op on the CPU)
    kw = dict(data=str(tiny_npz), batch_size=8, image_size=16, seed=3, progress=False, deterministic=True)
    full = C.load(train(model, epochs=2, out=str(tmp_path / "full"), **kw))
    train(model, epochs=1, out=str(tmp_path / "part"), **kw)
    resumed = C.load(train(model, epochs=2, out=str(tmp_path / "part"), resume=True, progress=False,
                                 deterministic=True))
    assert resumed["step"] == full["step"] == 8
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), f"{k} differs after resume"
    assert full["history"] == resumed["history"]


def _fails(capsys, argv, match):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err, err


def test_bad_inputs(tiny_npz, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(capsys, ["train", "vae", "--data", str(empty), "--out", str(tmp_path / "o")], "no images in")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    _fails(capsys, ["train", "vae", "--data", str(bad), "--out", str(tmp_path / "o")], "cannot read image")
    _fails(capsys, ["train", "vae", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
           "no such file")
    _fails(capsys, ["train", "vae", "--data", str(tiny_npz), "--batch-size", "64", "--out", str(tmp_path / "o")],
           "larger than the training set")
    _fails(capsys, ["train", "vae", "--data", str(tiny_npz), "--resume", "--out", str(tmp_path / "none")],
           "no checkpoint")
    _fails(capsys, ["sample", "vae", "--checkpoint", str(tiny_npz)], "not a readable gankern checkpoint")
    junk = tmp_path / "junk.pt"
    torch.save({"a": torch.zeros(1)}, junk)
    _fails(capsys, ["sample", "vae", "--checkpoint", str(junk)], "not a gankern training checkpoint")
    out = tmp_path / "ae"
    assert cli.main(["train", "autoencoder", "--data", str(tiny_npz), "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    _fails(capsys, ["sample", "vae", "--checkpoint", str(out / "checkpoint.pt")], "checkpoint of the 'autoencoder'")
    _fails(capsys, ["train", "vae", "--data", str(tiny_npz), "--holdout-class", "12", "--out", str(tmp_path / "o")],
           "--holdout-class must be in")
    nolabels = tmp_path / "nolabels.npz"
    np.savez(nolabels, images=np.zeros((20, 8, 8), np.uint8))
    _fails(capsys, ["train", "vae", "--data", str(nolabels), "--holdout-class", "1", "--out", str(tmp_path / "o")],
           "needs labelled data")
    for argv in (["train", "vae", "--epochs", "0"], ["train", "vae", "--batch-size", "x"],
                 ["train", "vae", "--lr", "-1"], ["sample", "vae", "--checkpoint", "c", "--n", "-3"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
        assert "Traceback" not in capsys.readouterr().err


def test_cli_subprocess_exit_code(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-m", "gankern", "train", "dcgan", "--data", str(empty)],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 2 and "no images in" in r.stderr and "Traceback" not in r.stderr


def test_image_folder_any_size(tmp_path):
    """Images of several sizes and modes in two class folders: resized, center-cropped, loaded by workers."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(16):
        folder = tmp_path / "imgs" / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        w, h = (20 + 3 * i, 12 + 2 * i)
        mode = "RGB" if i % 3 else "L"
        arr = rng.integers(0, 255, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
        Image.fromarray(arr, mode).save(folder / f"{i}.{'png' if i % 4 else 'jpg'}")
    ds, spec = D.load(str(tmp_path / "imgs"), 16)
    assert spec.channels == 3 and spec.num_classes == 2 and len(ds) == 16
    x, y = ds[3]
    assert x.shape == (3, 16, 16) and -1 <= x.min() and x.max() <= 1 and y == 0   # sorted: cats/ first
    out = tmp_path / "run"
    assert cli.main(["train", "dcgan", "--data", str(tmp_path / "imgs"), "--out", str(out), "--workers", "1",
                     "--image-size", "16", "--batch-size", "4", "--epochs", "1", "--no-progress"]) == 0
    assert C.load(out / "checkpoint.pt")["config"]["channels"] == 3


def test_bf16_precision(tiny_npz, tmp_path):
    ckpt = C.load(train("autoencoder", data=str(tiny_npz), epochs=1, batch_size=8, image_size=16,
                        out=str(tmp_path / "bf16"), precision="bf16", progress=False))
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_truncated_jpeg_in_a_folder(tmp_path, capsys):
    """Image.verify() passes a truncated JPEG (it does not decode pixels); decoding it fails in a
    DataLoader worker, whose exception must still reach the CLI as one clean message."""
    from PIL import Image
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(folder / f"{i:02d}.jpg")
    victim = D.split(D.load(str(folder), 16)[0], "train").paths[0]     # one that training reads
    whole = victim.read_bytes()
    victim.write_bytes(whole[:len(whole) * 3 // 4])
    with Image.open(victim) as im:
        im.verify()                               # the upfront check cannot see it
    ds, _ = D.load(str(folder), 16)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1)
    from gankern.train import UsageError
    with pytest.raises(UsageError) as e:
        list(loader)
    msg = str(e.value)
    assert msg.startswith("cannot read image") and victim.name in msg and "Traceback" not in msg, msg
    for workers in ("0", "1"):
        _fails(capsys, ["train", "dcgan", "--data", str(folder), "--out", str(tmp_path / "o"), "--workers", workers,
                        "--image-size", "16", "--batch-size", "4", "--epochs", "1", "--no-progress"],
               f"{victim.name}: image file is truncated")


def test_unreadable_checkpoints(tiny_npz, tmp_path, capsys):
    """A pickled module, an empty file and a cut-short checkpoint: one line saying what is wrong, and never
    torch's advice to load with weights_only=False (which would run the file's code)."""
    module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), module)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    out = tmp_path / "ae"
    assert cli.main(["train", "autoencoder", "--data", str(tiny_npz), "--out", str(out), *TINY]) == 0
    whole = (out / "checkpoint.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole[:len(whole) // 2])
    capsys.readouterr()
    for path, why in ((module, "holds Python objects"), (empty, "not a complete torch.save file"),
                      (cut, "not a complete torch.save file")):
        for argv in (["sample", "autoencoder", "--checkpoint", str(path)], ["eval", "--checkpoint", str(path)]):
            assert cli.main(argv) == 2
            err = capsys.readouterr().err
            assert why in err and "weights_only" not in err and "\x1b" not in err and len(err.splitlines()) == 1, err
