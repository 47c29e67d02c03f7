"""monomoe.MoE: the fused layer as a torch.nn.Module, and the custom op it calls.

The module holds the gate and this rank's experts as Parameters in ``nn.Linear`` layout
([out, in]): ``gate`` [experts, hidden], ``w1`` [experts_per_rank, w1_columns, hidden] (SwiGLU:
rows [0, ffn) gate, [ffn, 2 ffn) up), ``b1`` [experts_per_rank, w1_columns], ``w2``
[experts_per_rank, hidden, ffn], ``b2`` [experts_per_rank, hidden]; with ``shared_ffn`` > 0 also
the shared expert, replicated on every rank: ``shared_w1`` [shared_w1_columns, hidden] (SwiGLU:
rows [0, shared_ffn) gate, [shared_ffn, 2 shared_ffn) up), ``shared_b1`` [shared_w1_columns],
``shared_w2`` [hidden, shared_ffn], ``shared_b2`` [hidden]. The kernel reads them in place at every
forward, so an optimizer step or ``load_state_dict`` between calls takes effect.

With ``dtype=torch.float8_e4m3fn`` (FP8 experts, the format of DeepSeek-V3's and Qwen3's FP8
checkpoints; docs/fp8.md) the expert matrices ``w1``, ``w2``, ``shared_w1``, ``shared_w2`` are
E4M3, each with an fp32 scale per 128 x 128 block of its [out, in] matrix: ``w1_scale``
[experts_per_rank, w1_columns / 128, hidden / 128], ``w2_scale`` [experts_per_rank, hidden / 128,
ffn / 128], ``shared_w1_scale`` [shared_w1_columns / 128, hidden / 128], ``shared_w2_scale``
[hidden / 128, shared_ffn / 128]. The value meant is ``e4m3 * scale``: a Hugging Face checkpoint's
``weight_scale_inv`` tensors are these scales as they are. x, y, the gate and the biases stay
bf16; the kernel quantizes the activations per token per 128 channels. FP8 parameters do not
require gradients (the layer has no backward pass).

``load_hf_experts(state_dict, prefix)`` fills the module from a Hugging Face MoE block's tensors
(DeepSeek, Qwen-MoE and Mixtral names; FP8 checkpoints with their ``weight_scale_inv``).

With a process group of W > 1 ranks (one process per GPU, as torchrun starts them) rank r owns
experts [r E/W, (r+1) E/W); building the module, its first forward after the parameters moved to
new memory, and every forward are collective: all ranks do them in the same order.

``forward(x, topk_ids, topk_weights)`` takes a routing decided outside the layer (a
sigmoid-with-bias router, group-limited top-k, ...): the kernel skips the gate and uses those
experts and weights as they are (README, "Routing given by the caller").

Many modules: the modules of one process group on one GPU build their C++ layers on one
communicator, so they share one device workspace (and one symmetric window), sized for the
largest: a model with many MoE layers pays the scratch memory of one, plus every module's
parameters. So they must run one after another (a model does: one stream, or ordered streams), a
module built later that is larger than all before grows that memory (at its first forward: the
device is synchronized), and the memory goes with the last module.

CUDA graphs: a forward can be captured (``torch.cuda.graph``) and replayed with new contents in
the same input tensor, the same token count and the parameters in the same memory (their values
may change). Run one forward before capturing: it builds the C++ layer, which capture forbids.
With several ranks every rank replays its own graph, all in the same order of calls. Run every
module once before capturing any: while a captured module lives, the first forward of a module
that needs more memory than the shared workspace holds raises ValueError (growing it would move
the memory under the captured graphs).
"""

from __future__ import annotations

import itertools
import math
import weakref
from typing import Optional

import torch
import torch.distributed as dist

from . import _C

