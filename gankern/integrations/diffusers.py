"""diffusers integration: fused ResnetBlock2D (the UNet's and VAE's workhorse block).

diffusers' block runs norm1 -> SiLU -> conv1 -> (+ time embedding) -> norm2 -> SiLU -> conv2: four
full passes for the norms and activations, plus one for the embedding add. Here each norm carries
its SiLU and norm2 takes the time embedding as a per-(N, C) bias before its statistics ("default")
or as scale/shift after its affine ("scale_shift"): two passes (and their reductions) in all.
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn.norm import GroupNormAct


def _fusable(block) -> bool:
    return (type(block.norm1) is nn.GroupNorm and type(block.norm2) is nn.GroupNorm
            and isinstance(block.nonlinearity, nn.SiLU)
            and block.time_embedding_norm in ("default", "scale_shift"))


def _to_fused_norm(gn: nn.GroupNorm) -> GroupNormAct:
    new = GroupNormAct(gn.num_groups, gn.num_channels, gn.eps, gn.affine, act="silu")
    new.load_state_dict(gn.state_dict())
    p = next(gn.parameters(), None)
    return new.to(p.device, p.dtype) if p is not None else new


def _fused_forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args, **kwargs) -> torch.Tensor:
    hidden_states = self.norm1(input_tensor)  # GroupNorm + SiLU in one pass

    if self.upsample is not None:
        if hidden_states.shape[0] >= 64:  # as diffusers: upsample_nearest_nhwc fails on large batches
            input_tensor = input_tensor.contiguous()
            hidden_states = hidden_states.contiguous()
        input_tensor = self.upsample(input_tensor)
        hidden_states = self.upsample(hidden_states)
    elif self.downsample is not None:
        input_tensor = self.downsample(input_tensor)
        hidden_states = self.downsample(hidden_states)

    hidden_states = self.conv1(hidden_states)

    t = None
    if temb is not None:
        if self.time_emb_proj is not None:
            if not self.skip_time_act:
                temb = self.nonlinearity(temb)
            t = self.time_emb_proj(temb)
        else:
            t = temb
        t = t.reshape(t.shape[0], t.shape[1])  # (N, C) or (N, C, 1, 1) -> (N, C)

    if self.time_embedding_norm == "default":
        hidden_states = self.norm2(hidden_states, temb=t)
    else:
        if t is None:
            raise ValueError(f"`temb` should not be None when `time_embedding_norm` is {self.time_embedding_norm}")
        scale, shift = torch.chunk(t, 2, dim=1)
        hidden_states = self.norm2(hidden_states, scale=scale, shift=shift)

    hidden_states = self.dropout(hidden_states)
    hidden_states = self.conv2(hidden_states)

    if self.conv_shortcut is not None:
        if self.training:
            input_tensor = input_tensor.contiguous()
        input_tensor = self.conv_shortcut(input_tensor)

    return (input_tensor + hidden_states) / self.output_scale_factor


_FUSED_CLASSES: dict[type, type] = {}


def _fused_class(cls: type) -> type:
    """A subclass of the block's class with the fused forward (isinstance checks keep working)."""
    if cls not in _FUSED_CLASSES:
        _FUSED_CLASSES[cls] = type(f"Fused{cls.__name__}", (cls,), {"forward": _fused_forward,
                                                                    "__module__": __name__})
    return _FUSED_CLASSES[cls]


def patch_resnet_blocks(model: nn.Module) -> list[tuple[str, str]]:
    """Give every fusable diffusers ResnetBlock2D in `model` the fused forward, in place. Returns
    (name, description) per patched block; nothing if diffusers is not installed."""
    try:
        from diffusers.models.resnet import ResnetBlock2D
    except ImportError:
        return []
    patched = []
    for name, block in model.named_modules():
        if not isinstance(block, ResnetBlock2D) or type(block) in _FUSED_CLASSES.values() or not _fusable(block):
            continue
        block.norm1, block.norm2 = _to_fused_norm(block.norm1), _to_fused_norm(block.norm2)
        block.__class__ = _fused_class(type(block))
        patched.append((name or "<root>", f"ResnetBlock2D fused ({block.time_embedding_norm} time embedding)"))
    return patched
