"""Named initialisers: parsing, pure checks, descriptions and seeded values."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from ckptsurgeon.errors import MappingError, ShapeError
from ckptsurgeon.init import INITIALIZERS, check_init, describe_init, initialize, parse_init


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry_names():
    assert list(INITIALIZERS) == ["zeros", "ones", "constant", "normal", "kaiming", "xavier", "dirac"]


@pytest.mark.parametrize("text, expected", [
    ("normal:0.01", ("normal", 0.01)),
    ("normal", ("normal", None)),
    ("constant:0.5", ("constant", 0.5)),
    ("constant:-2", ("constant", -2.0)),
    (" zeros ", ("zeros", None)),
])
def test_parse_init(text, expected):
    assert parse_init(text) == expected


@pytest.mark.parametrize("text, match", [
    ("uniform", r"unknown initializer 'uniform'.*known: zeros, ones, constant, normal, kaiming, xavier, dirac"),
    ("normal:abc", r"'normal:abc' needs a std >= 0 after ':', got 'abc'"),
    ("normal:-1", r"needs a std >= 0"),
    ("constant:nan", r"needs a finite number"),
    ("constant", r"'constant' needs a value, e.g. constant:0.5"),
    ("zeros:1", r"'zeros' takes no value"),
])
def test_parse_init_errors(text, match):
    with pytest.raises(MappingError, match=match):
        parse_init(text)


@pytest.mark.parametrize("text, expected", [
    ("normal", "normal(std=0.02)"),
    ("normal:0.01", "normal(std=0.01)"),
    ("constant:0.5", "constant(0.5)"),
    ("zeros", "zeros"),
    ("ones", "ones"),
    ("kaiming", "kaiming_normal(fan_out, relu)"),
    ("xavier", "xavier_uniform"),
    ("dirac", "dirac(identity)"),
])
def test_describe_init(text, expected):
    assert describe_init(text) == expected


def test_check_init_reasons():
    assert check_init("kaiming", (64,)) == "kaiming needs at least 2 dims (fan in and fan out), got (64,)"
    assert "xavier needs at least 2 dims" in check_init("xavier", (10,))
    assert check_init("kaiming", (64, 3, 3, 3)) is None
    assert check_init("xavier", (10, 20)) is None
    assert "dirac needs a square matrix" in check_init("dirac", (3, 4))
    assert "dirac needs" in check_init("dirac", (4,))
    assert check_init("dirac", (4, 4)) is None and check_init("dirac", (8, 4, 3, 3)) is None
    assert check_init("zeros", ()) is None
    assert check_init("normal", (3,), dtype="int64") == \
        "normal draws random values and needs a floating dtype, got int64"
    assert check_init("zeros", (3,), dtype="int64") is None


def test_module_imports_without_torch():
    code = ("import sys, ckptsurgeon.init as i; assert i.check_init('kaiming', (8,)) is not None; "
            "assert i.describe_init('normal') == 'normal(std=0.02)'; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("text", ["normal", "normal:0.1", "kaiming", "xavier"])
def test_seeded_initializers_reproducible_and_seed_dependent(text):
    like = torch.zeros(32, 16, 3, 3)
    first = initialize(text, like, gen(0))
    assert torch.equal(first, initialize(text, like, gen(0)))
    assert not torch.equal(first, initialize(text, like, gen(1)))
    assert torch.equal(like, torch.zeros_like(like))


def test_normal_statistics():
    values = initialize("normal:0.01", torch.empty(200, 200), gen(0))
    assert abs(values.mean().item()) < 1e-3
    assert values.std().item() == pytest.approx(0.01, rel=0.05)


def test_kaiming_uses_fan_out_relu():
    values = initialize("kaiming", torch.empty(256, 64, 3, 3), gen(0))
    assert values.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.05)


def test_xavier_bound():
    values = initialize("xavier", torch.empty(100, 300), gen(0))
    bound = (6 / 400) ** 0.5
    assert values.abs().max().item() <= bound
    assert values.abs().max().item() > 0.9 * bound


@pytest.mark.parametrize("text, fill", [("zeros", 0.0), ("ones", 1.0), ("constant:0.5", 0.5)])
def test_constant_fills(text, fill):
    values = initialize(text, torch.empty(3, 4, dtype=torch.float16))
    assert values.dtype == torch.float16
    assert torch.equal(values, torch.full((3, 4), fill, dtype=torch.float16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtype_kept_and_values_match_float32_draw(dtype):
    values = initialize("normal", torch.zeros(8, 8, dtype=dtype), gen(3))
    assert values.dtype == dtype
    assert torch.equal(values, initialize("normal", torch.zeros(8, 8), gen(3)).to(dtype))


def test_dirac_conv_is_identity():
    weight = initialize("dirac", torch.empty(4, 4, 3, 3))
    image = torch.randn(2, 4, 7, 7, generator=gen(0))
    torch.testing.assert_close(F.conv2d(image, weight, padding=1), image)


def test_dirac_matrix_is_eye():
    assert torch.equal(initialize("dirac", torch.empty(5, 5, dtype=torch.bfloat16)),
                       torch.eye(5, dtype=torch.bfloat16))


def test_zero_sized_tensor():
    values = initialize("kaiming", torch.empty(0, 3))
    assert values.shape == (0, 3)


def test_initialize_refuses_bias_for_kaiming():
    with pytest.raises(ShapeError, match=r"'kaiming' cannot fill a tensor of shape \(64,\): kaiming needs"):
        initialize("kaiming", torch.empty(64))


def test_initialize_returns_new_tensor():
    like = torch.ones(4, 4)
    values = initialize("zeros", like)
    assert values.data_ptr() != like.data_ptr()
    assert torch.equal(like, torch.ones(4, 4))
