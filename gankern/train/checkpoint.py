"""Checkpoints: model, optimizers, grad scaler, step and every RNG state, so --resume continues a
run exactly (on CPU, bit for bit). Loaded with torch.load(weights_only=True): plain tensors and
containers only."""
from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from .errors import UsageError

FORMAT = "gankern-train-1"
LAST = "checkpoint.pt"


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(_flatten_py(random.getstate())),
             "numpy": [torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                       float(np_state[4])]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _flatten_py(st):
    version, internal, gauss = st
    return [version, *internal, -1 if gauss is None else gauss]


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(int(v) for v in py[1:-1]), None if py[-1] == -1 else py[-1]))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, payload: dict) -> None:
    payload = dict(payload, format=FORMAT)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)   # a crash mid-write never leaves a truncated checkpoint


def load(path, expect_task: str | None = None) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message here advises weights_only=False, which would run the file's code: not for us
        raise UsageError(f"{path} is not a readable gankern checkpoint: it holds Python objects other than "
                         f"tensors and containers (a gankern checkpoint holds only those)") from None
    except Exception as e:   # not a torch file, empty, or cut short
        detail = (str(e).splitlines() or [""])[0][:120]
        raise UsageError(f"{path} is not a readable gankern checkpoint: not a complete torch.save file "
                         f"({type(e).__name__}{': ' + detail if detail else ''})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UsageError(f"{path} is not a gankern training checkpoint (no '{FORMAT}' format tag)")
    if expect_task is not None and ckpt["task"] != expect_task:
        raise UsageError(f"{path} is a checkpoint of the {ckpt['task']!r} model, not {expect_task!r}")
    return ckpt
