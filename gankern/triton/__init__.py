"""Triton kernels, one module per op family. Imported lazily by gankern.ops when the triton
backend is chosen, so gankern imports without triton."""
