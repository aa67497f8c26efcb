"""Models whose hot paths run through gankern's fused ops; each takes fused=True|False."""
from .autoencoder_kl import AutoencoderKL
from .unet_2d import UNet2DModel
