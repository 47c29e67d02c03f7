# monomoe.MoE without a GPU: parameters in nn.Linear layout on the meta device, state_dict, and
# the argument checks of forward() (each error names the argument), a given routing's included.
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
import monomoe  # noqa: E402


def meta_moe(**kw):
    args = dict(hidden=256, ffn=384, experts=8, topk=2, act="swiglu", device="meta")
    args.update(kw)
    return monomoe.MoE(**args)


def test_parameters_in_linear_layout():
    m = meta_moe()
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {"gate": (8, 256), "w1": (8, 768, 256), "b1": (8, 768),
                      "w2": (8, 256, 384), "b2": (8, 256)}
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    assert "act=swiglu" in repr(m) and "weights=out-in" in repr(m)


def test_shared_expert_parameters():
    m = meta_moe(shared_ffn=768)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items() if k.startswith("shared_")}
    # SwiGLU: gate and up halves of 768 rows each; [out, in] like the experts.
    assert shapes == {"shared_w1": (1536, 256), "shared_b1": (1536,), "shared_w2": (256, 768),
                      "shared_b2": (256,)}
    assert "shared_ffn=768" in repr(m)
    no_bias = meta_moe(shared_ffn=384, act="gelu", bias=False)
    assert {k for k in no_bias.state_dict() if k.startswith("shared_")} == {"shared_w1",
                                                                           "shared_w2"}
    assert tuple(no_bias.shared_w1.shape) == (384, 256)
    assert not any(k.startswith("shared_") for k in meta_moe().state_dict())


def test_no_bias_and_fp32():
    m = meta_moe(bias=False, dtype=torch.float32, fp32_math="fp32", act="gelu")
    assert set(m.state_dict()) == {"gate", "w1", "w2"}
    assert "dtype=fp32" in repr(m)


def test_state_dict_round_trip():
    a = meta_moe(device="cpu")
    b = meta_moe(device="cpu")
    b.load_state_dict(a.state_dict())
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


@pytest.mark.parametrize("kw,message", [
    (dict(topk=9), "topk"),
    (dict(hidden=200), "hidden"),
    (dict(act="tanh"), "act"),
    (dict(dtype=torch.float16), "dtype"),
    (dict(dtype=torch.float32, fp32_math="fp64"), "fp32_math"),
    (dict(shared_ffn=500), "shared_ffn"),
    (dict(dtype=torch.float8_e4m3fn, hidden=192), "hidden"),  # fp8: multiples of 128
    (dict(dtype=torch.float8_e4m3fn, ffn=320), "ffn"),
])
def test_invalid_configs_name_the_field(kw, message):
    with pytest.raises(ValueError, match=message):
        meta_moe(**kw)


