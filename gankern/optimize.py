"""gankern.optimize: put gankern's fused layers into someone else's model, in place.

    report = gankern.optimize(unet)      # a diffusers UNet, a torchvision-style CNN, a DCGAN...
    print(report)

What it changes (state_dict keys and values stay the same, so checkpoints still load):
- nn.Sequential runs of [GroupNorm, activation] and [BatchNorm2d, activation] become one
  GroupNormAct / BatchNormAct2d (the activation's slot becomes nn.Identity);
- every other nn.GroupNorm becomes GroupNormAct(act=None) (a faster GroupNorm);
- diffusers' ResnetBlock2D (norm1 -> SiLU, time embedding + norm2 -> SiLU) gets a forward in which
  both norms carry the SiLU and norm2 also takes the time-embedding bias or scale/shift;
- in eval mode, Conv -> BatchNorm pairs are folded into the convolution (gankern.fold_batchnorm).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .fold import fold_batchnorm
from .nn.norm import BatchNormAct2d, GroupNormAct


@dataclass
class OptimizeReport:
    replaced: list[tuple[str, str]] = field(default_factory=list)  # (module name, what it became)
    folded: list[tuple[str, str]] = field(default_factory=list)    # (conv, batchnorm) folded

    def __str__(self) -> str:
        lines = [f"gankern.optimize: {len(self.replaced)} modules replaced, {len(self.folded)} BatchNorms folded"]
        lines += [f"  {name}: {what}" for name, what in self.replaced]
        lines += [f"  folded {bn} into {conv}" for conv, bn in self.folded]
        return "\n".join(lines)


def _act_of(m: nn.Module) -> tuple[str, float | None] | None:
    """The gankern activation equal to torch activation module m, or None."""
    if isinstance(m, nn.SiLU):
        return "silu", None
    if isinstance(m, nn.ReLU):
        return "relu", None
    if isinstance(m, nn.LeakyReLU):
        return "lrelu", float(m.negative_slope)
    if isinstance(m, nn.GELU):
        return ("gelu" if m.approximate == "none" else "gelu_tanh"), None
    return None


def _group_norm_act(gn: nn.GroupNorm, act: str | None, alpha: float | None = None) -> GroupNormAct:
    new = GroupNormAct(gn.num_groups, gn.num_channels, gn.eps, gn.affine, act=act, alpha=alpha)
    new.load_state_dict(gn.state_dict())
    return new.to(device=_device(gn), dtype=_dtype(gn)).train(gn.training)


def _batch_norm_act(bn: nn.BatchNorm2d, act: str, alpha: float | None) -> BatchNormAct2d:
    new = BatchNormAct2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, act=act,
                         alpha=alpha)
    new.load_state_dict(bn.state_dict())
    return new.to(device=_device(bn), dtype=_dtype(bn)).train(bn.training)


def _device(m):
    t = next(iter(m.state_dict().values()), None)
    return None if t is None else t.device


def _dtype(m):
    p = next(m.parameters(), None)
    return None if p is None else p.dtype


def _fuse_sequentials(model: nn.Module, report: OptimizeReport) -> None:
    for name, seq in list(model.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        prefix = f"{name}." if name else ""
        keys = list(seq._modules)
        for a, b in zip(keys, keys[1:]):
            norm, act = seq._modules[a], _act_of(seq._modules[b])
            if act is None or isinstance(norm, (GroupNormAct, BatchNormAct2d)):
                continue
            if type(norm) is nn.GroupNorm:
                seq._modules[a] = _group_norm_act(norm, *act)
            elif type(norm) is nn.BatchNorm2d:
                seq._modules[a] = _batch_norm_act(norm, *act)
            else:
                continue
            seq._modules[b] = nn.Identity()
            report.replaced.append((f"{prefix}{a}", f"{type(seq._modules[a]).__name__}(act={act[0]!r}) "
                                                    f"absorbing {prefix}{b}"))


def _replace_group_norms(model: nn.Module, report: OptimizeReport) -> None:
    for name, parent in list(model.named_modules()):
        for child_name, child in list(parent._modules.items()):
            if type(child) is nn.GroupNorm:
                parent._modules[child_name] = _group_norm_act(child, None)
                report.replaced.append((f"{name}.{child_name}" if name else child_name, "GroupNormAct(act=None)"))


def optimize(model: nn.Module, *, fold_bn: bool | None = None, diffusers: bool = True) -> OptimizeReport:
    """Swap the hot paths of `model` for gankern's fused layers, in place; returns what changed.

    fold_bn: fold Conv -> BatchNorm pairs (default: when the model is in eval mode; folding bakes in
        the running statistics, so it is refused in training mode).
    diffusers: patch diffusers' ResnetBlock2D when diffusers is installed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    report = OptimizeReport()
    if fold_bn is None:
        fold_bn = not model.training
    if fold_bn:
        report.folded = fold_batchnorm(model)  # before fusing: folding looks for plain BatchNorms
    if diffusers:
        from .integrations.diffusers import patch_resnet_blocks
        report.replaced += patch_resnet_blocks(model)
    _fuse_sequentials(model, report)
    _replace_group_norms(model, report)
    return report
