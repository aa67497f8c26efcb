"""nn.Module layers whose hot paths call gankern's fused ops."""
from .bias_act import BiasAct

__all__ = ["BiasAct"]
