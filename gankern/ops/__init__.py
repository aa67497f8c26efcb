"""Public functional API: one module per op family (validation, custom op, autograd, backends)."""