def test_forward_argument_checks():
    m = meta_moe(device="cpu", max_tokens=64)
    x = torch.zeros(4, 256, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="x: on cpu, must be a CUDA tensor"):
        m(x)
    with pytest.raises(ValueError, match=r"x: shape \(4, 128\)"):
        m(torch.zeros(4, 128, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="x: dtype"):
        m(torch.zeros(4, 256, dtype=torch.float32))
    with pytest.raises(ValueError, match="x: expected a torch.Tensor"):
        m([0.0] * 256)


def test_given_routing_argument_checks():
    # Everything but the device is checked first, so these run on the CPU: each names the argument.
    m = meta_moe(device="cpu", max_tokens=64)
    x = torch.zeros(4, 256, dtype=torch.bfloat16)
    ids = torch.zeros(4, 2, dtype=torch.int32)
    w = torch.ones(4, 2, dtype=torch.float32)
    cases = [
        (dict(topk_ids=ids), "topk_weights: missing"),
        (dict(topk_weights=w), "topk_ids: missing"),
        (dict(topk_ids=[[0, 1]] * 4, topk_weights=w), "topk_ids: expected a torch.Tensor"),
        (dict(topk_ids=ids.float(), topk_weights=w), "topk_ids: dtype torch.float32"),
        (dict(topk_ids=ids.to(torch.int16), topk_weights=w), "topk_ids: dtype torch.int16"),
        (dict(topk_ids=ids, topk_weights=w.to(torch.bfloat16)), "topk_weights: dtype"),
        (dict(topk_ids=ids, topk_weights=w.double()), "topk_weights: dtype torch.float64"),
        (dict(topk_ids=ids[:3], topk_weights=w), r"topk_ids: shape \(3, 2\) must be "
                                                 r"\[tokens, topk\] = \[4, 2\]"),
        (dict(topk_ids=ids, topk_weights=w[:, :1]), r"topk_weights: shape \(4, 1\)"),
        (dict(topk_ids=ids.flatten(), topk_weights=w), r"topk_ids: shape \(8,\)"),
        (dict(topk_ids=torch.zeros(2, 4, dtype=torch.int32).t(), topk_weights=w),
         "topk_ids: must be contiguous"),
        (dict(topk_ids=ids, topk_weights=torch.ones(2, 4).t()), "topk_weights: must be contiguous"),
        # Well-formed: the device check comes last and names x first.
        (dict(topk_ids=ids, topk_weights=w), "x: on cpu, must be a CUDA tensor"),
        (dict(topk_ids=ids.long(), topk_weights=w), "x: on cpu, must be a CUDA tensor"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message):
            m(x, **kw)


def test_op_is_registered():
    assert hasattr(torch.ops.monomoe, "moe_forward")
    # The given routing is part of the op's signature, so that torch.compile and graph capture see
    # the tensors it reads.
    schema = str(torch.ops.monomoe.moe_forward.default._schema)
    assert "Tensor? topk_ids=None" in schema and "Tensor? topk_weights=None" in schema, schema
    # So are the shared expert's weights.
    for name in ("shared_w1", "shared_b1", "shared_w2", "shared_b2"):
        assert f"Tensor? {name}=None" in schema, schema


def test_fake_implementation_takes_a_given_routing():
    # What torch.compile traces with: the op's fake implementation, with and without a routing.
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.empty(4, 256, dtype=torch.bfloat16)
        gate = torch.empty(8, 256, dtype=torch.bfloat16)
        ids = torch.empty(4, 2, dtype=torch.int32)
        w = torch.empty(4, 2)
        op = torch.ops.monomoe.moe_forward
        for y in (op(x, gate, gate, None, gate, None, 1, ids, w),
                  op(x, gate, gate, None, gate, None, 1),
                  op(x, gate, gate, None, gate, None, 1, None, None, gate, None, gate, None)):
            assert y.shape == x.shape and y.dtype == x.dtype


def test_fp8_parameters():
    # E4M3 expert matrices with fp32 scales per 128 x 128 block; the gate and biases bf16.
    m = meta_moe(dtype=torch.float8_e4m3fn, shared_ffn=768)
    f8, bf, f32 = torch.float8_e4m3fn, torch.bfloat16, torch.float32
    got = {k: (tuple(v.shape), v.dtype) for k, v in m.state_dict().items()}
    assert got == {"gate": ((8, 256), bf), "w1": ((8, 768, 256), f8), "w1_scale": ((8, 6, 2), f32),
                   "b1": ((8, 768), bf), "w2": ((8, 256, 384), f8), "w2_scale": ((8, 2, 3), f32),
                   "b2": ((8, 256), bf), "shared_w1": ((1536, 256), f8),
                   "shared_w1_scale": ((12, 2), f32), "shared_b1": ((1536,), bf),
                   "shared_w2": ((256, 768), f8), "shared_w2_scale": ((2, 6), f32),
                   "shared_b2": ((256,), bf)}
    # No backward pass: the E4M3 matrices and their scales are not trainable.
    assert {n for n, p in m.named_parameters() if not p.requires_grad} == {
        "w1", "w2", "w1_scale", "w2_scale", "shared_w1", "shared_w2", "shared_w1_scale",
        "shared_w2_scale"}
    assert "dtype=fp8" in repr(m)
    assert not any(k.endswith("_scale") for k in meta_moe().state_dict())


def test_fp8_initial_weights_are_quantized_per_block():
    import math
    m = meta_moe(dtype=torch.float8_e4m3fn, device="cpu", act="gelu")
    for w, s, fan_in in ((m.w1, m.w1_scale, 256), (m.w2, m.w2_scale, 384)):
        e, rows, cols = w.shape
        q = w.float().reshape(e, rows // 128, 128, cols // 128, 128)
        # Every block reaches +-448 (scale = its amax / 448) ...
        assert torch.equal(q.abs().amax(dim=(2, 4)), torch.full_like(s, 448.0))
        # ... of values drawn within nn.Linear's bound.
        bound = 1.0 / math.sqrt(fan_in)
        assert (s > 0).all() and (s * 448 <= bound * (1 + 1e-6)).all()


def test_fp8_quantization_rule():
    from monomoe.module import _quantize_blocks
    w = torch.zeros(256, 128)
    w[128:] = torch.linspace(-3.0, 2.5, 128 * 128).reshape(128, 128)
    q, s = _quantize_blocks(w)
    assert q.dtype == torch.float8_e4m3fn and tuple(s.shape) == (2, 1)
    assert s[0, 0].item() == 1.0 and (q[:128].float() == 0).all()  # a block of zeros
    assert s[1, 0].item() == torch.tensor(3.0 / 448.0).item()      # amax / 448, in fp32
    assert q[128:].float().min().item() == -448.0
    # Round to nearest E4M3 (3 mantissa bits; subnormals below 2^-6 step by 2^-9).
    err = (q[128:].float() * s[1, 0] - w[128:]).abs()
    assert (err <= w[128:].abs() * 2.0**-4 + 2.0**-10 * s[1, 0]).all()


def test_fp8_state_dict_round_trip():
    a = meta_moe(dtype=torch.float8_e4m3fn, device="cpu")
    b = meta_moe(dtype=torch.float8_e4m3fn, device="cpu")
    b.load_state_dict(a.state_dict())
    for k, v in a.state_dict().items():
        u = b.state_dict()[k]
        if v.dtype == torch.float8_e4m3fn:  # compared as bytes
            v, u = v.view(torch.uint8), u.view(torch.uint8)
        assert torch.equal(v, u), k


def hf_state_dict(experts, hidden, ffn, shared=0, fp8=False, mixtral=False, prefix="mlp."):
    """A Hugging Face MoE block's tensors (DeepSeek/Qwen names, or Mixtral's w1/w3/w2), random;
    fp8: E4M3 weights with weight_scale_inv per 128 x 128 block."""
    from monomoe.module import _quantize_blocks
    g = torch.Generator().manual_seed(5)
    sd = {prefix + "gate.weight": torch.randn(experts, hidden, generator=g).bfloat16()}
    names = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")

    def add(base, width):
        for name, shape in zip(names, ((width, hidden), (width, hidden), (hidden, width))):
            w = torch.randn(*shape, generator=g) * 0.05
            if fp8:
                q, s = _quantize_blocks(w)
                sd[f"{base}{name}.weight"], sd[f"{base}{name}.weight_scale_inv"] = q, s
            else:
                sd[f"{base}{name}.weight"] = w.bfloat16()
    for e in range(experts):
        add(f"{prefix}experts.{e}.", ffn)
    if shared:
        add(prefix + "shared_experts.", shared)
    return sd


def dequantized(sd, key):
    w = sd[key + ".weight"]
    s = sd.get(key + ".weight_scale_inv")
    if s is None:
        return w.float()
    return w.float() * s.repeat_interleave(128, 0).repeat_interleave(128, 1)


@pytest.mark.parametrize("mixtral", [False, True])
def test_load_hf_experts_bf16(mixtral):
    sd = hf_state_dict(8, 256, 384, shared=768, mixtral=mixtral)
    m = meta_moe(device="cpu", bias=False, shared_ffn=768)
    m.load_hf_experts(sd, prefix="mlp.")
    g, u, d = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")
    assert torch.equal(m.gate, sd["mlp.gate.weight"])
    for e in range(8):
        assert torch.equal(m.w1[e, :384], sd[f"mlp.experts.{e}.{g}.weight"])
        assert torch.equal(m.w1[e, 384:], sd[f"mlp.experts.{e}.{u}.weight"])
        assert torch.equal(m.w2[e], sd[f"mlp.experts.{e}.{d}.weight"])
    assert torch.equal(m.shared_w1[:768], sd[f"mlp.shared_experts.{g}.weight"])
    assert torch.equal(m.shared_w2, sd[f"mlp.shared_experts.{d}.weight"])


def test_load_hf_experts_fp8_as_it_is_and_dequantized():
    sd = hf_state_dict(8, 256, 384, shared=384, fp8=True)
    m = meta_moe(device="cpu", bias=False, shared_ffn=384, dtype=torch.float8_e4m3fn)
    m.load_hf_experts(sd, prefix="mlp.")
    as_bytes = lambda t: t.view(torch.uint8)  # noqa: E731
    for e in (0, 7):
        key = f"mlp.experts.{e}."
        assert torch.equal(as_bytes(m.w1[e, 384:]), as_bytes(sd[key + "up_proj.weight"]))
        assert torch.equal(m.w1_scale[e, :3], sd[key + "gate_proj.weight_scale_inv"])
        assert torch.equal(m.w1_scale[e, 3:], sd[key + "up_proj.weight_scale_inv"])
        assert torch.equal(m.w2_scale[e], sd[key + "down_proj.weight_scale_inv"])
    assert torch.equal(m.shared_w2_scale, sd["mlp.shared_experts.down_proj.weight_scale_inv"])
    # The same FP8 checkpoint into a bf16 module: e4m3 * weight_scale_inv, rounded to bf16.
    b = meta_moe(device="cpu", bias=False, shared_ffn=384)
    b.load_hf_experts(sd, prefix="mlp.")
    assert torch.equal(b.w2[3], dequantized(sd, "mlp.experts.3.down_proj").bfloat16())
    assert torch.equal(b.shared_w1[384:], dequantized(sd, "mlp.shared_experts.up_proj").bfloat16())


def test_load_hf_experts_bf16_into_fp8_quantizes():
    sd = hf_state_dict(8, 256, 384)
    m = meta_moe(device="cpu", bias=False, dtype=torch.float8_e4m3fn)
    m.load_hf_experts(sd, prefix="mlp.")
    w = m.w1[2].float() * m.w1_scale[2].repeat_interleave(128, 0).repeat_interleave(128, 1)
    ref = torch.cat([sd["mlp.experts.2.gate_proj.weight"], sd["mlp.experts.2.up_proj.weight"]])
    # E4M3: 3 mantissa bits, half an ulp 2^-4 relative; subnormals step by 2^-9 of the scale.
    tol = ref.float().abs() * 2.0**-4 + m.w1_scale[2].repeat_interleave(128, 0) \
        .repeat_interleave(128, 1) * 2.0**-10
    assert ((w - ref.float()).abs() <= tol).all()


@pytest.mark.parametrize("change,message", [
    (lambda sd: sd.pop("mlp.experts.5.down_proj.weight"), "mlp.experts.5.down_proj.weight"),
    (lambda sd: sd.update({"mlp.gate.weight": torch.zeros(8, 128)}), "mlp.gate.weight: shape"),
    (lambda sd: sd.update({"mlp.shared_expert_gate.weight": torch.zeros(1, 256)}),
     "shared_expert_gate"),
])
def test_load_hf_experts_names_the_key(change, message):
    sd = hf_state_dict(8, 256, 384)
    change(sd)
    m = meta_moe(device="cpu", bias=False)
    with pytest.raises(ValueError, match=message):
        m.load_hf_experts(sd, prefix="mlp.")


def test_load_hf_experts_refuses_other_modules():
    sd = hf_state_dict(8, 256, 384)
    with pytest.raises(ValueError, match="bias"):
        meta_moe(device="cpu").load_hf_experts(sd, prefix="mlp.")
    with pytest.raises(ValueError, match="act"):
        meta_moe(device="cpu", bias=False, act="gelu").load_hf_experts(sd, prefix="mlp.")
    with pytest.raises(ValueError, match="shared_experts"):
        meta_moe(device="cpu", bias=False, shared_ffn=384).load_hf_experts(sd, prefix="mlp.")
