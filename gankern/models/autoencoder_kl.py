"""AutoencoderKL: latent diffusion's KL autoencoder (Stable Diffusion's VAE) with diffusers'
state_dict keys, config and return conventions, its ResNet blocks on gankern's fused
GroupNorm+SiLU, mid-block attention through F.scaled_dot_product_attention, and the posterior a
gankern.DiagonalGaussian (one fused pass to sample, fused KL).

    vae = gankern.models.AutoencoderKL.from_config(diffusers_vae.config, fused=True)
    vae.load_state_dict(diffusers_vae.state_dict())            # strict: the same keys
    z = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor
    x_hat = vae.decode(z / vae.config.scaling_factor).sample

Differences from diffusers: latent_dist.sample() draws gankern's counter-based normals (a seed
from `generator`, or `seed=`), so a sampled latent differs from diffusers' for the same generator;
the mean/mode, the decoder and the KL are the same. Slicing, tiling and the spatial (MoVQ) norm
are not implemented.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..distributions import DiagonalGaussian
from ..ops.diffusion import draw_seed
from ._diffusers_blocks import ACTIVATIONS, DownBlock2D, MidBlock2D, UpBlock2D, group_norm, torch_act
from ._diffusers_compat import AutoencoderKLOutput, ConfigMixin, DecoderOutput, check_blocks, check_choice, check_types

_EPS = 1e-6  # diffusers' Encoder / Decoder use eps=1e-6 in every GroupNorm


class LatentDistribution(DiagonalGaussian):
    """The posterior; also accepts diffusers' `sample(generator=...)` (the Philox seed is drawn
    from the generator)."""

    def sample(self, seed: int | None = None, offset: int = 0, generator: torch.Generator | None = None) -> Tensor:
        if seed is None and generator is not None:
            seed = draw_seed(generator)
        return super().sample(seed, offset)


class Encoder(nn.Module):
    def __init__(self, in_channels, out_channels, block_out_channels, layers_per_block, groups, act,
                 mid_block_add_attention, fused):
        super().__init__()
        self.fused = fused
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        out_ch = block_out_channels[0]
        for i, ch in enumerate(block_out_channels):
            in_ch, out_ch = out_ch, ch
            self.down_blocks.append(DownBlock2D(in_ch, out_ch, layers_per_block, None, groups, _EPS, act,
                                                add_downsample=i < len(block_out_channels) - 1, downsample_padding=0,
                                                fused=fused))
        c = block_out_channels[-1]
        self.mid_block = MidBlock2D(c, None, groups, _EPS, act, head_dim=c, attn_groups=groups,
                                    add_attention=mid_block_add_attention, fused=fused)
        self.conv_norm_out = group_norm(groups, c, _EPS, "silu", fused)  # diffusers: always SiLU here
        self.conv_out = nn.Conv2d(c, 2 * out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h, _ = block(h)
        h = self.mid_block(h)
        h = self.conv_norm_out(h) if self.fused else torch_act("silu")(self.conv_norm_out(h))
        return self.conv_out(h)


class Decoder(nn.Module):
    def __init__(self, in_channels, out_channels, block_out_channels, layers_per_block, groups, act,
                 mid_block_add_attention, fused):
        super().__init__()
        self.fused = fused
        c = block_out_channels[-1]
        self.conv_in = nn.Conv2d(in_channels, c, 3, padding=1)
        self.mid_block = MidBlock2D(c, None, groups, _EPS, act, head_dim=c, attn_groups=groups,
                                    add_attention=mid_block_add_attention, fused=fused)
        self.up_blocks = nn.ModuleList()
        rev = list(reversed(block_out_channels))
        out_ch = rev[0]
        for i, ch in enumerate(rev):
            prev_ch, out_ch = out_ch, ch
            self.up_blocks.append(UpBlock2D(prev_ch, out_ch, layers_per_block + 1, None, groups, _EPS, act,
                                            add_upsample=i < len(rev) - 1, fused=fused))
        self.conv_norm_out = group_norm(groups, block_out_channels[0], _EPS, "silu", fused)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)
        h = self.conv_norm_out(h) if self.fused else torch_act("silu")(self.conv_norm_out(h))
        return self.conv_out(h)


class AutoencoderKL(ConfigMixin, nn.Module):
    """diffusers.AutoencoderKL's constructor options (same names and defaults) plus `fused`."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, down_block_types=("DownEncoderBlock2D",),
                 up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,), layers_per_block: int = 1,
                 act_fn: str = "silu", latent_channels: int = 4, norm_num_groups: int = 32, sample_size: int = 32,
                 scaling_factor: float = 0.18215, shift_factor: float | None = None, latents_mean=None,
                 latents_std=None, force_upcast: bool = True, use_quant_conv: bool = True,
                 use_post_quant_conv: bool = True, mid_block_add_attention: bool = True, *, fused: bool = True):
        super().__init__()
        name = type(self).__name__
        down_block_types = check_types("down_block_types", down_block_types, ("DownEncoderBlock2D",), name)
        up_block_types = check_types("up_block_types", up_block_types, ("UpDecoderBlock2D",), name)
        check_choice("act_fn", act_fn, tuple(ACTIVATIONS), name)
        block_out_channels = check_blocks(name, down_block_types, up_block_types, block_out_channels,
                                          norm_num_groups, fused)
        self._register_config(
            in_channels=in_channels, out_channels=out_channels, down_block_types=down_block_types,
            up_block_types=up_block_types, block_out_channels=block_out_channels, layers_per_block=layers_per_block,
            act_fn=act_fn, latent_channels=latent_channels, norm_num_groups=norm_num_groups, sample_size=sample_size,
            scaling_factor=scaling_factor, shift_factor=shift_factor, latents_mean=latents_mean,
            latents_std=latents_std, force_upcast=force_upcast, use_quant_conv=use_quant_conv,
            use_post_quant_conv=use_post_quant_conv, mid_block_add_attention=mid_block_add_attention)
        self.fused = fused
        common = dict(block_out_channels=block_out_channels, groups=norm_num_groups, act=act_fn,
                      mid_block_add_attention=mid_block_add_attention, fused=fused)
        self.encoder = Encoder(in_channels, latent_channels, layers_per_block=layers_per_block, **common)
        # diffusers' Decoder gets layers_per_block and builds layers_per_block + 1 resnets per level
        self.decoder = Decoder(latent_channels, out_channels, layers_per_block=layers_per_block, **common)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.encoder.conv_in.weight.device

    def encode(self, x: Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple[LatentDistribution]:
        """The posterior over latents: `.latent_dist` (a DiagonalGaussian), or a 1-tuple."""
        h = self.encoder(x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        posterior = LatentDistribution(h)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: Tensor, return_dict: bool = True, generator=None) -> DecoderOutput | tuple[Tensor]:
        """Images from (unscaled) latents: `.sample`, or a 1-tuple."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        dec = self.decoder(z)
        return DecoderOutput(sample=dec) if return_dict else (dec,)

    def forward(self, sample: Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None) -> DecoderOutput | tuple[Tensor]:
        """Reconstruction through the posterior's mode (or a sample of it)."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)
