# monomoe._C without a GPU: configuration checks that name the field and its limit.
import pytest

import monomoe
from monomoe import _C


def config(**fields):
    c = _C.LayerConfig()
    c.max_tokens, c.hidden, c.ffn, c.experts, c.topk = 512, 256, 256, 8, 2
    for k, v in fields.items():
        setattr(c, k, v)
    return c


def test_version_and_nccl():
    assert monomoe.__version__.count(".") == 2
    compiled, loaded = _C.nccl_versions()
    assert compiled >= 22800 and loaded >= 22800


def test_valid_config_describes_itself():
    c = config(activation="swiglu", dtype="tf32", weight_layout="out-in")
    c.validate()
    d = c.describe()
    for part in ("hidden=256", "act=swiglu", "dtype=tf32", "weights=out-in"):
        assert part in d, d
    assert c.w1_columns() == 512
    assert c.experts_per_rank() == 8
    assert c.shared_ffn == 0 and "shared_ffn" not in d
    c.shared_ffn = 512
    c.validate()
    assert c.shared_w1_columns() == 1024
    assert "shared_ffn=512" in c.describe()


@pytest.mark.parametrize("field,value,message", [
    ("topk", 9, "topk"),
    ("hidden", 200, "hidden"),
    ("experts", 7, "experts"),  # not divisible by world_size 2
    ("capacity_factor", -1.0, "capacity_factor"),
    ("shared_ffn", 384, "shared_ffn"),  # not a multiple of ffn 256
    ("shared_ffn", 9 * 256, "shared_ffn"),  # more than 8 slices
])
def test_invalid_fields_are_named(field, value, message):
    c = config(world_size=2)
    setattr(c, field, value)
    with pytest.raises(ValueError, match=message):
        c.validate()


@pytest.mark.parametrize("field,value", [("activation", "tanh"), ("dtype", "fp16"),
                                         ("weight_layout", "nk")])
def test_unknown_names_are_refused(field, value):
    c = _C.LayerConfig()
    with pytest.raises(monomoe.ConfigError, match=field):
        setattr(c, field, value)


def test_error_kinds():
    assert issubclass(monomoe.ConfigError, ValueError)
    assert issubclass(monomoe.CudaError, RuntimeError)
    assert issubclass(monomoe.KernelError, RuntimeError)


def test_bad_unique_id_is_refused():
    with pytest.raises(ValueError, match="128 bytes"):
        _C.Communicator(b"short", 0, 1, 0)


def test_capacity_rule():
    # max(1, ceil(capacity_factor * tokens * topk / experts)), at most tokens; tokens when dropless.
    c = config()
    assert c.capacity(300) == 300
    c.capacity_factor = 0.5
    assert c.capacity(300) == 38  # ceil(0.5 * 300 * 2 / 8) = ceil(37.5)
    assert c.capacity(1) == 1
    c.capacity_factor = 100.0
    assert c.capacity(10) == 10
