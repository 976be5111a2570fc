"""Resize methods: values, dtypes, untouched inputs, shape checks and method parsing."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptsurgeon.errors import MappingError, ShapeError
from ckptsurgeon.resize import (
    RESIZE_METHODS,
    adapt_in_channels,
    can_resize,
    elements_from_source,
    infer_prefix_tokens,
    parse_method,
    resample_pos_embed,
    resize_kernel,
    resize_tensor,
    resize_yolo_head,
    slice_pad,
)


def seeded(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# --- registry and parsing -----------------------------------------------------------------------


def test_registry_names_and_summaries():
    assert list(RESIZE_METHODS) == ["slice_pad", "in_channels", "pos_embed", "yolo_head", "kernel"]
    for name, method in RESIZE_METHODS.items():
        assert method.name == name
        assert method.summary and "\n" not in method.summary


@pytest.mark.parametrize("text, expected", [
    ("slice_pad", ("slice_pad", None)),
    ("yolo_head:3", ("yolo_head", "3")),
    (" pos_embed : 1 ", ("pos_embed", "1")),
    ("pos_embed:0", ("pos_embed", "0")),
])
def test_parse_method(text, expected):
    assert parse_method(text) == expected


@pytest.mark.parametrize("text, match", [
    ("bilinear", r"unknown resize method 'bilinear'.*known: slice_pad, in_channels, pos_embed, yolo_head, kernel"),
    ("", r"unknown resize method ''"),
    ("slice_pad:2", r"'slice_pad' takes no argument"),
    ("yolo_head:three", r"'yolo_head' takes the number of anchors \(an integer >= 1\), got 'three'"),
    ("yolo_head:0", r"integer >= 1"),
    ("yolo_head:", r"got ''"),
    ("pos_embed:-1", r"integer >= 0"),
])
def test_parse_method_errors(text, match):
    with pytest.raises(MappingError, match=match):
        parse_method(text)


def test_module_imports_without_torch():
    code = ("import sys, ckptsurgeon.resize as r; "
            "assert r.can_resize('kernel', (8, 8, 3, 3), (8, 8, 5, 5)) is None; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- slice_pad ----------------------------------------------------------------------------------


def test_slice_pad_grows_rows_keeping_target_values():
    source, target = seeded(256, 64, seed=1), seeded(288, 64, seed=2)
    out = slice_pad(source, target)
    assert out.shape == (288, 64)
    assert torch.equal(out[:256], source)
    assert torch.equal(out[256:], target[256:])


def test_slice_pad_shrinks_rows():
    source, target = seeded(288, 64, seed=1), seeded(256, 64, seed=2)
    assert torch.equal(slice_pad(source, target), source[:256])


def test_slice_pad_mixed_dims():
    source, target = seeded(4, 6, seed=1), seeded(6, 3, seed=2)
    out = slice_pad(source, target)
    assert torch.equal(out[:4], source[:, :3])
    assert torch.equal(out[4:], target[4:])


def test_slice_pad_rank_mismatch():
    assert can_resize("slice_pad", (4, 6), (4,)) == "slice_pad needs the same number of dims, got 2 vs 1"
    with pytest.raises(ShapeError, match=r"'slice_pad' cannot map \(4, 6\) to \(4,\)"):
        slice_pad(torch.zeros(4, 6), torch.zeros(4))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 5), min_size=n, max_size=n),
    st.lists(st.integers(0, 5), min_size=n, max_size=n))))
def test_slice_pad_keeps_overlap_and_target_elsewhere(shapes):
    src_shape, dst_shape = shapes
    source = torch.arange(math.prod(src_shape), dtype=torch.float32).reshape(src_shape) + 1
    target = -torch.arange(math.prod(dst_shape), dtype=torch.float32).reshape(dst_shape) - 1
    before = source.clone(), target.clone()
    out = slice_pad(source, target)
    overlap = tuple(slice(0, min(a, b)) for a, b in zip(src_shape, dst_shape))
    assert out.shape == target.shape
    assert torch.equal(out[overlap], source[overlap])
    outside = torch.ones(dst_shape, dtype=torch.bool)
    outside[overlap] = False
    assert torch.equal(out[outside], target[outside])
    assert torch.equal(source, before[0]) and torch.equal(target, before[1])


# --- in_channels --------------------------------------------------------------------------------


def test_in_channels_to_one_is_sum():
    source = seeded(8, 3, 3, 3)
    out = adapt_in_channels(source, 1)
    assert out.shape == (8, 1, 3, 3)
    torch.testing.assert_close(out, source.sum(dim=1, keepdim=True))


def test_in_channels_repeat_and_scale_preserves_response():
    source = seeded(8, 3, 3, 3, seed=1)
    image = seeded(2, 3, 10, 10, seed=2)
    out = resize_tensor("in_channels", source, torch.zeros(8, 6, 3, 3))
    assert torch.equal(out[:, 3:], out[:, :3])
    torch.testing.assert_close(out[:, :3], source * 0.5)
    torch.testing.assert_close(F.conv2d(image.repeat(1, 2, 1, 1), out), F.conv2d(image, source), atol=1e-5, rtol=1e-5)


def test_in_channels_cyclic_partial_repeat():
    source = seeded(4, 3, 1, 1)
    out = adapt_in_channels(source, 4)
    torch.testing.assert_close(out, torch.cat([source, source[:, :1]], dim=1) * 0.75)


def test_in_channels_check_reasons():
    assert can_resize("in_channels", (64, 3, 3, 3), (32, 4, 3, 3)) == \
        "in_channels needs equal out channels, got 64 vs 32"
    assert can_resize("in_channels", (64, 3, 3, 3), (64, 4, 5, 5)) == \
        "in_channels needs equal kernel sizes, got (3, 3) vs (5, 5)"
    assert can_resize("in_channels", (64, 3, 7, 7), (64, 4, 7, 7)) is None


# --- pos_embed ----------------------------------------------------------------------------------


def test_pos_embed_same_size_is_identity_and_keeps_class_token():
    source = seeded(1, 197, 32)
    out = resize_tensor("pos_embed", source, torch.zeros(1, 197, 32))
    assert torch.equal(out[:, :1], source[:, :1])
    torch.testing.assert_close(out, source, atol=1e-6, rtol=0)


def test_pos_embed_upsample_shape_and_prefix():
    source = seeded(1, 2 + 49, 16)
    out = resample_pos_embed(source, 2 + 196, num_prefix_tokens=2)
    assert out.shape == (1, 198, 16)
    assert torch.equal(out[:, :2], source[:, :2])


def test_pos_embed_constant_grid_stays_constant():
    # A constant grid is a fixed point of bicubic resampling, which checks the grid layout survives.
    source = torch.cat([seeded(1, 16), torch.full((196, 16), 0.25)])
    out = resize_tensor("pos_embed", source, torch.zeros(50, 16))
    assert out.shape == (50, 16)
    assert torch.equal(out[0], source[0])
    torch.testing.assert_close(out[1:], torch.full((49, 16), 0.25))


def test_pos_embed_linear_ramp_upsampled_follows_ramp():
    rows = torch.arange(7, dtype=torch.float32).repeat_interleave(7)
    source = rows.reshape(1, 49, 1)
    out = resample_pos_embed(source, 196, num_prefix_tokens=0).reshape(14, 14)
    assert torch.all(out[1:, :] >= out[:-1, :] - 1e-5)
    torch.testing.assert_close(out[:, 0], out[:, 13])


def test_infer_prefix_tokens():
    assert infer_prefix_tokens(197, 50) == 1
    assert infer_prefix_tokens(196, 576) == 0
    assert infer_prefix_tokens(201, 581) == 5
    assert infer_prefix_tokens(300, 301) is None


def test_pos_embed_check_reasons():
    assert "equal embedding dims, got 768 vs 384" in can_resize("pos_embed", (1, 197, 768), (1, 50, 384))
    assert "no prefix count 0..16" in can_resize("pos_embed", (1, 300, 8), (1, 301, 8))
    assert "not both square grids" in can_resize("pos_embed:2", (1, 197, 8), (1, 50, 8))
    assert can_resize("pos_embed:1", (197, 8), (50, 8)) is None


# --- yolo_head ----------------------------------------------------------------------------------


def yolo_rows(anchors: int, classes: int, *rest: int, seed: int) -> torch.Tensor:
    return seeded(anchors * (5 + classes), *rest, seed=seed)


@pytest.mark.parametrize("old, new", [(80, 20), (20, 80)])
def test_yolo_head_weight_keeps_box_and_shared_classes(old, new):
    source = yolo_rows(3, old, 64, 1, 1, seed=1)
    target = yolo_rows(3, new, 64, 1, 1, seed=2)
    out = resize_tensor("yolo_head:3", source, target)
    assert out.shape == target.shape
    shared = min(old, new)
    for a in range(3):
        src, dst = a * (5 + old), a * (5 + new)
        assert torch.equal(out[dst:dst + 5], source[src:src + 5])
        assert torch.equal(out[dst + 5:dst + 5 + shared], source[src + 5:src + 5 + shared])
        assert torch.equal(out[dst + 5 + shared:dst + 5 + new], target[dst + 5 + shared:dst + 5 + new])


def test_yolo_head_bias_with_default_anchors():
    source, target = yolo_rows(3, 80, seed=1), yolo_rows(3, 1, seed=2)
    out = resize_tensor("yolo_head", source, target)
    assert torch.equal(out.reshape(3, 6), source.reshape(3, 85)[:, :6])


def test_yolo_head_other_anchor_count():
    source, target = yolo_rows(4, 2, 8, 1, 1, seed=1), yolo_rows(4, 3, 8, 1, 1, seed=2)
    out = resize_yolo_head(source, target, num_anchors=4)
    assert torch.equal(out.reshape(4, 8, 8)[:, :7], source.reshape(4, 7, 8))
    assert torch.equal(out.reshape(4, 8, 8)[:, 7], target.reshape(4, 8, 8)[:, 7])


def test_yolo_head_check_reasons():
    assert "equal input channels" in can_resize("yolo_head", (255, 64, 1, 1), (75, 32, 1, 1))
    assert "got 256 rows" in can_resize("yolo_head", (256, 64, 1, 1), (75, 64, 1, 1))
    assert "got 15 rows" in can_resize("yolo_head", (255,), (15,))
    assert can_resize("yolo_head:4", (4 * 85,), (4 * 6,)) is None


# --- kernel -------------------------------------------------------------------------------------


def test_kernel_pad_3_to_5_same_conv_output():
    source = seeded(4, 2, 3, 3, seed=1)
    image = seeded(1, 2, 9, 9, seed=2)
    out = resize_tensor("kernel", source, torch.ones(4, 2, 5, 5))
    assert torch.equal(out[:, :, 1:4, 1:4], source)
    assert out.abs()[:, :, 0].sum() == 0 and out.abs()[:, :, :, 4].sum() == 0
    torch.testing.assert_close(F.conv2d(image, out, padding=2), F.conv2d(image, source, padding=1))


def test_kernel_crop_5_to_3_takes_centre():
    source = seeded(4, 2, 5, 5)
    assert torch.equal(resize_kernel(source, (3, 3)), source[:, :, 1:4, 1:4])


def test_kernel_check_reasons():
    assert "equal (out, in) channels" in can_resize("kernel", (4, 2, 3, 3), (4, 3, 5, 5))
    assert "odd amount" in can_resize("kernel", (4, 2, 3, 3), (4, 2, 4, 4))
    assert "conv weights" in can_resize("kernel", (4, 3), (4, 5))


# --- all methods: dtype, untouched inputs, errors -------------------------------------------------


CASES = [
    ("slice_pad", (256, 8), (288, 8)),
    ("in_channels", (8, 3, 3, 3), (8, 1, 3, 3)),
    ("in_channels", (8, 3, 3, 3), (8, 5, 3, 3)),
    ("pos_embed", (1, 197, 8), (1, 50, 8)),
    ("yolo_head", (255, 8, 1, 1), (75, 8, 1, 1)),
    ("kernel", (4, 2, 3, 3), (4, 2, 5, 5)),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("text, src_shape, dst_shape", CASES)
def test_dtype_kept_inputs_untouched_and_close_to_fp32(text, src_shape, dst_shape, dtype):
    source = seeded(*src_shape, seed=1, dtype=dtype)
    target = seeded(*dst_shape, seed=2, dtype=torch.float32)
    before = source.clone(), target.clone()
    out = resize_tensor(text, source, target)
    assert out.dtype == dtype and out.shape == dst_shape
    assert torch.equal(source, before[0]) and torch.equal(target, before[1])
    assert out.data_ptr() not in (source.data_ptr(), target.data_ptr())
    reference = resize_tensor(text, source.float(), target.to(dtype).float())
    torch.testing.assert_close(out.float(), reference.to(dtype).float(), atol=0, rtol=0)


COVERED = [
    ("slice_pad", (1000, 16), (5000, 16), 16_000),         # a class head grown 1000 -> 5000: 1000 rows
    ("slice_pad", (5000, 16), (1000, 16), 16_000),
    ("slice_pad", (256, 8), (288, 4), 1_024),
    ("in_channels", (8, 3, 3, 3), (8, 1, 3, 3), 72),        # every output channel is a sum of source ones
    ("in_channels", (8, 3, 3, 3), (8, 5, 3, 3), 360),
    ("pos_embed", (1, 197, 8), (1, 50, 8), 400),
    ("pos_embed", (1, 17, 8), (1, 37, 8), 296),
    ("yolo_head", (255, 8, 1, 1), (75, 8, 1, 1), 600),      # 3 anchors x (5 + 20 shared classes) rows
    ("yolo_head", (75, 8, 1, 1), (255, 8, 1, 1), 600),
    ("yolo_head:1", (8, 4), (10, 4), 32),
    ("kernel", (4, 2, 3, 3), (4, 2, 5, 5), 72),             # the zero padding is not from the source
    ("kernel", (4, 2, 5, 5), (4, 2, 3, 3), 72),
]


@pytest.mark.parametrize("text, src_shape, dst_shape, expected", COVERED)
def test_elements_from_source_counts_what_the_method_takes_from_the_source(text, src_shape, dst_shape, expected):
    assert elements_from_source(text, src_shape, dst_shape) == expected
    # The same count, observed: the target elements whose value changes with the source's values.
    target = seeded(*dst_shape, seed=3)
    one = resize_tensor(text, seeded(*src_shape, seed=1), target)
    other = resize_tensor(text, seeded(*src_shape, seed=2), target)
    assert int((one != other).sum()) == expected


def test_resize_tensor_error_names_method_and_shapes():
    with pytest.raises(ShapeError, match=r"'in_channels' cannot map \(64, 3, 3, 3\) to \(32, 4, 3, 3\): "
                                         r"in_channels needs equal out channels, got 64 vs 32"):
        resize_tensor("in_channels", torch.zeros(64, 3, 3, 3), torch.zeros(32, 4, 3, 3))


def test_parameters_with_grad_give_plain_tensors():
    source = torch.nn.Parameter(seeded(6, 4))
    target = torch.nn.Parameter(seeded(8, 4, seed=3))
    out = resize_tensor("slice_pad", source, target)
    assert not out.requires_grad and out.grad_fn is None
