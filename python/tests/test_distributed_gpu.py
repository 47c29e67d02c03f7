# monomoe.MoE over a torch.distributed process group, one process per GPU as torchrun starts them:
#     torchrun --nproc-per-node 2 -m pytest -m gpu python/tests
# Each rank compares its own tokens' output with the plain PyTorch layer computed on that rank with
# every rank's experts gathered. Without torchrun (WORLD_SIZE < 2) these tests skip.
import os
import types

import pytest

from conftest import cuda_or_skip
from test_module_gpu import reference, rel_err

pytestmark = pytest.mark.gpu


def process_group():
    torch = cuda_or_skip()
    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        pytest.skip("needs torchrun with 2+ processes: torchrun --nproc-per-node 2 -m pytest -m gpu")
    if torch.cuda.device_count() < int(os.environ.get("LOCAL_WORLD_SIZE", "1")):
        pytest.skip("fewer GPUs than processes on this node")
    if not dist.is_initialized():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    return torch, dist


def gathered(torch, dist, m):
    """The layer's weights with every rank's experts (all-gathered), for the reference; fp8's
    E4M3 matrices travel as bytes, with their block scales."""
    def cat(p):
        if p is None:
            return None
        data = p.data.contiguous()
        fp8 = data.dtype == torch.float8_e4m3fn
        if fp8:
            data = data.view(torch.uint8)
        parts = [torch.empty_like(data) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, data)
        whole = torch.cat(parts, dim=0)
        return whole.view(torch.float8_e4m3fn) if fp8 else whole
    return types.SimpleNamespace(config=m.config, gate=m.gate, w1=cat(m.w1), b1=cat(m.b1),
                                 w2=cat(m.w2), b2=cat(m.b2), w1_scale=cat(m.w1_scale),
                                 w2_scale=cat(m.w2_scale))


@pytest.mark.parametrize("act", ["gelu", "swiglu"])
@pytest.mark.parametrize("dtype_name", ["bf16", "fp8"])
def test_expert_parallel_matches_plain_pytorch(act, dtype_name):
    torch, dist = process_group()
    import monomoe
    world, rank = dist.get_world_size(), dist.get_rank()
    torch.manual_seed(100)  # the same parameters on every rank before each keeps its experts
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float8_e4m3fn
    m = monomoe.MoE(hidden=256, ffn=256, experts=4 * world, topk=2, act=act, dtype=dtype,
                    group=dist.group.WORLD, max_tokens=512)
    ref_m = gathered(torch, dist, m)
    torch.manual_seed(200 + rank)  # different tokens on every rank; the last rank has none
    tokens = 0 if rank == world - 1 else 300 - 37 * rank
    x = torch.randn(tokens, 256, device="cuda", dtype=torch.bfloat16)
    for call in range(3):  # repeated calls: the same output bit for bit
        with torch.no_grad():
            y = m(x)
        torch.cuda.synchronize()
        if call == 0:
            first = y.clone()
        else:
            assert torch.equal(y, first), f"rank {rank}: call {call} differs from the first"
    if tokens > 0:
        with torch.no_grad():
            ref = reference(ref_m, x)
        assert torch.isfinite(y.float()).all()
        err = rel_err(y, ref)
        assert err < 2e-2, f"rank {rank}: relative error {err}"
    dist.barrier()


def test_optimizer_step_on_one_rank_reaches_its_experts():
    """Rank r changes its own experts in place between calls: every rank's tokens routed there see
    the new weights (the kernel reads each owner's parameters at every forward)."""
    torch, dist = process_group()
    import monomoe
    world, rank = dist.get_world_size(), dist.get_rank()
    torch.manual_seed(300)
    m = monomoe.MoE(hidden=256, ffn=256, experts=2 * world, topk=2, group=dist.group.WORLD,
                    max_tokens=256)
    torch.manual_seed(400 + rank)
    x = torch.randn(200, 256, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        m(x)
        m.w2.mul_(-0.5)  # every rank scales its own experts' output projection
        y = m(x)
        ref = reference(gathered(torch, dist, m), x)
    err = rel_err(y, ref)
    assert err < 2e-2, f"rank {rank}: relative error {err}"
    dist.barrier()
