"""fold_batchnorm: fold every Conv -> BatchNorm pair of an eval-mode model into the convolution."""
from __future__ import annotations

from torch import nn

from .nn.norm import Activation, ConvNormAct, fold_conv_bn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _foldable(conv, bn) -> bool:
    return (isinstance(conv, _CONVS) and isinstance(bn, _BNS) and bn.running_mean is not None
            and bn.num_features == conv.out_channels)


def fold_batchnorm(module: nn.Module) -> list[tuple[str, str]]:
    """Fold, in place, each BatchNorm that directly follows a convolution: consecutive children of
    an nn.Sequential (torch's Conv, BatchNorm pattern) and every gankern.nn.ConvNormAct with
    norm="batch". A folded plain BatchNorm becomes nn.Identity; a fused BatchNormAct2d becomes its
    activation alone. Returns the (conv, batchnorm) qualified names folded, in module order.

    The model must be in eval mode: folding bakes in the running statistics, which training-mode
    BatchNorm does not use.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    training = [name for name, m in module.named_modules() if isinstance(m, _BNS) and m.training]
    if training:
        raise ValueError(f"fold_batchnorm needs an eval-mode model (call .eval()); in training mode: {training[:3]}")
    folded: list[tuple[str, str]] = []
    for name, parent in list(module.named_modules()):
        prefix = f"{name}." if name else ""
        if isinstance(parent, ConvNormAct):
            if isinstance(parent.norm, nn.BatchNorm2d) and _foldable(parent[0], parent[1]):
                folded.append((f"{prefix}0", f"{prefix}1"))
                parent.fuse()
            continue
        if not isinstance(parent, nn.Sequential):
            continue
        keys = list(parent._modules)
        for a, b in zip(keys, keys[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if _foldable(conv, bn):
                fold_conv_bn(conv, bn)
                act = getattr(bn, "act", None)
                parent._modules[b] = Activation(act, getattr(bn, "alpha", None)) if act else nn.Identity()
                folded.append((f"{prefix}{a}", f"{prefix}{b}"))
    return folded
