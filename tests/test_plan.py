"""Planning on plain dicts of shapes: no torch, no files."""

from __future__ import annotations

import pytest

from ckptsurgeon.errors import MappingError
from ckptsurgeon.match import make_plan
from ckptsurgeon.plan import (ALIGN, AMBIGUOUS, COPY, DROPPED, EXACT, INIT, KEEP_TARGET, NO_MATCH, ORDER, PREFIX,
                              RENAME, RESIZE, SHAPE_MISMATCH, SIGNATURE, TIED)
from ckptsurgeon.specs import TensorSpec


def specs(shapes: dict[str, tuple[int, ...]], dtype: str = "float32") -> dict[str, TensorSpec]:
    return {name: TensorSpec(name, shape, dtype) for name, shape in shapes.items()}


def conv_bn(prefix: str, c_out: int, c_in: int, k: int = 3) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.conv.weight": (c_out, c_in, k, k), f"{prefix}.bn.weight": (c_out,),
            f"{prefix}.bn.bias": (c_out,), f"{prefix}.bn.running_mean": (c_out,),
            f"{prefix}.bn.running_var": (c_out,), f"{prefix}.bn.num_batches_tracked": ()}


def se(prefix: str, c: int, hidden: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.fc.0.weight": (hidden, c), f"{prefix}.fc.2.weight": (c, hidden)}


def sources_of(plan) -> dict[str, str | None]:
    return {step.target: step.source for step in plan.steps}


def test_identical_models_copy_everything_exactly():
    shapes = {**conv_bn("stem", 8, 3), **conv_bn("stage.0", 16, 8), "head.weight": (10, 16)}
    plan = make_plan(specs(shapes), specs(shapes))
    assert all(step.action == COPY and step.strategy == EXACT and step.source == step.target for step in plan.steps)
    assert plan.unused == ()


def test_se_block_added_as_new_named_child_keeps_every_old_key():
    source = {**conv_bn("neck", 16, 8), "head.weight": (10, 16)}
    target = {**conv_bn("neck", 16, 8), **se("neck_att", 16, 4), "head.weight": (10, 16)}
    plan = make_plan(specs(source), specs(target))
    new = [step.target for step in plan.steps if step.action == INIT]
    assert new == ["neck_att.fc.0.weight", "neck_att.fc.2.weight"]
    assert all(step.method == KEEP_TARGET for step in plan.steps if step.action == INIT)
    assert plan.unused == ()


def stage(blocks: list[dict[str, tuple[int, ...]]], prefix: str) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for index, block in enumerate(blocks):
        out.update({f"{prefix}.{index}.{name}": shape for name, shape in block.items()})
    return out


def block(c_out: int, c_in: int) -> dict[str, tuple[int, ...]]:
    return {k.removeprefix("x."): v for k, v in conv_bn("x", c_out, c_in).items()}


def test_insertion_into_sequential_shifts_later_indices_and_avoids_the_same_name_trap():
    # cv3.3 in the target has the name and shape of the source's cv3.3, but its weights are the source's cv3.2
    blocks = [block(8, 8), block(8, 8), block(16, 8), block(16, 16), block(16, 16)]
    attention = {"fc.0.weight": (2, 16), "fc.2.weight": (16, 2)}
    source = stage(blocks, "dark3")
    target = stage(blocks[:3] + [attention] + blocks[3:], "dark3")
    plan = make_plan(specs(source), specs(target))
    got = sources_of(plan)
    assert got["dark3.4.conv.weight"] == "dark3.3.conv.weight"
    assert got["dark3.5.bn.running_var"] == "dark3.4.bn.running_var"
    assert got["dark3.2.conv.weight"] == "dark3.2.conv.weight"
    assert plan.step_for("dark3.4.conv.weight").strategy == ALIGN
    assert plan.step_for("dark3.3.fc.0.weight").action == INIT
    assert plan.unused == ()


def test_same_name_same_shape_trap_is_not_loaded_from_the_wrong_layer():
    # the inserted module has the very name and shape of the block that follows it in the source
    source = stage([block(8, 3), block(16, 8), block(16, 16), block(32, 16)], "layers")
    target = stage([block(8, 3), block(16, 8), block(16, 16), block(16, 16), block(32, 16)], "layers")
    target = specs(target)
    plan = make_plan(specs(source), target)
    got = sources_of(plan)
    assert got["layers.4.conv.weight"] == "layers.3.conv.weight"
    assert got["layers.2.conv.weight"] == "layers.2.conv.weight"
    assert plan.step_for("layers.3.conv.weight").action == INIT
    assert len(plan.ambiguities) == 1
    ambiguity = plan.ambiguities[0]
    assert ambiguity.container == "layers" and "layers.3" in ambiguity.chosen
    assert ambiguity.rename_rule == r"--rename '^layers\.2\.=layers.3.'"


def test_rename_rule_from_an_ambiguity_states_the_other_reading():
    source = stage([block(8, 3), block(16, 8), block(16, 16), block(32, 16)], "layers")
    target = stage([block(8, 3), block(16, 8), block(16, 16), block(16, 16), block(32, 16)], "layers")
    plan = make_plan(specs(source), specs(target), rename=[r"^layers\.2\.=layers.3."])
    got = sources_of(plan)
    assert got["layers.3.conv.weight"] == "layers.2.conv.weight"
    assert plan.step_for("layers.2.conv.weight").action == INIT
    assert plan.step_for("layers.3.conv.weight").strategy == RENAME


def test_removed_module_shifts_indices_down():
    blocks = [block(8, 3), block(16, 8), block(32, 16), block(64, 32)]
    source = stage(blocks, "features")
    target = stage(blocks[:1] + blocks[2:], "features")
    plan = make_plan(specs(source), specs(target))
    got = sources_of(plan)
    assert got["features.1.conv.weight"] == "features.2.conv.weight"
    assert got["features.2.conv.weight"] == "features.3.conv.weight"
    unused = {u.source: u.reason for u in plan.unused}
    assert set(unused) == {f"features.1.{name}" for name in block(1, 1)}
    assert set(unused.values()) == {NO_MATCH}


def test_flat_official_yolov7_indices_shift_after_an_inserted_layer():
    layers = [block(8, 3), block(16, 8), block(16, 16), block(32, 16), block(32, 32), block(64, 32)]
    source = stage(layers, "model")
    source["model.6.m.0.weight"] = (255, 64, 1, 1)
    target = stage(layers[:2] + [{"cv.weight": (1, 2, 7, 7)}] + layers[2:], "model")
    target["model.7.m.0.weight"] = (255, 64, 1, 1)
    plan = make_plan(specs(source), specs(target))
    got = sources_of(plan)
    assert got["model.7.m.0.weight"] == "model.6.m.0.weight"
    assert got["model.3.conv.weight"] == "model.2.conv.weight"
    assert plan.step_for("model.2.cv.weight").action == INIT
    assert plan.unused == ()


def test_class_count_change_is_skipped_by_default_with_its_reason():
    source = {**conv_bn("neck", 16, 8), "yolo_head_P3.weight": (255, 16, 1, 1), "yolo_head_P3.bias": (255,)}
    target = {**conv_bn("neck", 16, 8), "yolo_head_P3.weight": (75, 16, 1, 1), "yolo_head_P3.bias": (75,)}
    plan = make_plan(specs(source), specs(target))
    step = plan.step_for("yolo_head_P3.weight")
    assert step.action == INIT and "shape mismatch" in step.reason and "--resize" in step.reason
    unused = {u.source: u for u in plan.unused}
    assert unused["yolo_head_P3.weight"].reason == SHAPE_MISMATCH
    assert "(75, 16, 1, 1)" in unused["yolo_head_P3.weight"].detail


@pytest.mark.parametrize("method", ["yolo_head", "slice_pad"])
def test_class_count_change_resized_on_request(method):
    source = {"yolo_head_P3.weight": (255, 16, 1, 1), "yolo_head_P3.bias": (255,)}
    target = {"yolo_head_P3.weight": (75, 16, 1, 1), "yolo_head_P3.bias": (75,)}
    plan = make_plan(specs(source), specs(target), resize=[f"yolo_head_P*={method}"])
    for step in plan.steps:
        assert step.action == RESIZE and step.method == method and step.fill == KEEP_TARGET
        assert step.source == step.target
    assert plan.unused == ()


def test_resize_rule_that_cannot_apply_says_why():
    plan = make_plan(specs({"fc.weight": (10, 16)}), specs({"fc.weight": (10, 16, 3)}), resize=["fc.*=slice_pad"])
    step = plan.step_for("fc.weight")
    assert step.action == INIT and "cannot apply" in step.reason


def test_channel_change_256_to_288_resized_in_place_with_slice_pad():
    source = {**conv_bn("neck.0", 256, 128), **conv_bn("neck.1", 64, 256)}
    target = {**conv_bn("neck.0", 288, 128), **conv_bn("neck.1", 64, 288)}
    plan = make_plan(specs(source), specs(target), resize=["neck.*=slice_pad"])
    assert plan.step_for("neck.0.conv.weight").action == RESIZE
    assert plan.step_for("neck.1.conv.weight").source == "neck.1.conv.weight"
    assert plan.step_for("neck.1.bn.weight").action == COPY
    assert plan.step_for("neck.0.bn.running_var").action == RESIZE
    assert plan.unused == ()


def test_in_chans_3_to_1_resizes_only_the_first_conv():
    source = {"conv1.weight": (8, 3, 3, 3), "conv1.bias": (8,), "fc.weight": (10, 8)}
    target = {"conv1.weight": (8, 1, 3, 3), "conv1.bias": (8,), "fc.weight": (10, 8)}
    plan = make_plan(specs(source), specs(target), resize=["conv1.weight=in_channels"])
    assert plan.step_for("conv1.weight").action == RESIZE
    assert plan.step_for("conv1.bias").action == COPY


def test_vit_image_size_change_resizes_pos_embed_and_keeps_cls_token():
    source = {"cls_token": (1, 1, 16), "pos_embed": (1, 17, 16), "patch_embed.proj.weight": (16, 3, 8, 8)}
    target = {"cls_token": (1, 1, 16), "pos_embed": (1, 37, 16), "patch_embed.proj.weight": (16, 3, 8, 8)}
    plan = make_plan(specs(source), specs(target), resize=["pos_embed=pos_embed"])
    assert plan.step_for("pos_embed").action == RESIZE
    assert plan.step_for("cls_token").action == COPY
    assert plan.unused == ()


def test_standalone_backbone_moves_into_a_detector_prefix():
    backbone = {**conv_bn("stem", 8, 3), **conv_bn("layer1.0", 16, 8), **conv_bn("layer1.1", 16, 16)}
    target = {f"model.backbone.body.{k}": v for k, v in backbone.items()}
    target.update({"model.head.cls.weight": (5, 16)})
    plan = make_plan(specs(backbone), specs(target))
    assert plan.prefix_move == ("", "model.backbone.body.")
    step = plan.step_for("model.backbone.body.layer1.1.conv.weight")
    assert step.action == COPY and step.source == "layer1.1.conv.weight" and step.strategy == PREFIX
    assert plan.step_for("model.head.cls.weight").action == INIT


def test_detector_backbone_subtree_into_a_classifier():
    backbone = {**conv_bn("stem", 8, 3), **conv_bn("layer1.0", 16, 8), **conv_bn("layer1.1", 16, 16)}
    source = {f"backbone.{k}": v for k, v in backbone.items()} | {"rpn.conv.weight": (16, 16, 3, 3)}
    target = backbone | {"fc.weight": (10, 16)}
    plan = make_plan(specs(source), specs(target))
    assert plan.prefix_move == ("backbone.", "")
    assert plan.step_for("stem.conv.weight").source == "backbone.stem.conv.weight"
    assert {u.source for u in plan.unused} == {"rpn.conv.weight"}


def test_dataparallel_target_gets_module_prefix():
    shapes = {**conv_bn("stem", 8, 3), "fc.weight": (10, 8)}
    plan = make_plan(specs(shapes), specs({f"module.{k}": v for k, v in shapes.items()}))
    assert plan.prefix_move == ("", "module.")
    assert all(step.action == COPY for step in plan.steps)


def test_rename_rules_apply_first_and_an_empty_name_drops_the_key():
    source = {"enc.conv.weight": (8, 3, 3, 3), "aux.weight": (4, 8)}
    target = {"encoder.conv.weight": (8, 3, 3, 3)}
    plan = make_plan(specs(source), specs(target), rename=[r"^enc\.=encoder.", r"^aux\..*="])
    step = plan.step_for("encoder.conv.weight")
    assert step.source == "enc.conv.weight" and step.strategy == RENAME
    assert [(u.source, u.reason) for u in plan.unused] == [("aux.weight", DROPPED)]


@pytest.mark.parametrize("rule", ["(unclosed=x", "no_equals_sign", r"=x", r"a(b)=\2"])
def test_bad_rename_rules_raise_mapping_errors(rule):
    with pytest.raises(MappingError, match="--rename"):
        make_plan(specs({"a.w": (1,)}), specs({"a.w": (1,)}), rename=[rule])


def test_rename_collision_is_an_error():
    with pytest.raises(MappingError, match="same name"):
        make_plan(specs({"a.w": (1,), "b.w": (1,)}), specs({"c.w": (1,)}), rename=[r"^[ab]\.=c."])


def test_unknown_resize_method_and_initialiser_are_errors():
    with pytest.raises(MappingError):
        make_plan(specs({"a": (1,)}), specs({"a": (2,)}), resize=["a=stretch"])
    with pytest.raises(MappingError):
        make_plan(specs({"a": (1,)}), specs({"a": (2,)}), init=["a=random"])


def test_init_rules_choose_the_first_that_fits_each_new_tensor():
    plan = make_plan(specs({}), specs({"fc.weight": (10, 8), "fc.bias": (10,)}), init=["fc.*=kaiming", "fc.*=zeros"])
    assert plan.step_for("fc.weight").method == "kaiming"
    bias = plan.step_for("fc.bias")
    assert bias.method == "zeros" and "kaiming needs" in bias.reason


def test_renamed_siblings_pair_by_unique_signature():
    source = {"attention.query.weight": (16, 16), "attention.output.weight": (32, 16)}
    target = {"attention.q_proj.weight": (16, 16), "attention.out.weight": (32, 16)}
    plan = make_plan(specs(source), specs(target))
    assert plan.step_for("attention.q_proj.weight").source == "attention.query.weight"
    assert plan.step_for("attention.out.weight").strategy == SIGNATURE


def test_identical_siblings_with_unrelated_names_load_nothing_and_say_why():
    source = {"attn.left.weight": (16, 16), "attn.middle.weight": (16, 16), "attn.right.weight": (16, 16)}
    target = {"attn.a.weight": (16, 16), "attn.b.weight": (16, 16), "attn.c.weight": (16, 16)}
    plan = make_plan(specs(source), specs(target))
    assert all(step.action == INIT for step in plan.steps)
    assert {u.reason for u in plan.unused} == {AMBIGUOUS}
    assert plan.ambiguities and "--rename" in plan.ambiguities[0].rename_rule


def test_identical_siblings_pair_by_the_abbreviations_libraries_use():
    source = {f"attn.{name}.weight": (16, 16) for name in ("query", "key", "value", "output")}
    target = {f"attn.{name}_proj.weight": (16, 16) for name in ("q", "k", "v", "o")}
    plan = make_plan(specs(source), specs(target))
    assert sources_of(plan) == {"attn.q_proj.weight": "attn.query.weight", "attn.k_proj.weight": "attn.key.weight",
                                "attn.v_proj.weight": "attn.value.weight", "attn.o_proj.weight": "attn.output.weight"}
    assert plan.ambiguities == () and plan.unused == ()


def test_identical_siblings_pair_where_names_are_clearly_similar():
    source = {"blk.conv_left.weight": (16, 16), "blk.conv_right.weight": (16, 16)}
    target = {"blk.conv_lft.weight": (16, 16), "blk.conv_rght.weight": (16, 16)}
    plan = make_plan(specs(source), specs(target))
    assert sources_of(plan) == {"blk.conv_lft.weight": "blk.conv_left.weight",
                                "blk.conv_rght.weight": "blk.conv_right.weight"}


def test_order_fallback_pairs_whole_modules_in_registration_order():
    # identical modules under unrelated names: no name or signature evidence, only registration order
    source = {**conv_bn("p", 8, 8), **conv_bn("q", 8, 8), **conv_bn("r", 16, 8)}
    target = {**conv_bn("x", 8, 8), **conv_bn("y", 8, 8), **conv_bn("z", 16, 8)}
    without = make_plan(specs(source), specs(target))
    assert without.step_for("z.conv.weight").strategy == SIGNATURE
    assert without.step_for("x.conv.weight").action == INIT
    assert {u.reason for u in without.unused} == {AMBIGUOUS}
    plan = make_plan(specs(source), specs(target), order_fallback=True)
    got = sources_of(plan)
    assert got["y.bn.running_mean"] == "q.bn.running_mean"
    assert got["x.bn.bias"] == "p.bn.bias"
    assert plan.step_for("x.conv.weight").strategy == ORDER
    assert plan.unused == ()


def test_tied_target_keys_share_one_source():
    source = {"embed.weight": (100, 16)}
    target = {"embed.weight": (100, 16), "lm_head.weight": (100, 16)}
    plan = make_plan(specs(source), specs(target), tied=[["embed.weight", "lm_head.weight"]])
    step = plan.step_for("lm_head.weight")
    assert step.action == COPY and step.source == "embed.weight" and step.strategy == TIED


def test_frozen_batchnorm_source_without_num_batches_tracked_still_matches():
    shapes = {**conv_bn("stage.0", 8, 3), **conv_bn("stage.1", 16, 8)}
    frozen = {k: v for k, v in shapes.items() if not k.endswith("num_batches_tracked")}
    target = stage([{"fc.weight": (2, 2)}], "stage") | {k.replace("stage.1", "stage.2").replace("stage.0", "stage.1"): v
                                                       for k, v in shapes.items()}
    plan = make_plan(specs(frozen), specs(target))
    assert sources_of(plan)["stage.2.conv.weight"] == "stage.1.conv.weight"
    assert plan.step_for("stage.2.bn.num_batches_tracked").action == INIT


def test_dtype_change_is_a_copy_with_a_cast():
    plan = make_plan(specs({"w": (2, 2)}, "float16"), specs({"w": (2, 2)}, "float32"))
    step = plan.step_for("w")
    assert step.action == COPY and step.is_cast


def test_large_containers_still_report_an_identical_insertion_as_ambiguous():
    from ckptsurgeon.match.align import MAX_DP_CELLS, align_sequences, alternative_alignment

    a = list(range(300))
    b = a[:150] + [149] + a[150:]          # a copy of module 149 inserted after it
    assert len(a) * len(b) > MAX_DP_CELLS   # the near-linear path, not the exact one
    chosen = align_sequences(a, b)
    assert chosen[:150] == [(k, k) for k in range(150)] and (150, 151) in chosen
    other = alternative_alignment(a, b, chosen)
    assert other is not None and (149, 150) in other and len(other) == len(chosen)
    unique = a[:150] + [1000] + a[150:]
    assert alternative_alignment(a, unique, align_sequences(a, unique)) is None


def copies(plan) -> int:
    return sum(step.action == COPY for step in plan.steps)


def test_an_ambiguity_rule_into_a_dataparallel_target_keeps_the_wrapper_move():
    # The --rename rules an ambiguity suggests pin some modules onto module.* keys; the prefix move of the
    # keys left must still be the wrapper, and the other reading loads as much as the plan did.
    blocks = [block(8, 8), block(8, 8), block(16, 8)]
    source = {**stage(blocks, "backbone"), **se("head.0", 16, 4), "head.1.weight": (10, 16)}
    wrapped = {**stage([block(8, 8)] + blocks, "backbone"), **se("head.0", 16, 4), "head.1.weight": (10, 16)}
    target = {f"module.{k}": v for k, v in wrapped.items()}
    plan = make_plan(specs(source), specs(target))
    rule = plan.ambiguities[0].rename_rule
    assert rule == r"--rename '^backbone\.0\.=module.backbone.1.' --rename '^backbone\.1\.=module.backbone.2.'"
    other = make_plan(specs(source), specs(target), rename=[r"^backbone\.0\.=module.backbone.1.",
                                                            r"^backbone\.1\.=module.backbone.2."])
    assert other.prefix_move == plan.prefix_move == ("", "module.")
    assert copies(other) == copies(plan) == len(source)
    assert sources_of(other)["module.backbone.1.conv.weight"] == "backbone.0.conv.weight"


def test_the_keys_a_rule_leaves_are_not_given_a_nonsense_prefix_move():
    # Found by the property tests: with backbone.0 pinned by a rule, the few backbone keys left agree in
    # masked name and shape with neck.*, and a move backbone. -> neck. used to be taken (14 loads, not 17).
    source = {**conv_bn("backbone.0", 8, 8, 1), **conv_bn("backbone.1", 8, 8, 1), **conv_bn("neck.0", 8, 4),
              **se("neck.1", 8, 16), "neck.2.weight": (8, 4, 1, 1)}
    target = {**se("aux.0", 8, 16), **se("aux.1", 8, 16), **se("backbone.0", 8, 16),
              **conv_bn("backbone.1", 8, 8, 1), **se("backbone.2", 16, 16), **conv_bn("neck.0", 8, 16, 1),
              **conv_bn("neck.1", 8, 4), "neck.2.weight": (4, 8), "neck.2.bias": (4,), "neck.3.weight": (4, 8),
              "neck.3.bias": (4,)}
    plan = make_plan(specs(source), specs(target))
    assert r"--rename '^backbone\.0\.=backbone.1.'" in [a.rename_rule for a in plan.ambiguities]
    other = make_plan(specs(source), specs(target), rename=[r"^backbone\.0\.=backbone.1."])
    assert other.prefix_move is None
    assert copies(other) == copies(plan)
    assert sources_of(other)["backbone.1.conv.weight"] == "backbone.0.conv.weight"


def test_suggests_order_fallback_where_it_loads_more_and_it_does():
    source = {**conv_bn("p", 8, 8), **conv_bn("q", 8, 8), **conv_bn("r", 16, 8)}
    target = {**conv_bn("x", 8, 8), **conv_bn("y", 8, 8), **conv_bn("z", 16, 8)}
    plan = make_plan(specs(source), specs(target))
    [suggestion] = plan.suggestions
    assert suggestion.option == "--order-fallback" and suggestion.loads_more == 12
    assert copies(make_plan(specs(source), specs(target), order_fallback=True)) == copies(plan) + 12


def test_suggests_the_rename_of_a_module_that_moved_where_its_signature_recurs():
    # head.extra left the head for the neck under another name; conv_bn(8, 8) recurs in a and b, so no
    # move is taken by itself, but one unused module and one new module of that signature are left over.
    source = {**conv_bn("a", 8, 8), **conv_bn("b", 8, 8), **conv_bn("head.extra", 8, 8), "head.fc.weight": (2, 8)}
    target = {**conv_bn("a", 8, 8), **conv_bn("b", 8, 8), **conv_bn("neck.extra2", 8, 8), "head.fc.weight": (2, 8)}
    plan = make_plan(specs(source), specs(target))
    assert plan.step_for("neck.extra2.conv.weight").action == INIT
    assert [s.option for s in plan.suggestions] == [r"--rename '^head\.extra\.=neck.extra2.'"]
    rule = plan.suggestions[0].option.split("'")[1]
    again = make_plan(specs(source), specs(target), rename=[rule])
    assert copies(again) > copies(plan) and sources_of(again)["neck.extra2.bn.bias"] == "head.extra.bn.bias"
    assert again.suggestions == ()


def test_no_suggestion_when_nothing_would_load_more():
    source = {**conv_bn("stem", 8, 3), "fc.weight": (1000, 8), "fc.bias": (1000,)}
    target = {**conv_bn("stem", 8, 3), "fc.weight": (100, 8), "fc.bias": (100,)}
    assert make_plan(specs(source), specs(target)).suggestions == ()


@pytest.mark.parametrize("source_shape, target_shape, method", [
    ((1000, 8), (100, 8), "slice_pad"),
    ((16, 3, 3, 3), (16, 1, 3, 3), "in_channels"),
    ((16, 8, 3, 3), (16, 8, 5, 5), "kernel"),
    ((1, 197, 32), (1, 257, 32), "pos_embed"),
])
def test_a_shape_mismatch_names_its_key_and_a_method_that_applies(source_shape, target_shape, method):
    plan = make_plan(specs({"m.w": source_shape}), specs({"m.w": target_shape}))
    step = plan.step_for("m.w")
    assert step.action == INIT and step.reason.endswith(f"to use it add --resize 'm.w={method}'")
    resized = make_plan(specs({"m.w": source_shape}), specs({"m.w": target_shape}), resize=[f"m.w={method}"])
    assert resized.step_for("m.w").action == RESIZE


def test_a_shape_mismatch_no_method_maps_says_so():
    plan = make_plan(specs({"m.w": (8, 4)}), specs({"m.w": (8, 4, 1)}))
    assert plan.step_for("m.w").reason.endswith("no resize method maps these shapes")


def test_keys_too_deep_to_be_a_model_are_refused_with_the_limit():
    from ckptsurgeon.match.planner import MAX_DEPTH

    fits = ".".join(["m"] * MAX_DEPTH) + ".weight"
    assert make_plan(specs({fits: (2,)}), specs({fits: (2,)})).step_for(fits).action == COPY
    deep = ".".join(["m"] * 3000) + ".weight"
    with pytest.raises(MappingError, match=rf"source key .* is 3000 modules deep; planning follows at most {MAX_DEPTH}"):
        make_plan(specs({deep: (2,)}), specs({"w": (2,)}))
