"""DCGAN (Radford et al. 2016) as in PyTorch's classic example, for any power-of-two resolution >= 16.

Generator: z [B, nz, 1, 1] -> ConvTranspose(4, 1, 0) to 4x4, then ConvTranspose(4, 2, 1) blocks
doubling the resolution and halving the channels, each followed by BatchNorm + ReLU, and a last
ConvTranspose + tanh. Discriminator: the mirror with Conv(4, 2, 1) + BatchNorm + LeakyReLU(0.2)
(no BatchNorm on the first block) and a 4x4 valid Conv to one logit. Fused, every norm +
activation is one gankern.batch_norm_act; in eval mode the BatchNorms fold into the convolutions
(see gankern.models._layers.ConvNormAct).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._layers import ConvNormAct, check_fused


def _levels(image_size: int) -> int:
    if not isinstance(image_size, int) or image_size < 16 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= 16, got {image_size!r}")
    return int(math.log2(image_size)) - 3   # 4x4 -> image_size/2 in stride-2 blocks, then the output layer


def init_dcgan_weights(module: nn.Module) -> None:
    """The DCGAN paper's init: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    def __init__(self, image_size: int = 32, channels: int = 1, nz: int = 64, ngf: int = 32, fused: bool = True):
        super().__init__()
        levels = _levels(image_size)
        self.image_size, self.channels, self.nz, self.fused = image_size, channels, nz, check_fused(fused)
        width = ngf * 2 ** levels
        blocks = [ConvNormAct(nz, width, 4, 1, 0, "batch", "relu", fused, transposed=True)]
        for _ in range(levels):
            blocks.append(ConvNormAct(width, width // 2, 4, 2, 1, "batch", "relu", fused, transposed=True))
            width //= 2
        self.blocks = nn.Sequential(*blocks)
        self.to_image = nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False)
        init_dcgan_weights(self)

    def forward(self, z: Tensor) -> Tensor:
        if z.ndim == 2:
            z = z[:, :, None, None]
        return torch.tanh(self.to_image(self.blocks(z)))

    def latent(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        return torch.randn(n, self.nz, 1, 1, generator=generator, device=device)


class DCGANDiscriminator(nn.Module):
    def __init__(self, image_size: int = 32, channels: int = 1, ndf: int = 32, fused: bool = True):
        super().__init__()
        levels = _levels(image_size)
        self.fused = check_fused(fused)
        blocks = [ConvNormAct(channels, ndf, 4, 2, 1, None, "lrelu", fused, bias=False)]
        width = ndf
        for _ in range(levels):
            blocks.append(ConvNormAct(width, width * 2, 4, 2, 1, "batch", "lrelu", fused))
            width *= 2
        self.blocks = nn.Sequential(*blocks)
        self.to_logit = nn.Conv2d(width, 1, 4, 1, 0, bias=False)
        init_dcgan_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.to_logit(self.blocks(x)).flatten(1).squeeze(1)


class DCGAN(nn.Module):
    """Generator and discriminator together (one state_dict: "generator.*", "discriminator.*")."""

    def __init__(self, image_size: int = 32, channels: int = 1, nz: int = 64, ngf: int = 32, ndf: int = 32,
                 fused: bool = True):
        super().__init__()
        self.generator = DCGANGenerator(image_size, channels, nz, ngf, fused)
        self.discriminator = DCGANDiscriminator(image_size, channels, ndf, fused)

    def forward(self, z: Tensor) -> Tensor:
        return self.generator(z)


__all__ = ["DCGAN", "DCGANGenerator", "DCGANDiscriminator", "init_dcgan_weights"]
