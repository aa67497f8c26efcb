"""VAE-GAN: the convolutional VAE trained with an added adversarial loss on its reconstructions,
against a PatchGAN discriminator (pix2pix's: Conv(4, 2, 1) + LeakyReLU, then Conv + BatchNorm +
LeakyReLU blocks, and a 4x4 conv to a map of per-patch logits). Fused, the discriminator's
norms are gankern.batch_norm_act (folded into the convolutions in eval mode).
"""
from __future__ import annotations

from torch import Tensor, nn

from ._layers import ConvNormAct, check_fused
from .dcgan import init_dcgan_weights
from .vae import ConvVAE


class PatchDiscriminator(nn.Module):
    def __init__(self, channels: int = 1, ndf: int = 32, n_layers: int = 2, fused: bool = True):
        super().__init__()
        check_fused(fused)
        blocks = [ConvNormAct(channels, ndf, 4, 2, 1, None, "lrelu", fused, bias=True)]
        width = ndf
        for i in range(1, n_layers + 1):
            stride = 2 if i < n_layers else 1
            blocks.append(ConvNormAct(width, width * 2, 4, stride, 1, "batch", "lrelu", fused))
            width *= 2
        self.blocks = nn.Sequential(*blocks)
        self.to_logits = nn.Conv2d(width, 1, 4, 1, 1)
        init_dcgan_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Per-patch logits [B, 1, h, w]."""
        return self.to_logits(self.blocks(x))


class VAEGAN(nn.Module):
    """A ConvVAE ("vae.*") and a PatchDiscriminator ("discriminator.*")."""

    def __init__(self, image_size: int = 32, channels: int = 1, latent_dim: int = 16,
                 widths: tuple[int, ...] = (16, 32, 64), num_groups: int = 8, ndf: int = 32, fused: bool = True):
        super().__init__()
        self.vae = ConvVAE(image_size, channels, latent_dim, widths, num_groups, fused)
        self.discriminator = PatchDiscriminator(channels, ndf, fused=fused)

    def forward(self, x: Tensor) -> Tensor:
        return self.vae(x)


__all__ = ["VAEGAN", "PatchDiscriminator"]
