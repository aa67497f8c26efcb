"""The constants Python, Triton and the native kernels share, defined once.

This file is the single source: `csrc/gen_tables.py` (run by CMake at configure time) turns it into
the C++ header `gk_tables.h`, and Python (gankern.reference, gankern.ops, gankern.triton) imports it.
It is plain Python with no imports, so the reference and Triton backends keep working when the
native modules were not built, and CMake can read it without torch. The compiled modules carry
`TABLES_DIGEST`; gankern/_native.py refuses a module built from another version of this file.

C++ names: every dict below becomes `enum <Enum> : int { <prefix><CamelCaseName> = value }` in the
namespace given in ENUMS (e.g. ACTIVATIONS["gelu_tanh"] -> gk::kGeluTanh), every entry of SCALARS a
`constexpr std::int64_t` of the C++ name it gives, every entry of REALS a `constexpr float`.
"""

# Storage type codes of gk::View.dtype (csrc/common/view.h); the torch dtype of each is
# gankern/_native.py: DTYPE_CODES.
DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2, "float64": 3, "int64": 4, "uint8": 5}

# Pointwise activations of the fused ops (csrc/common/activations.h, gankern/triton/activations.py,
# gankern/reference/activations.py).
ACTIVATIONS = {
    "linear": 0, "relu": 1, "lrelu": 2, "tanh": 3, "sigmoid": 4, "elu": 5, "selu": 6,
    "softplus": 7, "swish": 8, "gelu": 9, "gelu_tanh": 10,
}

# Flags of the generic diffusion step (meaning: gankern/reference/diffusion.py).
DIFFUSION_FLAGS = {
    "guided": 1, "clip": 2, "thresh": 4, "hist": 8, "noise_tensor": 16, "noise_philox": 32,
    "var_learned_range": 64, "var_learned": 128, "rescale": 256,
}

# Coefficient slots of the generic diffusion step, in order; the step takes DIFFUSION_NUM_COEFS
# floats (the last slot is spare).
DIFFUSION_COEFS = ("g", "pre", "px", "pm", "clip", "qx", "qm", "q0", "a", "b", "c", "d", "s", "e0", "e1")

SCALARS = {
    # Elements per per-sample reduction block of the diffusion CUDA kernels (threads * items per
    # thread): the caller allocates ceil(S / chunk) partial sums per sample.
    "DIFFUSION_REDUCTION_CHUNK": ("gk::diffusion::kReductionChunk", 1024),
    "DIFFUSION_NUM_COEFS": ("gk::diffusion::kNumCoefs", 16),
    # Elements per fp64 KL partial sum of the VAE kernels (a fixed blocking: sums do not depend on
    # the thread count). CPU: big blocks amortize the tiles; CUDA: one thread block's 4 x 4 x 256.
    "VAE_KL_BLOCK_CPU": ("gk::vae::kKlBlockCpu", 16384),
    "VAE_KL_BLOCK_CUDA": ("gk::vae::kKlBlockCuda", 4096),
}

# Real constants of the formulas (C++ computes in float; Python and Triton take the same values).
REALS = {
    "SELU_ALPHA": ("gk::kSeluAlpha", 1.6732632423543772),
    "SELU_SCALE": ("gk::kSeluScale", 1.0507009873554805),
    # modulated convolution's demodulation, as StyleGAN2: rsqrt(sum of squared weights + eps)
    "DEMOD_EPS": ("gk::modulated_conv::kDemodEps", 1e-8),
}

# (table, C++ namespace, enum name, identifier prefix)
ENUMS = (
    ("DTYPES", "gk", "DType", "k"),
    ("ACTIVATIONS", "gk", "Act", "k"),
    ("DIFFUSION_FLAGS", "gk::diffusion", "Flag", "k"),
    ("DIFFUSION_COEFS", "gk::diffusion", "Coef", "c"),
)


def scalar(name: str) -> int:
    return SCALARS[name][1]


def real(name: str) -> float:
    return REALS[name][1]


def digest() -> str:
    """Fingerprint of every table (not of comments): the compiled modules export the one they were
    built from, so a stale build is detected at import."""
    import hashlib
    data = repr([(t, globals()[t]) for t, *_ in ENUMS] + sorted(SCALARS.items()) + sorted(REALS.items()))
    return hashlib.sha256(data.encode()).hexdigest()[:16]