_ACTIVATIONS = ("relu", "gelu", "silu", "swiglu")
# The shared expert's parameters, in the order the C++ layer and the op take them.
_SHARED = ("shared_w1", "shared_b1", "shared_w2", "shared_b2")
# fp8's block scales, in the order the C++ layer and the op take them (None for other dtypes).
_SCALES = ("w1_scale", "w2_scale", "shared_w1_scale", "shared_w2_scale")
_FP8_MAX = 448.0  # largest finite E4M3 value
_BLOCK = 128      # the scales' block: 128 x 128 weights


def _quantize_blocks(w: torch.Tensor) -> tuple:
    """(E4M3 values, fp32 scales) of `w` [..., out, in] per 128 x 128 block, by the rule of
    docs/fp8.md (the C++ reference's): scale = amax / 448, q = e4m3(w * (448 / amax)); a block of
    zeros gets scale 1. `w` in fp32; out and in multiples of 128."""
    *lead, rows, cols = w.shape
    blocks = w.reshape(*lead, rows // _BLOCK, _BLOCK, cols // _BLOCK, _BLOCK)
    amax = blocks.abs().amax(dim=(-3, -1), keepdim=True)
    zero = amax == 0
    inv = torch.where(zero, torch.ones_like(amax), _FP8_MAX / amax)
    scale = torch.where(zero, torch.ones_like(amax), amax / _FP8_MAX)
    q = (blocks * inv).to(torch.float8_e4m3fn).reshape(w.shape)
    return q, scale.reshape(*lead, rows // _BLOCK, cols // _BLOCK)

# The C++ layers by handle: the custom op takes an int, so that torch.compile sees tensors and an
# int, never a Python object.
_layers: dict = {}
_handles = itertools.count(1)
_communicators: dict = {}


def _group_shape(group) -> tuple:
    """(world, rank) of `group`; (1, 0) without torch.distributed or a group of one."""
    if group is None or not dist.is_available() or not dist.is_initialized():
        if group is not None:
            raise _C.ConfigError("group: torch.distributed is not initialized "
                                 "(call dist.init_process_group first)")
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def _communicator(group, device: int) -> _C.Communicator:
    """One NCCL communicator per (group, device); made collectively on first use. The NCCL id
    travels from the group's rank 0 through torch.distributed. The layers built on it share one
    workspace (see the module's docstring, "Many modules")."""
    key = (id(group), device)
    comm = _communicators.get(key)
    if comm is None:
        world, rank = _group_shape(group)
        if world == 1:
            uid = _C.unique_id()
        else:
            box = [_C.unique_id() if rank == 0 else None]
            dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0), group=group)
            uid = box[0]
        comm = _C.Communicator(uid, rank, world, device)
        _communicators[key] = comm
    return comm


@torch.library.custom_op("monomoe::moe_forward", mutates_args=(), device_types="cuda")
def moe_forward(x: torch.Tensor, gate: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor],
                w2: torch.Tensor, b2: Optional[torch.Tensor], handle: int,
                topk_ids: Optional[torch.Tensor] = None,
                topk_weights: Optional[torch.Tensor] = None,
                shared_w1: Optional[torch.Tensor] = None,
                shared_b1: Optional[torch.Tensor] = None,
                shared_w2: Optional[torch.Tensor] = None,
                shared_b2: Optional[torch.Tensor] = None,
                w1_scale: Optional[torch.Tensor] = None,
                w2_scale: Optional[torch.Tensor] = None,
                shared_w1_scale: Optional[torch.Tensor] = None,
                shared_w2_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = MoE(x) by the layer `handle` (built over exactly these weight tensors, the shared
    expert's included when it has one, and fp8's block scales), on the current stream. The
    weights are arguments so that graph capture and compilers see what it reads; so is a given
    routing (topk_ids int32, topk_weights float32, [tokens, topk], checked by MoE.forward), which
    replaces the gate's."""
    y = torch.empty_like(x)
    stream = torch.cuda.current_stream(x.device).cuda_stream
    if topk_ids is None and topk_weights is None:
        _layers[handle].forward(x.data_ptr(), x.shape[0], y.data_ptr(), stream)
    else:
        _layers[handle].forward(x.data_ptr(), x.shape[0], y.data_ptr(), stream,
                                topk_ids=0 if topk_ids is None else topk_ids.data_ptr(),
                                topk_weights=0 if topk_weights is None else topk_weights.data_ptr())
    return y


