"""nn.Module layers whose hot paths call gankern's fused ops."""
from .bias_act import BiasAct
from .resample import Downsample2d, Upsample2d
from .equalized import EqualizedConv2d, EqualizedLinear
from .minibatch_std import MinibatchStdDev
from .norm import Activation, BatchNormAct2d, ConvNormAct, GroupNormAct
from .vae import Reparameterize
from .modulated import ModulatedConv2d, SynthesisLayer, SynthesisLayer3, ToRGBLayer

__all__ = ["BiasAct", "GroupNormAct", "BatchNormAct2d", "ConvNormAct", "Activation", "Reparameterize", "Upsample2d",
           "Downsample2d", "EqualizedLinear", "EqualizedConv2d",
           "MinibatchStdDev", "ModulatedConv2d", "SynthesisLayer", "SynthesisLayer3", "ToRGBLayer"]
