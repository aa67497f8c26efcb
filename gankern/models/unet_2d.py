"""UNet2DModel: diffusers' DDPM UNet (unconditional, positional time embedding) with diffusers'
state_dict keys and outputs, its ResNet blocks on gankern's fused GroupNorm+activation (the time
embedding fused into norm2) and attention through F.scaled_dot_product_attention.

    unet = gankern.models.UNet2DModel.from_config(diffusers_unet.config, fused=True)
    unet.load_state_dict(diffusers_unet.state_dict())          # strict: the same keys
    eps = unet(noisy, t).sample                                  # or unet(noisy, t, return_dict=False)[0]

Supported: DownBlock2D / AttnDownBlock2D down blocks, UpBlock2D / AttnUpBlock2D up blocks,
UNetMidBlock2D or no mid block, "default" or "scale_shift" time embedding norm; other options of
diffusers' UNet2DModel (fourier/learned time embeddings, class conditioning, resnet up/down
samplers) raise ValueError naming the option.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._diffusers_blocks import ACTIVATIONS, DownBlock2D, MidBlock2D, UpBlock2D, group_norm, torch_act
from ._diffusers_compat import ConfigMixin, UNet2DOutput, check_blocks, check_choice, check_types

_DOWN = ("DownBlock2D", "AttnDownBlock2D")
_UP = ("UpBlock2D", "AttnUpBlock2D")


def timestep_embedding(timesteps: Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: float,
                       max_period: float = 10000.0) -> Tensor:
    """DDPM's sinusoidal embedding, float32: [sin(t f_i), cos(t f_i)] (or cos first when
    flip_sin_to_cos) with f_i = max_period^(-i / (dim / 2 - freq_shift)); odd dim pads a zero."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
                      / (half - freq_shift))
    args = timesteps[:, None].float() * freqs[None, :]
    sin, cos = torch.sin(args), torch.cos(args)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2 (diffusers' TimestepEmbedding keys)."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class UNet2DModel(ConfigMixin, nn.Module):
    """diffusers.UNet2DModel's constructor options (same names and defaults) plus `fused`."""

    def __init__(self, sample_size=None, in_channels: int = 3, out_channels: int = 3, center_input_sample: bool = False,
                 time_embedding_type: str = "positional", time_embedding_dim: int | None = None, freq_shift: int = 0,
                 flip_sin_to_cos: bool = True,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                 mid_block_type: str | None = "UNetMidBlock2D",
                 up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                 block_out_channels=(224, 448, 672, 896), layers_per_block: int = 2, mid_block_scale_factor: float = 1,
                 downsample_padding: int = 1, downsample_type: str = "conv", upsample_type: str = "conv",
                 dropout: float = 0.0, act_fn: str = "silu", attention_head_dim: int | None = 8,
                 norm_num_groups: int = 32, attn_norm_num_groups: int | None = None, norm_eps: float = 1e-5,
                 resnet_time_scale_shift: str = "default", add_attention: bool = True,
                 class_embed_type: str | None = None, num_class_embeds: int | None = None,
                 num_train_timesteps: int | None = None, *, fused: bool = True):
        super().__init__()
        name = type(self).__name__
        check_choice("time_embedding_type", time_embedding_type, ("positional",), name)
        check_choice("mid_block_type", mid_block_type, ("UNetMidBlock2D", None), name)
        check_choice("downsample_type", downsample_type, ("conv",), name)
        check_choice("upsample_type", upsample_type, ("conv",), name)
        check_choice("act_fn", act_fn, tuple(ACTIVATIONS), name)
        check_choice("resnet_time_scale_shift", resnet_time_scale_shift, ("default", "scale_shift"), name)
        check_choice("class_embed_type", class_embed_type, (None,), name)
        check_choice("num_class_embeds", num_class_embeds, (None,), name)
        down_block_types = check_types("down_block_types", down_block_types, _DOWN, name)
        up_block_types = check_types("up_block_types", up_block_types, _UP, name)
        block_out_channels = check_blocks(name, down_block_types, up_block_types, block_out_channels,
                                          norm_num_groups, fused)
        self._register_config(
            sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
            center_input_sample=center_input_sample, time_embedding_type=time_embedding_type,
            time_embedding_dim=time_embedding_dim, freq_shift=freq_shift, flip_sin_to_cos=flip_sin_to_cos,
            down_block_types=down_block_types, mid_block_type=mid_block_type, up_block_types=up_block_types,
            block_out_channels=block_out_channels, layers_per_block=layers_per_block,
            mid_block_scale_factor=mid_block_scale_factor, downsample_padding=downsample_padding,
            downsample_type=downsample_type, upsample_type=upsample_type, dropout=dropout, act_fn=act_fn,
            attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups,
            attn_norm_num_groups=attn_norm_num_groups, norm_eps=norm_eps,
            resnet_time_scale_shift=resnet_time_scale_shift, add_attention=add_attention,
            class_embed_type=class_embed_type, num_class_embeds=num_class_embeds,
            num_train_timesteps=num_train_timesteps)
        self.fused = fused
        self.sample_size = sample_size
        temb_dim = time_embedding_dim or block_out_channels[0] * 4
        blk = dict(temb_channels=temb_dim, groups=norm_num_groups, eps=norm_eps, act=act_fn,
                   time_embedding_norm=resnet_time_scale_shift, dropout=dropout, fused=fused)

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], temb_dim)

        self.down_blocks = nn.ModuleList()
        out_ch = block_out_channels[0]
        for i, kind in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            head_dim = (attention_head_dim or out_ch) if kind == "AttnDownBlock2D" else None
            self.down_blocks.append(DownBlock2D(in_ch, out_ch, layers_per_block, add_downsample=i < len(
                block_out_channels) - 1, downsample_padding=downsample_padding, head_dim=head_dim, **blk))

        if mid_block_type is None:
            self.mid_block = None
        else:
            attn_groups = attn_norm_num_groups
            if attn_groups is None and resnet_time_scale_shift == "default":
                attn_groups = norm_num_groups
            self.mid_block = MidBlock2D(block_out_channels[-1], head_dim=attention_head_dim or block_out_channels[-1],
                                        attn_groups=attn_groups, add_attention=add_attention,
                                        output_scale_factor=mid_block_scale_factor, **blk)

        self.up_blocks = nn.ModuleList()
        rev = list(reversed(block_out_channels))
        out_ch = rev[0]
        for i, kind in enumerate(up_block_types):
            prev_ch, out_ch = out_ch, rev[i]
            skip_ch = rev[min(i + 1, len(rev) - 1)]
            head_dim = (attention_head_dim or out_ch) if kind == "AttnUpBlock2D" else None
            self.up_blocks.append(UpBlock2D(prev_ch, out_ch, layers_per_block + 1, add_upsample=i < len(rev) - 1,
                                            skip_channels=skip_ch, head_dim=head_dim, **blk))

        self.conv_norm_out = group_norm(norm_num_groups, block_out_channels[0], norm_eps, "silu", fused)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def forward(self, sample: Tensor, timestep: Tensor | float | int, class_labels: Tensor | None = None,
                return_dict: bool = True) -> UNet2DOutput | tuple[Tensor]:
        """The noise (or v / x0) prediction for `sample` (N, C, H, W) at `timestep` (a scalar, a 0-d
        tensor or one per sample): `.sample` of the returned object, or a 1-tuple."""
        if class_labels is not None:
            raise ValueError("class_labels given but the model has no class embedding (class_embed_type=None)")
        cfg = self.config
        if cfg.center_input_sample:
            sample = 2 * sample - 1.0
        # as diffusers: a Python number becomes an integer timestep
        t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep], dtype=torch.long, device=sample.device)
        if t.ndim == 0:
            t = t[None]
        t = t.to(sample.device) * torch.ones(sample.shape[0], dtype=t.dtype, device=sample.device)
        emb = timestep_embedding(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        emb = self.time_embedding(emb.to(self.dtype))
        temb = torch_act(cfg.act_fn)(emb)  # every ResNet block projects act(emb): computed once

        h = self.conv_in(sample)
        skips = (h,)
        for block in self.down_blocks:
            h, s = block(h, temb)
            skips += s
        if self.mid_block is not None:
            h = self.mid_block(h, temb)
        for block in self.up_blocks:
            n = len(block.resnets)
            h, skips = block(h, skips[-n:], temb), skips[:-n]
        if self.fused:
            h = self.conv_norm_out(h)
        else:
            h = F.silu(self.conv_norm_out(h))
        out = self.conv_out(h)
        return UNet2DOutput(sample=out) if return_dict else (out,)
