"""No gankern call makes the host wait for the GPU (gpu-marked: runs where CUDA is).

A synchronization inside an op (`.item()`, `.tolist()`, a host list copied to the device) stalls
the whole pipeline: the host stops enqueueing until the GPU drains its queue, so a model's step
takes host time plus device time instead of the larger of the two. The first H200 session measured
every fused model 3-4x slower than eager (benchmarks/results/h200-2026-11-29/), and one such copy
ran in every GroupNorm/BatchNorm call. torch's sync debug mode turns each synchronization into an
error; every contract case runs forward and backward under it on each GPU backend, after a warm
call (compilation and first allocations may synchronize; they happen once).
"""
import pytest
import torch

import gankern
from contract import leaves, outputs, skip_reason
from contract_cases import all_cases

pytestmark = pytest.mark.gpu
CASES = all_cases()


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_no_host_synchronization(case, backend):
    why = skip_reason(case, backend, "cuda")
    if why is not None:
        pytest.skip(why)
    tensors = {k: (v.to("cuda") if v is not None else None)
               for k, v in case.make(tuple(case.shape), torch.Generator().manual_seed(0)).items()}
    ins = leaves(case, tensors, grad=True)
    wanted = case.grad_args(ins)

    def step():
        outs = [o for o in outputs(case.call(**ins)) if o.requires_grad]
        if outs and wanted:
            loss = sum(o.float().sum() for o in outs)
            torch.autograd.grad(loss, [ins[k] for k in wanted], allow_unused=True)

    with gankern.use_backend(backend):
        step()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
