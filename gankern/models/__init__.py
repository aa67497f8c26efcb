"""Models whose hot paths run through gankern's fused ops. Every model takes fused=True|False with
the same state_dict keys either way (docs/models.md)."""
from .autoencoder_kl import AutoencoderKL
from .dcgan import DCGAN, DCGANDiscriminator, DCGANGenerator
from .stylegan2 import StyleGAN2, StyleGAN2Discriminator, StyleGAN2Generator
from .stylegan3 import StyleGAN3, StyleGAN3Generator
from .unet_2d import UNet2DModel
from .vae import Autoencoder, ConvVAE
from .vaegan import VAEGAN, PatchDiscriminator
