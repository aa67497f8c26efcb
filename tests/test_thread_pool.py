"""The CPU kernels' own thread pool (csrc/common/thread_pool.h): results independent of thread
count and of concurrent callers, and usable in a forked child (its workers do not survive fork)."""
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import gankern
from gankern import _native

from conftest import skip_unless_runnable


def _work(x, b):
    return gankern.bias_act(x, b, act="lrelu", clamp=2.0), gankern.group_norm_act(x, 4, act="silu")


@pytest.fixture
def cpu_kernels():
    skip_unless_runnable("bias_act", "cpu", "cpu")
    yield _native.cpu
    _native.cpu.set_num_threads(torch.get_num_threads())


def test_same_results_for_any_thread_count(cpu_kernels):
    x, b = torch.randn(3, 8, 67, 129), torch.randn(8)
    cpu_kernels.set_num_threads(1)
    want = _work(x, b)
    for n in (2, 3, 8):
        cpu_kernels.set_num_threads(n)
        for got, ref in zip(_work(x, b), want):
            assert torch.equal(got, ref), n


def test_concurrent_callers(cpu_kernels):
    """Python threads calling kernels at once (the GIL is released inside): the one holding the pool
    runs parallel, the others inline; every result is right."""
    cpu_kernels.set_num_threads(4)
    x, b = torch.randn(2, 8, 256, 130), torch.randn(8)
    want = _work(x, b)
    errors = []

    def run():
        for _ in range(5):
            for got, ref in zip(_work(x, b), want):
                if not torch.equal(got, ref):
                    errors.append("mismatch")

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a kernel call hung"
    assert not errors


_FORK_SCRIPT = """
import os, torch, gankern
from gankern import _native
_native.cpu.set_num_threads(2)
x, b = torch.randn(2, 8, 256, 130), torch.randn(8)
want = (gankern.bias_act(x, b, act="lrelu", clamp=2.0), gankern.group_norm_act(x, 4, act="silu"))
pid = os.fork()  # the parent's pool has started its worker; the child has none
if pid == 0:
    got = (gankern.bias_act(x, b, act="lrelu", clamp=2.0), gankern.group_norm_act(x, 4, act="silu"))
    os._exit(0 if all(torch.equal(g, w) for g, w in zip(got, want)) else 1)
_, status = os.waitpid(pid, 0)
raise SystemExit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 2)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_kernels_run_in_a_forked_child(cpu_kernels):
    """In a fresh process (pytest's own hooks run torch ops whose OpenMP pool would not survive the
    fork either): the child neither hangs on the parent's absent workers nor computes wrongly."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], env=env, timeout=120, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