@moe_forward.register_fake
def _(x, gate, w1, b1, w2, b2, handle, topk_ids=None, topk_weights=None, shared_w1=None,
      shared_b1=None, shared_w2=None, shared_b2=None, w1_scale=None, w2_scale=None,
      shared_w1_scale=None, shared_w2_scale=None):
    return torch.empty_like(x)


def _no_backward(ctx, grad):
    raise NotImplementedError("monomoe.MoE has no backward pass yet: use it for inference "
                              "(torch.no_grad) or in front of frozen experts")


moe_forward.register_autograd(_no_backward, setup_context=lambda ctx, inputs, output: None)


class MoE(torch.nn.Module):
    """A Mixture-of-Experts layer: softmax gate, top-k routing, expert FFNs, weighted combine.

    Args:
        hidden, ffn, experts, topk: model width, expert FFN width (each half for SwiGLU), experts
            over all ranks (divisible by the group's size), experts per token (1..8).
        act: "relu", "gelu", "silu" or "swiglu".
        dtype: torch.bfloat16 (tensor cores, fp32 accumulation), torch.float32 (then
            ``fp32_math`` = "tf32" for TF32 tensor-core math, or "fp32" for strict fp32), or
            torch.float8_e4m3fn (FP8 experts with 128 x 128 block scales, x and y in bf16; see
            the module's docstring; hidden, ffn and shared_ffn multiples of 128).
        group: the torch.distributed process group whose ranks share the experts (None: one GPU).
        max_tokens: most tokens one forward may take on this rank.
        capacity_factor: 0 = dropless; > 0 caps rows per (source rank, expert), drops counted.
        shared_ffn: width of the shared expert, a dense FFN (same activation) that every token
            runs, its output added to y with weight 1 (DeepSeek, Qwen2-MoE): 0 = none, else a
            multiple of ffn, at most 8 ffn. Its parameters are the same on every rank.
        bias, renormalize: experts with biases; top-k gate weights rescaled to sum to 1 (the
            gate's own routing only: a routing given to forward is used as it is).
        timeout: seconds every wait inside the kernel may take before it reports an error.
        device: where the parameters live (default: the current CUDA device).
    """

    def __init__(self, hidden: int, ffn: int, experts: int, topk: int, act: str = "gelu",
                 dtype: torch.dtype = torch.bfloat16, group=None, *, max_tokens: int = 8192,
                 capacity_factor: float = 0.0, bias: bool = True, renormalize: bool = True,
                 fp32_math: str = "tf32", timeout: float = 5.0, device=None, shared_ffn: int = 0):
        super().__init__()
        if act not in _ACTIVATIONS:
            raise _C.ConfigError(f"act = {act!r}: must be one of {', '.join(_ACTIVATIONS)}")
        fp8 = dtype == torch.float8_e4m3fn
        if dtype == torch.bfloat16:
            kernel_dtype = "bf16"
        elif dtype == torch.float32:
            if fp32_math not in ("tf32", "fp32"):
                raise _C.ConfigError(f"fp32_math = {fp32_math!r}: must be 'tf32' or 'fp32'")
            kernel_dtype = fp32_math
        elif fp8:
            kernel_dtype = "fp8"
        else:
            raise _C.ConfigError(f"dtype = {dtype}: must be torch.bfloat16, torch.float32 or "
                                 "torch.float8_e4m3fn")
        world, rank = _group_shape(group)
        cfg = _C.LayerConfig()
        cfg.max_tokens, cfg.hidden, cfg.ffn, cfg.experts, cfg.topk = (max_tokens, hidden, ffn,
                                                                       experts, topk)
        cfg.activation, cfg.dtype, cfg.weight_layout = act, kernel_dtype, "out-in"
        cfg.capacity_factor, cfg.bias, cfg.renormalize = capacity_factor, bias, renormalize
        cfg.shared_ffn = shared_ffn
        cfg.world_size, cfg.rank, cfg.timeout_seconds = world, rank, timeout
        cfg.validate()  # ConfigError (a ValueError) names the field and its limit
        self.config = cfg
        self.group = group
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device())
        # fp8: the expert matrices E4M3 (and their fp32 block scales), all else bf16.
        kw = dict(device=device, dtype=torch.bfloat16 if fp8 else dtype)
        wkw = dict(device=device, dtype=dtype)

        def matrix(*shape):
            return torch.nn.Parameter(torch.empty(*shape, **wkw), requires_grad=not fp8)

        def scales(*shape):  # [..., out / 128, in / 128] of a matrix [..., out, in]
            if not fp8:
                return None
            blocks = shape[:-2] + (shape[-2] // _BLOCK, shape[-1] // _BLOCK)
            return torch.nn.Parameter(torch.empty(*blocks, device=device, dtype=torch.float32),
                                      requires_grad=False)

        local, w1_rows = cfg.experts_per_rank(), cfg.w1_columns()
        self.gate = torch.nn.Parameter(torch.empty(experts, hidden, **kw))
        self.w1 = matrix(local, w1_rows, hidden)
        self.w2 = matrix(local, hidden, ffn)
        self.register_parameter("w1_scale", scales(local, w1_rows, hidden))
        self.register_parameter("w2_scale", scales(local, hidden, ffn))
        if bias:
            self.b1 = torch.nn.Parameter(torch.empty(local, w1_rows, **kw))
            self.b2 = torch.nn.Parameter(torch.empty(local, hidden, **kw))
        else:
            self.register_parameter("b1", None)
            self.register_parameter("b2", None)
        shared_w1_rows = cfg.shared_w1_columns()
        if shared_ffn > 0:
            self.shared_w1 = matrix(shared_w1_rows, hidden)
            self.shared_w2 = matrix(hidden, shared_ffn)
            self.register_parameter("shared_w1_scale", scales(shared_w1_rows, hidden))
            self.register_parameter("shared_w2_scale", scales(hidden, shared_ffn))
        else:
            for name in ("shared_w1", "shared_w2", "shared_w1_scale", "shared_w2_scale"):
                self.register_parameter(name, None)
        if shared_ffn > 0 and bias:
            self.shared_b1 = torch.nn.Parameter(torch.empty(shared_w1_rows, **kw))
            self.shared_b2 = torch.nn.Parameter(torch.empty(hidden, **kw))
        else:
            self.register_parameter("shared_b1", None)
            self.register_parameter("shared_b2", None)
        self._handle = None
        self._pointers = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """nn.Linear's default: uniform in +-1/sqrt(fan_in) for weights and biases (fp8: drawn in
        fp32, then quantized per 128 x 128 block into the matrix and its scales). With several
        ranks the gate and the shared expert (replicated) come from the group's rank 0
        (collective)."""
        hidden, ffn, shared_ffn = self.config.hidden, self.config.ffn, self.config.shared_ffn
        for name, fan_in in (("gate", hidden), ("w1", hidden), ("b1", hidden), ("w2", ffn),
                             ("b2", ffn), ("shared_w1", hidden), ("shared_b1", hidden),
                             ("shared_w2", shared_ffn), ("shared_b2", shared_ffn)):
            p = getattr(self, name)
            if p is None:
                continue
            bound = 1.0 / math.sqrt(fan_in)
            scale = getattr(self, name + "_scale", None)
            if scale is None:
                p.uniform_(-bound, bound)
            else:
                w = torch.empty(p.shape, device=p.device, dtype=torch.float32)
                q, s = _quantize_blocks(w.uniform_(-bound, bound))
                p.copy_(q)
                scale.copy_(s)
        if self.config.world_size > 1:
            for p in (self.gate,) + self._shared_parameters() + self._shared_scales():
                if p is not None:
                    dist.broadcast(p.data, src=dist.get_global_rank(self.group, 0),
                                   group=self.group)

    def _shared_parameters(self) -> tuple:
        """(shared_w1, shared_b1, shared_w2, shared_b2), None where the module has none."""
        return tuple(getattr(self, name) for name in _SHARED)

    def _scales(self) -> tuple:
        """fp8's (w1_scale, w2_scale, shared_w1_scale, shared_w2_scale), None where the module
        has none (every one for other dtypes)."""
        return tuple(getattr(self, name) for name in _SCALES)

    def _shared_scales(self) -> tuple:
        return self._scales()[2:]

    @torch.no_grad()
    def load_hf_experts(self, state_dict, prefix: str = "") -> None:
        """Copies a Hugging Face MoE block's weights (DeepSeek-V2/V3, Qwen2/3-MoE, Mixtral) from
        `state_dict` into this module, for this rank's experts only. The keys under `prefix` (e.g.
        "model.layers.3.mlp."; Mixtral's "model.layers.3.block_sparse_moe."):
            gate.weight                                     -> gate
            experts.{e}.gate_proj.weight (Mixtral: w1)      -> w1[e, :ffn]    (SwiGLU's gate half)
            experts.{e}.up_proj.weight   (Mixtral: w3)      -> w1[e, ffn:]    (its up half)
            experts.{e}.down_proj.weight (Mixtral: w2)      -> w2[e]
            shared_experts.* (DeepSeek) or shared_expert.* (Qwen2-MoE), the same three names,
                                                            -> shared_w1, shared_w2
        with `.weight_scale_inv` beside each E4M3 weight in FP8 checkpoints. An FP8 checkpoint
        loads into an fp8 module as it is, and into a bf16 or fp32 one dequantized (e4m3 *
        weight_scale_inv); a bf16 checkpoint into an fp8 module is quantized per 128 x 128 block
        (docs/fp8.md's rule). The module must be built with act="swiglu", bias=False (these
        experts have no biases) and the checkpoint's widths; a missing key or a tensor of another
        shape raises ValueError naming the key. Routers other than a softmax over gate.weight
        (DeepSeek-V3's sigmoid with e_score_correction_bias and group-limited top-k) are not this
        module's gate: compute their routing and pass it to forward (topk_ids, topk_weights). A
        Qwen2-MoE shared_expert_gate (a sigmoid on the shared expert's output) is refused."""
        cfg = self.config
        if cfg.activation != "swiglu":
            raise _C.ConfigError(f"load_hf_experts: act = {cfg.activation!r}; these checkpoints'"
                                 " experts are SwiGLU (build the module with act='swiglu')")
        if cfg.bias:
            raise _C.ConfigError("load_hf_experts: bias = True; these checkpoints' experts have "
                                 "no biases (build the module with bias=False)")
        if prefix + "shared_expert_gate.weight" in state_dict:
            raise _C.ConfigError(f"{prefix}shared_expert_gate.weight: a gate on the shared "
                                 "expert's output is not supported (the shared expert is added "
                                 "with weight 1)")
        hidden, ffn = cfg.hidden, cfg.ffn

        def tensor(key, shape):
            t = state_dict.get(key)
            if t is None:
                raise _C.ConfigError(f"{key}: not in the state dict")
            if tuple(t.shape) != shape:
                raise _C.ConfigError(f"{key}: shape {tuple(t.shape)}, expected {shape} for "
                                     f"hidden = {hidden}, ffn = {ffn}")
            return t

        def matrix(key, rows, cols):
            """(weight, its block scales or None) of `key`; the scales only beside E4M3."""
            w = tensor(key + ".weight", (rows, cols))
            if w.dtype != torch.float8_e4m3fn:
                return w, None
            return w, tensor(key + ".weight_scale_inv", (rows // _BLOCK, cols // _BLOCK))

        def store(dst, dst_scale, parts):
            """dst (and dst_scale) <- the row-wise concatenation of `parts` [(w, scale)]."""
            if dst_scale is not None and all(sc is not None for _, sc in parts):
                dst.copy_(torch.cat([w.to(dst.device) for w, _ in parts]))
                dst_scale.copy_(torch.cat([sc.to(dst_scale.device) for _, sc in parts]))
                return
            values = torch.cat([w.to(dst.device, torch.float32) if sc is None else
                                w.to(dst.device, torch.float32) *
                                sc.to(dst.device, torch.float32)
                                .repeat_interleave(_BLOCK, 0).repeat_interleave(_BLOCK, 1)
                                for w, sc in parts])
            if dst_scale is None:
                dst.copy_(values)
            else:
                q, sc = _quantize_blocks(values)
                dst.copy_(q)
                dst_scale.copy_(sc)

        def find(base):
            """The (gate, up, down) keys of the FFN at `base`, in either naming; None if absent."""
            for gate, up, down in (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2")):
                if base + gate + ".weight" in state_dict:
                    return base + gate, base + up, base + down
            return None

        def names(base):
            found = find(base)
            if found is None:
                raise _C.ConfigError(f"{base}gate_proj.weight: not in the state dict (nor "
                                     f"Mixtral's {base}w1.weight)")
            return found

        self.gate.copy_(tensor(prefix + "gate.weight", (cfg.experts, hidden)))
        local = cfg.experts_per_rank()
        for i in range(local):
            gate, up, down = names(f"{prefix}experts.{cfg.rank * local + i}.")
            store(self.w1[i], None if self.w1_scale is None else self.w1_scale[i],
                  [matrix(gate, ffn, hidden), matrix(up, ffn, hidden)])
            store(self.w2[i], None if self.w2_scale is None else self.w2_scale[i],
                  [matrix(down, hidden, ffn)])
        if cfg.shared_ffn > 0:
            sf = cfg.shared_ffn
            base = next((prefix + b for b in ("shared_experts.", "shared_expert.")
                         if find(prefix + b) is not None), None)
            if base is None:
                raise _C.ConfigError(f"{prefix}shared_experts.gate_proj.weight: not in the state "
                                     f"dict (nor {prefix}shared_expert.gate_proj.weight), and "
                                     f"shared_ffn = {sf}")
            gate, up, down = names(base)
            store(self.shared_w1, self.shared_w1_scale,
                  [matrix(gate, sf, hidden), matrix(up, sf, hidden)])
            store(self.shared_w2, self.shared_w2_scale, [matrix(down, hidden, sf)])

    def extra_repr(self) -> str:
        return self.config.describe()

    @torch.compiler.disable
    def _layer_handle(self) -> int:
        """The C++ layer over the current parameter memory, (re)built when that memory moved."""
        pointers = tuple(0 if p is None else p.data_ptr()
                         for p in (self.gate, self.w1, self.b1, self.w2, self.b2)
                         + self._shared_parameters() + self._scales())
        if self._handle is None or pointers != self._pointers:
            if torch.cuda.is_current_stream_capturing():
                raise RuntimeError("monomoe.MoE: the layer is built (allocated) at the first "
                                   "forward and again when the parameters move to new memory, "
                                   "which CUDA-graph capture forbids: run one forward before "
                                   "capturing")
            if self._handle is not None:
                _layers.pop(self._handle, None)
            device = self.gate.device.index
            layer = _C.Layer(self.config, _communicator(self.group, device), *pointers)
            self._handle = next(_handles)
            _layers[self._handle] = layer
            self._pointers = pointers
            weakref.finalize(self, _layers.pop, self._handle, None)
        return self._handle

    def forward(self, x: torch.Tensor, topk_ids: Optional[torch.Tensor] = None,
                topk_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """y[t] = sum over the top-k experts e of t of w[t, e] * FFN_e(x[t]), plus the shared
        expert's FFN(x[t]) when the module has one; x: [tokens, hidden] on this module's GPU,
        contiguous, in the module's dtype.

        With topk_ids and topk_weights (both or neither: [tokens, topk], contiguous, on x's GPU;
        ids torch.int32 or torch.int64, distinct within a token, in [0, experts); weights
        torch.float32) the layer skips its gate and uses that routing as it is: the weights are
        not renormalized, capacity_factor drops as for the gate's routing, and an id out of range
        or repeated within a token skips that choice and raises monomoe.KernelError at the next
        synchronizing call (MoE.synchronize). int64 ids are converted to int32 on the GPU (values
        beyond int32 are clamped first, so they still fail as out of range). With several ranks
        each passes its own tokens' routing."""
        self._check_input(x, topk_ids, topk_weights)
        if topk_ids is not None and topk_ids.dtype == torch.int64:
            topk_ids = topk_ids.clamp(-2**31, 2**31 - 1).to(torch.int32)
        return moe_forward(x, self.gate, self.w1, self.b1, self.w2, self.b2, self._layer_handle(),
                           topk_ids, topk_weights, *self._shared_parameters(), *self._scales())

    @torch.compiler.disable
    def synchronize(self) -> None:
        """Waits for this module's last forward; raises monomoe.KernelError if its kernel reported
        an error (a peer that did not answer within the timeout, a topk_ids value it skipped)."""
        if self._handle is not None:
            _layers[self._handle].synchronize()

    def _check_input(self, x, topk_ids=None, topk_weights=None) -> None:
        cfg = self.config
        if not isinstance(x, torch.Tensor):
            raise _C.ConfigError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != cfg.hidden:
            raise _C.ConfigError(f"x: shape {tuple(x.shape)} must be [tokens, {cfg.hidden}]")
        if x.dtype != self.gate.dtype:
            raise _C.ConfigError(f"x: dtype {x.dtype} must be the module's {self.gate.dtype}")
        if not x.is_contiguous():
            raise _C.ConfigError("x: must be contiguous (call .contiguous())")
        if x.shape[0] > cfg.max_tokens:
            raise _C.ConfigError(f"x: {x.shape[0]} tokens, more than max_tokens = {cfg.max_tokens}")
        routing = ()
        if topk_ids is not None or topk_weights is not None:
            routing = (("topk_ids", topk_ids), ("topk_weights", topk_weights))
            self._check_routing(x, topk_ids, topk_weights)
        # Devices last: everything above can be checked (and tested) on any device.
        for name, t in (("x", x),) + routing:
            if t.device.type != "cuda":
                raise _C.ConfigError(f"{name}: on {t.device}, must be a CUDA tensor")
            if t.device != self.gate.device:
                raise _C.ConfigError(f"{name}: on {t.device}, must be on the module's "
                                     f"{self.gate.device}")

    def _check_routing(self, x, topk_ids, topk_weights) -> None:
        k = self.config.topk
        if topk_ids is None:
            raise _C.ConfigError("topk_ids: missing; topk_weights was given (pass both or neither)")
        if topk_weights is None:
            raise _C.ConfigError("topk_weights: missing; topk_ids was given (pass both or neither)")
        for name, t, dtypes in (("topk_ids", topk_ids, (torch.int32, torch.int64)),
                                ("topk_weights", topk_weights, (torch.float32,))):
            if not isinstance(t, torch.Tensor):
                raise _C.ConfigError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
            if t.dtype not in dtypes:
                raise _C.ConfigError(f"{name}: dtype {t.dtype} must be "
                                     + " or ".join(str(d) for d in dtypes))
            if t.dim() != 2 or t.shape[0] != x.shape[0] or t.shape[1] != k:
                raise _C.ConfigError(f"{name}: shape {tuple(t.shape)} must be [tokens, topk] = "
                                     f"[{x.shape[0]}, {k}]")
            if not t.is_contiguous():
                raise _C.ConfigError(f"{name}: must be contiguous (call .contiguous())")
