"""The CUDA emulator itself (csrc/emulator/): barriers and warp shuffles exchange the right values,
and the bugs a GPU would hang on or silently survive are reported as errors."""
import pytest

from gankern import _native

emu = _native.cuda if _native.cuda_emulated() else None
pytestmark = pytest.mark.skipif(emu is None, reason="the CUDA emulator is not in use (GANKERN_CUDA_EMULATOR=1 "
                                                    "and a build with GANKERN_BUILD_EMULATOR=1)")


def test_block_reduction_by_shuffles_and_shared_memory():
    # three blocks of 256 threads, each summing its global thread indices: 0 + 1 + ... + 767
    assert emu.emulator_self_test(0) == sum(range(3 * 256))


@pytest.mark.parametrize("kind, words", [
    (1, "returned while 128 threads wait at __syncthreads()"),
    (2, "thread (5, 0, 0) returned while lanes of its warp wait in a shuffle"),
    (3, "deadlock: every unfinished thread waits at a barrier"),
])
def test_reports_divergence_instead_of_hanging(kind, words):
    with pytest.raises(RuntimeError, match="CUDA emulator, block \\(0, 0, 0\\)") as info:
        emu.emulator_self_test(kind)
    assert words in str(info.value)
