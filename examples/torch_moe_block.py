"""A transformer block whose feed-forward is a monomoe MoE layer, timed next to the same block with
a plain PyTorch MoE (same weights, gate, top-k and experts), on every GPU torchrun starts:

    torchrun --nproc-per-node 2 examples/torch_moe_block.py [--tokens 8192] [--hidden 2048] ...

With W processes, each owns experts/W experts (expert parallelism through monomoe's kernel); the
plain block runs the same routed computation with the experts all-gathered on every rank (what a
reader can check by eye, not a tuned baseline: `monomoe bench` has that). Prints, on rank 0, the
median latency of each block over --iters calls (CUDA events, after --warmup) and the two outputs'
relative difference.
"""
import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

import monomoe


def plain_moe(x, gate, w1, b1, w2, b2, topk, act, ffn):
    """The layer in plain PyTorch: softmax gate, top-k, renormalized weights, expert FFNs."""
    probs = torch.softmax(x.float() @ gate.float().t(), dim=-1)
    w, ids = torch.topk(probs, topk, dim=-1)
    w = (w / w.sum(dim=-1, keepdim=True)).to(x.dtype)
    y = torch.zeros_like(x)
    for e in range(gate.shape[0]):
        rows, slot = (ids == e).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        h = x[rows] @ w1[e].t() + b1[e]
        h = F.silu(h[:, :ffn]) * h[:, ffn:] if act == "swiglu" else F.gelu(h)
        y.index_add_(0, rows, (h @ w2[e].t() + b2[e]) * w[rows, slot].unsqueeze(1))
    return y


class Block(torch.nn.Module):
    def __init__(self, hidden, moe):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(hidden, device="cuda", dtype=torch.bfloat16)
        self.attn = torch.nn.MultiheadAttention(hidden, 16, batch_first=True, device="cuda",
                                                dtype=torch.bfloat16)
        self.norm2 = torch.nn.LayerNorm(hidden, device="cuda", dtype=torch.bfloat16)
        self.moe = moe

    def forward(self, x, seq):
        h = self.norm1(x).view(-1, seq, x.shape[-1])
        x = x + self.attn(h, h, h, need_weights=False)[0].reshape(x.shape)
        return x + self.moe(self.norm2(x))


def median_ms(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192, help="tokens per GPU (default 8192)")
    ap.add_argument("--seq", type=int, default=1024, help="attention sequence length (default 1024)")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=2048)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--topk", type=int, default=2)
    ap.add_argument("--act", default="gelu", choices=["gelu", "swiglu"])
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local_rank)
    group = None
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        group = dist.group.WORLD
    world = dist.get_world_size() if group is not None else 1
    rank = dist.get_rank() if group is not None else 0
    torch.manual_seed(1234 + rank)

    moe = monomoe.MoE(a.hidden, a.ffn, a.experts, a.topk, act=a.act, dtype=torch.bfloat16,
                      group=group, max_tokens=a.tokens)
    fused = Block(a.hidden, moe)
    # The plain block: every rank holds all experts (gathered from their owners).
    def gathered(p):
        if world == 1:
            return p.detach()
        parts = [torch.empty_like(p) for _ in range(world)]
        dist.all_gather(parts, p.detach().contiguous())
        return torch.cat(parts)
    w1, b1, w2, b2 = (gathered(p) for p in (moe.w1, moe.b1, moe.w2, moe.b2))
    plain_layer = lambda x: plain_moe(x, moe.gate, w1, b1, w2, b2, a.topk, a.act, a.ffn)  # noqa: E731
    plain = Block(a.hidden, plain_layer)
    plain.load_state_dict({k: v for k, v in fused.state_dict().items() if not k.startswith("moe.")},
                          strict=False)

    x = torch.randn(a.tokens, a.hidden, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        y_fused, y_plain = fused(x, a.seq), plain(x, a.seq)
        diff = ((y_fused.float() - y_plain.float()).norm() / y_plain.float().norm()).item()
        t_fused = median_ms(lambda: fused(x, a.seq), a.warmup, a.iters)
        t_plain = median_ms(lambda: plain(x, a.seq), a.warmup, a.iters)
    if rank == 0:
        print(f"block with monomoe MoE: {t_fused:.3f} ms   with plain PyTorch MoE: {t_plain:.3f} ms"
              f"   ({t_plain / t_fused:.2f}x)   GPUs {world}, tokens/GPU {a.tokens}, "
              f"output rel. difference {diff:.2e}")
    if group is not None:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
