"""gankern.randn: the RNG contract on every backend, against the float64 specification and against
Triton's own tl.randn4x, plus statistics with bounds set by the sample size."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import gankern
from gankern.backends import use_backend, why_not
from gankern.ops import random as gr
from gankern.reference import random as R

from conftest import DEVICES, KERNEL_BACKENDS, skip_unless_runnable

try:  # module-level names: @triton.jit functions resolve globals, not a test's locals
    from gankern.triton.random import randn_flat, randn_tile
except ImportError:  # no triton: the tests using them skip
    randn_flat = randn_tile = None

U64 = 1 << 64

# fp32 Box-Muller vs the float64 one of the same (exact) uniforms: th = 2 pi u2 rounds to fp32
# (half an ulp of 2 pi, 2.4e-7) and is multiplied by r <= 5.7, plus a few ulps from log/sqrt/sincos.
ATOL, RTOL = 2e-6, 2e-6

CASES = [  # (shape, seed, offset): odd lengths, offsets past 2^32, counters wrapping at 2^64
    ((1,), 0, 0), ((7,), 1, 0), ((3, 5, 7), 12345, 3), ((4, 4), 2**31 - 1, 2**31 - 3),
    ((1001,), 2**32 + 5, 2**32 - 2), ((2, 3, 17), 2**63 - 1, 2**40 + 1), ((33,), U64 - 1, U64 - 3),
    ((0, 3), 7, 0), ((), 9, 11), ((64, 129), 2**40, 2**33 + 7),
]


def ref64(shape, seed, offset):
    return R.randn(shape, gr.seed_bits(seed), gr.seed_bits(offset), dtype=torch.float64)


def close(out, ref, what=""):
    out = out.double().cpu()
    assert out.shape == ref.shape, what
    assert not torch.isnan(out).any(), f"{what}: NaN (unwritten elements?)"
    err = (out - ref).abs() - (ATOL + RTOL * ref.abs())
    assert err.max().item() <= 0 if err.numel() else True, f"{what}: max abs error {(out - ref).abs().max():.3g}"


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,seed,offset", CASES)
def test_matches_reference(backend, device, shape, seed, offset):
    skip_unless_runnable("randn", backend, device)
    with use_backend(backend):
        out = gankern.randn(shape, seed, offset, device=device)
    assert out.dtype == torch.float32 and out.device.type == device
    close(out, ref64(shape, seed, offset), f"{backend} {shape} seed={seed} offset={offset}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(max_examples=12, deadline=None)
@given(shape=st.lists(st.integers(0, 37), min_size=1, max_size=3), seed=st.integers(0, U64 - 1),
       offset=st.integers(0, U64 - 1))
def test_matches_reference_drawn(backend, shape, seed, offset):
    skip_unless_runnable("randn", backend, DEVICES[-1])
    with use_backend(backend):
        out = gankern.randn(shape, seed, offset, device=DEVICES[-1])
    close(out, ref64(shape, seed, offset), f"{backend} {shape}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_round_fp32(backend, dtype):
    device = DEVICES[-1]
    skip_unless_runnable("randn", backend, device, dtype)
    with use_backend(backend):
        out = gankern.randn((5, 11), 3, 2**33, device=device, dtype=dtype)
    assert out.dtype == dtype
    r = ref64((5, 11), 3, 2**33)
    expect = r.to(dtype) if dtype == torch.float64 else r.float().to(dtype)
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float64: 1e-12}[dtype]
    assert torch.allclose(out.double().cpu(), expect.double(), atol=tol * 6, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_half_output_is_fp32_rounded_like_torch(dtype):
    """The CPU writes bf16/fp16 normals itself (rounded per tile): bit for bit torch's rounding of the
    same fp32 normals, over several tiles and thread blocks and an odd tail."""
    skip_unless_runnable("randn", "cpu", "cpu", dtype)
    with use_backend("cpu"):
        h = gankern.randn((7, 30001), 11, 5, dtype=dtype)
        f = gankern.randn((7, 30001), 11, 5)
    assert h.dtype == dtype and torch.equal(h, f.to(dtype))


def test_reference_float32_close_to_float64():
    a = R.randn((4096,), 11, 2**35, dtype=torch.float32)
    close(a, R.randn((4096,), 11, 2**35, dtype=torch.float64))


def test_philox_known_answer():
    """Random123's published Philox4x32-10 known-answer vector for counter and key all zeros (its
    other vectors set counter words 2 and 3, which this generator keeps at 0). Triton's key
    schedule is Random123's with key = (seed_lo, seed_hi); the words are also compared with
    tl.randint4x itself."""
    w = R.philox4x32_10(0, torch.zeros(1, dtype=torch.int64))
    assert [int(x) for x in w] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


# ---- against Triton's own tl.randn4x, run by the interpreter (or the GPU) ---------------------

def _triton_randn4x(seed, offset, count, device):
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(out_ptr, seed, offset, N: tl.constexpr):
        k = tl.arange(0, N)
        n0, n1, n2, n3 = tl.randn4x(seed, offset.to(tl.int64) + k.to(tl.int64))
        tl.store(out_ptr + 4 * k, n0)
        tl.store(out_ptr + 4 * k + 1, n1)
        tl.store(out_ptr + 4 * k + 2, n2)
        tl.store(out_ptr + 4 * k + 3, n3)

    out = torch.empty(4 * count, device=device)
    kernel[(1,)](out, seed, offset, N=count)
    return out


@pytest.mark.parametrize("seed,offset", [(0, 0), (42, 2**32 + 17), (2**62 + 3, 2**45), (U64 - 1, U64 - 9)])
def test_reference_words_equal_triton_randint4x(seed, offset):
    """The specification's Philox words are exactly tl.randint4x's (integers: no rounding)."""
    device = DEVICES[-1]
    skip_unless_runnable("randn", "triton", device)
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(out_ptr, seed, offset, N: tl.constexpr):
        k = tl.arange(0, N)
        w0, w1, w2, w3 = tl.randint4x(seed, offset.to(tl.int64) + k.to(tl.int64))
        tl.store(out_ptr + 4 * k, w0.to(tl.int64) & 0xFFFFFFFF)
        tl.store(out_ptr + 4 * k + 1, w1.to(tl.int64) & 0xFFFFFFFF)
        tl.store(out_ptr + 4 * k + 2, w2.to(tl.int64) & 0xFFFFFFFF)
        tl.store(out_ptr + 4 * k + 3, w3.to(tl.int64) & 0xFFFFFFFF)

    out = torch.empty(4 * 32, dtype=torch.int64, device=device)
    kernel[(1,)](out, gr.seed_bits(seed), gr.seed_bits(offset), N=32)
    words = R.philox4x32_10(seed, R.counter_tensor(offset, 32))
    assert torch.equal(out.cpu().view(32, 4), torch.stack(words, dim=1))


@pytest.mark.parametrize("seed,offset", [(0, 0), (42, 2**32 + 17), (2**62 + 3, 2**45), (U64 - 1, 5)])
def test_equals_triton_randn4x(seed, offset):
    device = DEVICES[-1]
    skip_unless_runnable("randn", "triton", device)
    expect = _triton_randn4x(gr.seed_bits(seed), gr.seed_bits(offset), 64, device)
    for backend in KERNEL_BACKENDS:
        if why_not("randn", backend, device, torch.float32) is None:
            with use_backend(backend):
                out = gankern.randn((255,), seed, offset, device=device)
            close(out, expect[:255].double().cpu(), f"{backend} vs tl.randn4x")
            if backend == "triton":  # the same code path: equal to the bit
                assert torch.equal(out, expect[:255])


def test_triton_helpers_tile_and_flat():
    """randn_tile (flat block) and randn_flat (arbitrary indices, here reversed) agree with
    gankern.randn: the helpers other kernels build on."""
    device = DEVICES[-1]
    skip_unless_runnable("randn", "triton", device)
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(tile_ptr, flat_ptr, n, seed, offset, BLOCK: tl.constexpr):
        start = tl.program_id(0).to(tl.int64) * BLOCK
        offs = start + tl.arange(0, BLOCK)
        tl.store(tile_ptr + offs, randn_tile(seed, offset, start, BLOCK), mask=offs < n)
        rev = n - 1 - offs
        tl.store(flat_ptr + rev, randn_flat(seed, offset, rev), mask=offs < n)

    n, seed, offset = 301, 2**40 + 1, 2**32 - 5
    tile = torch.full((n,), float("nan"), device=device)
    flat = torch.full((n,), float("nan"), device=device)
    kernel[(triton.cdiv(n, 64),)](tile, flat, n, seed, offset, BLOCK=64)
    with use_backend("triton"):
        expect = gankern.randn((n,), seed, offset, device=device)
    assert torch.equal(tile, expect) and torch.equal(flat, expect)


# ---- API ------------------------------------------------------------------------------------

def test_randn_like_and_offsets_compose():
    x = torch.empty(6, 7, dtype=torch.float16).to(memory_format=torch.contiguous_format)
    y = gankern.randn_like(x, 5, 9)
    assert y.shape == x.shape and y.dtype == x.dtype
    # a call uses ceil(n/4) counters: two calls at the right offsets tile one longer call
    a = gankern.randn((10,), 5, 9)
    b = gankern.randn((8,), 5, 9 + 3)
    whole = gankern.randn((20,), 5, 9)
    assert torch.equal(whole[:10], a) and torch.equal(whole[12:20], b)


def test_seed_none_follows_torch_manual_seed():
    torch.manual_seed(123)
    a = gankern.randn((100,))
    torch.manual_seed(123)
    b = gankern.randn((100,))
    c = gankern.randn((100,))
    assert torch.equal(a, b) and not torch.equal(b, c)
    s = gankern.random_seed()
    assert 0 <= s < 2**63


def test_reproducible_and_shape_independent():
    a = gankern.randn((3, 8), 77, 100)
    b = gankern.randn((24,), 77, 100)
    assert torch.equal(a.flatten(), b)
    assert torch.equal(gankern.randn((3, 8), 77, 100), a)


@pytest.mark.parametrize("bad,exc", [
    (dict(shape=(2, -1)), ValueError), (dict(shape="abc"), TypeError), (dict(seed=-(2**63) - 1), ValueError),
    (dict(seed=U64), ValueError), (dict(seed=1.5), TypeError), (dict(offset=-(2**64)), ValueError),
    (dict(dtype=torch.int32), TypeError),
])
def test_bad_arguments(bad, exc):
    args = dict(shape=(3,), seed=1, offset=0) | bad
    with pytest.raises(exc):
        gankern.randn(**args)


def test_seed_range_edges():
    # one documented range for seeds and offsets, [-2^63, 2^64), negative = two's complement
    assert torch.equal(gankern.randn((9,), -(2**63), -1), gankern.randn((9,), 2**63, U64 - 1))
    assert torch.equal(gankern.randn((9,), U64 - 1, 0), gankern.randn((9,), -1, 0))
    for seed, offset in [(-(2**63) - 1, 0), (U64, 0), (0, -(2**63) - 1), (0, U64)]:
        with pytest.raises(ValueError, match="seed|offset"):
            gankern.randn((3,), seed, offset)


def test_torch_compile_fullgraph():
    f = torch.compile(lambda x: x + gankern.randn(x.shape, 3, 4), fullgraph=True)
    x = torch.zeros(5, 6)
    assert torch.equal(f(x), gankern.randn((5, 6), 3, 4))


def test_opcheck():
    torch.library.opcheck(torch.ops.gankern.randn.default, ([4, 5], 3, 2**33, torch.float32, torch.device("cpu")))


# ---- statistics -------------------------------------------------------------------------------
# Fixed seeds; every bound is z = 6 standard errors of the statistic for the sample size, so a
# correct generator fails with probability ~1e-9 per check while a biased one cannot hide.

N_STAT = 1 << 20
Z = 6.0


@pytest.fixture(scope="module")
def sample():
    return gankern.randn((N_STAT,), 20240521, 2**33).double().numpy()


def test_moments(sample):
    n = sample.size
    assert abs(sample.mean()) < Z / math.sqrt(n)
    assert abs(sample.var() - 1) < Z * math.sqrt(2 / n)
    skew = ((sample - sample.mean()) ** 3).mean() / sample.std() ** 3
    kurt = ((sample - sample.mean()) ** 4).mean() / sample.var() ** 2 - 3
    assert abs(skew) < Z * math.sqrt(6 / n)
    assert abs(kurt) < Z * math.sqrt(24 / n)


def test_kolmogorov_smirnov(sample):
    scipy_stats = pytest.importorskip("scipy.stats")
    res = scipy_stats.kstest(sample, "norm")
    assert res.pvalue > 1e-6, res


def test_each_component_is_normal(sample):
    """The four components of a counter come from different words/transforms: check each."""
    scipy_stats = pytest.importorskip("scipy.stats")
    for j in range(4):
        part = sample[j::4]
        assert abs(part.mean()) < Z / math.sqrt(part.size)
        assert scipy_stats.kstest(part, "norm").pvalue > 1e-6


def test_neighbour_correlation(sample):
    n = sample.size
    for lag in (1, 2, 3, 4, 5, 8):
        c = np.corrcoef(sample[:-lag], sample[lag:])[0, 1]
        assert abs(c) < Z / math.sqrt(n - lag), (lag, c)


def test_correlation_across_offsets_and_seeds(sample):
    """Adjacent offsets (streams that share all but one counter), the next seed, and an offset
    2^32 away (only the high counter word differs) are uncorrelated with the sample."""
    n = sample.size
    for seed, offset in ((20240521, 2**33 + 1), (20240522, 2**33), (20240521, 2**33 + 2**32)):
        other = gankern.randn((n,), seed, offset).double().numpy()
        c = np.corrcoef(sample, other)[0, 1]
        assert abs(c) < Z / math.sqrt(n), (seed, offset, c)


def test_tails():
    """Box-Muller's u1 >= 1e-7 caps |z| at sqrt(-2 log 1e-7) = 5.68; P(|z| > 4) = 6.3e-5."""
    z = gankern.randn((1 << 21,), 99, 0).double()
    assert z.abs().max().item() <= 5.6777
    expect = (1 << 21) * 6.334e-5
    assert abs((z.abs() > 4).sum().item() - expect) < Z * math.sqrt(expect)
