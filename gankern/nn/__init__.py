"""nn.Module layers whose hot paths call gankern's fused ops."""
from .bias_act import BiasAct
from .vae import Reparameterize

__all__ = ["BiasAct", "Reparameterize"]
