# monomoe.MoE without a GPU: parameters in nn.Linear layout on the meta device, state_dict, and
# the argument checks of forward() (each error names the argument).
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
    with pytest.raises(NotImplementedError, match="topk_ids"):
        m(x, topk_ids=torch.zeros(4, 2, dtype=torch.int64))


def test_op_is_registered():
    assert hasattr(torch.ops.monomoe, "moe_forward")
