"""The library ``transfer()``: real tensor values after transfers into modified architectures, and the gates."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from torch import nn

from ckptsurgeon.errors import GateFailed, MappingError
from ckptsurgeon.examples import official_yolov7
from ckptsurgeon.examples.yolov7 import YoloBody
from ckptsurgeon.io.records import MappedRecords
from ckptsurgeon.plan import ALIGN, COPY, EXACT, INIT, KEEP_TARGET, PREFIX, RENAME, RESIZE, SHAPE_MISMATCH, TIED
from ckptsurgeon.resize import resample_pos_embed
from ckptsurgeon import transfer
from standins import ModuleListNet, TinyResNet, TinyViT

SE_KEYS = {f"feat{i}_att.fc.{j}.weight" for i in (1, 2, 3) for j in (0, 2)}
CBAM_KEYS = {"backbone.dark3.1.channel.mlp.0.weight", "backbone.dark3.1.channel.mlp.2.weight",
             "backbone.dark3.1.spatial.conv.weight"}



@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def yolo(num_classes: int = 2, **variant: str) -> YoloBody:
    return YoloBody(num_classes, width=1, **variant)


def shifted_yolo_name(name: str) -> str:
    """The source name of a target key after CBAM went in at ``backbone.dark3.1``."""
    prefix = "backbone.dark3.2."
    return "backbone.dark3.1." + name[len(prefix):] if name.startswith(prefix) else name


# --- attention added -----------------------------------------------------------------------------


def test_se_appended_to_a_head_loads_every_old_key_and_keeps_the_se_init():
    old = yolo().state_dict()
    model = yolo(head_attention="se")
    before = snapshot(model)
    report = transfer(old, model)
    after = model.state_dict()
    assert set(after) == set(old) | SE_KEYS
    for name, value in old.items():
        assert torch.equal(after[name], value), name
    for name in SE_KEYS:
        assert torch.equal(after[name], before[name]), name
    counts = report.counts()
    non_counters = [n for n in old if not n.endswith("num_batches_tracked")]
    assert (counts.loaded, counts.new, counts.resized, counts.unused_sources) == (len(non_counters), 6, 0, 0)
    assert counts.targets == len(non_counters) + 6
    assert report.applied and report.plan.unused == ()
    assert {s.target for s in report.plan.steps if s.action == INIT} == SE_KEYS
    assert all(s.method == KEEP_TARGET for s in report.plan.steps if s.action == INIT)


def test_cbam_inserted_into_a_sequential_shifts_the_later_block():
    old = yolo().state_dict()
    model = yolo(backbone_insert="cbam")
    before = snapshot(model)
    report = transfer(old, model)
    after = model.state_dict()
    for name in after:
        if name in CBAM_KEYS:
            assert torch.equal(after[name], before[name]), name
        else:
            assert torch.equal(after[name], old[shifted_yolo_name(name)]), name
    assert any(name.startswith("backbone.dark3.2.") for name in after)
    step = report.plan.step_for("backbone.dark3.2.cv4.conv.weight")
    assert (step.source, step.strategy) == ("backbone.dark3.1.cv4.conv.weight", ALIGN)
    assert report.plan.unused == () and report.plan.ambiguities == ()
    model.eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64))
    assert all(torch.isfinite(out).all() for out in outputs)


def test_modulelist_insert_is_reported_ambiguous_and_its_rename_rule_loads_the_shifted_layer():
    # ModuleListNet's inserted layer has the shape of the layer after it: the checkpoint cannot tell
    # which of the two is new. The plan keeps names, says so, and gives the --rename for the other reading.
    old = ModuleListNet(n=4).state_dict()
    default = transfer(old, ModuleListNet(n=4, insert_at=3), dry_run=True)
    (ambiguity,) = default.plan.ambiguities
    assert ambiguity.container == "layers"
    assert ambiguity.rename_rule == r"--rename '^layers\.3\.=layers.4.'"

    model = ModuleListNet(n=4, insert_at=3)
    before = snapshot(model)
    report = transfer(old, model, rename=[r"^layers\.3\.=layers.4."])
    after = model.state_dict()
    for index in range(3):
        for leaf in ("weight", "bias"):
            assert torch.equal(after[f"layers.{index}.{leaf}"], old[f"layers.{index}.{leaf}"])
    for leaf in ("weight", "bias"):
        assert torch.equal(after[f"layers.3.{leaf}"], before[f"layers.3.{leaf}"])  # the new layer keeps its init
        assert torch.equal(after[f"layers.4.{leaf}"], old[f"layers.3.{leaf}"])     # the old layers.3
    assert report.plan.step_for("layers.4.weight").strategy == RENAME
    assert report.plan.unused == () and report.plan.ambiguities == ()
    assert torch.isfinite(model(torch.randn(2, 4, 9))).all()


def test_report_shows_the_rename_rule_of_an_ambiguity_once():
    old = ModuleListNet(n=4).state_dict()
    report = transfer(old, ModuleListNet(n=4, insert_at=3), dry_run=True)
    rule = r"--rename '^layers\.3\.=layers.4.'"
    assert f"to take it use {rule}" in report.render()
    assert f"`{rule}`" in report.to_markdown()


@pytest.mark.parametrize("insert_at", [3, 13, 33])
def test_official_flat_layout_shifts_every_later_layer(insert_at):
    old_model = official_yolov7.Model(num_classes=2, width=4)
    old = old_model.state_dict()
    model = official_yolov7.Model(num_classes=2, width=4, insert_at=insert_at)
    before = snapshot(model)
    report = transfer(old, model)
    after = model.state_dict()
    new_prefix = f"model.{insert_at}."
    for name, value in after.items():
        index = int(name.split(".")[1])
        if index < insert_at:
            assert torch.equal(value, old[name]), name
        elif index == insert_at:
            assert torch.equal(value, before[name]), name
        else:
            rest = name.split(".", 2)[2]
            assert torch.equal(value, old[f"model.{index - 1}.{rest}"]), name
    assert {s.target for s in report.plan.steps if s.action == INIT} == {n for n in after if n.startswith(new_prefix)}
    assert report.plan.unused == () and report.plan.ambiguities == ()
    model.eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 64, 64))
    assert len(maps) == 3 and all(torch.isfinite(m).all() for m in maps)


# --- class count and channel changes -------------------------------------------------------------


HEADS = [f"yolo_head_P{level}.{leaf}" for level in (3, 4, 5) for leaf in ("weight", "bias")]


def test_class_count_change_skips_the_head_by_default_with_its_reason():
    old = yolo(num_classes=2).state_dict()
    model = yolo(num_classes=5)
    before = snapshot(model)
    report = transfer(old, model)
    after = model.state_dict()
    for name in HEADS:
        assert torch.equal(after[name], before[name]), name
        step = report.plan.step_for(name)
        assert step.action == INIT and "shape mismatch" in step.reason
    unused = {u.source: u for u in report.plan.unused}
    assert set(unused) == set(HEADS)
    assert {u.reason for u in unused.values()} == {SHAPE_MISMATCH}
    assert all(torch.equal(after[n], old[n]) for n in old if n not in HEADS)
    assert report.counts().unused_sources == 6 and report.counts().new == 6


def test_yolo_head_resize_keeps_box_objectness_and_the_first_classes_per_anchor():
    old = yolo(num_classes=2).state_dict()
    model = yolo(num_classes=5)
    before = snapshot(model)
    report = transfer(old, model, resize=["yolo_head_P*=yolo_head"])
    after = model.state_dict()
    for name in HEADS:
        assert report.plan.step_for(name).action == RESIZE
        new = after[name].reshape(3, 10, *after[name].shape[1:])
        src = old[name].reshape(3, 7, *old[name].shape[1:])
        init = before[name].reshape(3, 10, *before[name].shape[1:])
        assert torch.equal(new[:, :7], src)          # 4 box + 1 objectness + the 2 shared classes, per anchor
        assert torch.equal(new[:, 7:], init[:, 7:])  # the 3 new classes keep the target's values
    assert report.plan.unused == () and report.counts().resized == 6


@pytest.mark.parametrize("num_classes", [5, 20])
def test_slice_pad_on_a_resnet_fc(num_classes):
    old = TinyResNet(num_classes=10).state_dict()
    model = TinyResNet(num_classes=num_classes)
    before = snapshot(model)
    transfer(old, model, resize=["fc.*=slice_pad"])
    keep = min(10, num_classes)
    assert torch.equal(model.fc.weight[:keep], old["fc.weight"][:keep])
    assert torch.equal(model.fc.bias[:keep], old["fc.bias"][:keep])
    assert torch.equal(model.fc.weight[keep:], before["fc.weight"][keep:])
    assert torch.equal(model.fc.bias[keep:], before["fc.bias"][keep:])


class BnClassifier(nn.Module):
    """A BatchNorm (2 parameters, 3 buffers) before a classifier whose class count is the knob."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, num_classes)


def test_grown_head_reports_only_the_parameter_elements_taken_from_the_source():
    old = BnClassifier(1000).state_dict()
    model = BnClassifier(5000)
    report = transfer(old, model, resize=["fc.*=slice_pad"])
    assert torch.equal(model.fc.weight[:1000], old["fc.weight"])
    counts = report.counts()
    # parameters: bn 4 + 4, fc 5000 x 4 + 5000, of which 1000 x 4 + 1000 rows came from the source
    assert (counts.param_numel_target, counts.param_numel_from_source) == (25_008, 5_008)
    # every tensor: the same plus BatchNorm's running mean and var (copied); its counter is not counted
    assert (counts.numel_target, counts.numel_from_source) == (25_016, 5_016)
    assert report.headline() == ("loaded 4/6 target tensors (66.7%), 0 new, 2 resized, 0 source tensors unused; "
                                 "20.0% of parameter elements from the source")
    assert report.parameters == {"bn.weight", "bn.bias", "fc.weight", "fc.bias"}


def test_channel_change_copies_the_overlap_exactly():
    old = TinyResNet(widths=(8, 16)).state_dict()
    model = TinyResNet(widths=(8, 18))
    before = snapshot(model)
    report = transfer(old, model, resize=["layer2.*=slice_pad"])
    after = model.state_dict()
    checked = 0
    for name, value in after.items():
        if not name.startswith("layer2.") or value.shape == old[name].shape:
            continue
        region = tuple(slice(0, min(a, b)) for a, b in zip(value.shape, old[name].shape))
        assert torch.equal(value[region], old[name][region]), name
        rest = torch.ones_like(value, dtype=torch.bool)
        rest[region] = False
        assert torch.equal(value[rest], before[name][rest]), name
        checked += 1
    assert checked == 25
    assert torch.equal(after["layer1.0.conv1.weight"], old["layer1.0.conv1.weight"])
    fc = report.plan.step_for("fc.weight")  # not covered by the rule: the target keeps its values
    assert fc.action == INIT and "--resize" in fc.reason
    assert torch.equal(after["fc.weight"], before["fc.weight"])


def test_in_channels_three_to_one_sums_the_input_channels():
    old = TinyResNet(in_chans=3).state_dict()
    model = TinyResNet(in_chans=1)
    report = transfer(old, model, resize=["conv1.weight=in_channels"])
    assert model.conv1.weight.shape == (8, 1, 3, 3)
    assert torch.allclose(model.conv1.weight, old["conv1.weight"].sum(dim=1, keepdim=True), rtol=0, atol=1e-7)
    assert report.plan.step_for("conv1.weight").method == "in_channels"
    assert torch.equal(model.layer2[1].conv2.weight, old["layer2.1.conv2.weight"])


def test_vit_image_size_change_resamples_pos_embed_keeping_the_cls_position():
    old = TinyViT(img_size=32).state_dict()
    model = TinyViT(img_size=48)
    report = transfer(old, model, resize=["pos_embed=pos_embed"])
    assert model.pos_embed.shape == (1, 1 + 36, 16)
    assert torch.equal(model.pos_embed[:, 0], old["pos_embed"][:, 0])
    assert torch.equal(model.pos_embed.detach(), resample_pos_embed(old["pos_embed"], 37))
    assert torch.equal(model.cls_token, old["cls_token"])
    assert report.counts().resized == 1 and report.plan.unused == ()


# --- prefixes, wrappers and file forms -----------------------------------------------------------


class DetectorWithBody(nn.Module):
    """A ResNet held at ``model.backbone.body`` with a head of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.backbone = nn.Module()
        self.model.backbone.body = TinyResNet()
        self.head = nn.Linear(16, 3)


def test_backbone_state_dict_moves_under_a_wrapper_prefix():
    old = {k: v for k, v in TinyResNet().state_dict().items() if not k.startswith("fc.")}
    model = DetectorWithBody()
    before = snapshot(model)
    report = transfer(old, model)
    after = model.state_dict()
    for name, value in old.items():
        assert torch.equal(after[f"model.backbone.body.{name}"], value), name
    assert report.plan.prefix_move == ("", "model.backbone.body.")
    assert report.plan.step_for("model.backbone.body.conv1.weight").strategy == PREFIX
    new = {s.target for s in report.plan.steps if s.action == INIT}
    assert new == {"model.backbone.body.fc.weight", "model.backbone.body.fc.bias", "head.weight", "head.bias"}
    assert all(torch.equal(after[n], before[n]) for n in new)


def test_detector_checkpoint_backbone_prefix_is_removed():
    old = {f"backbone.{k}": v for k, v in TinyResNet().state_dict().items()}
    model = TinyResNet()
    report = transfer(old, model)
    for name, value in model.state_dict().items():
        assert torch.equal(value, old[f"backbone.{name}"]), name
    assert report.plan.prefix_move == ("backbone.", "")
    assert report.counts().new == 0 and report.plan.unused == ()


def test_dataparallel_target():
    old = TinyResNet().state_dict()
    model = nn.DataParallel(TinyResNet())
    report = transfer(old, model)
    for name, value in model.module.state_dict().items():
        assert torch.equal(value, old[name]), name
    assert report.target == "DataParallel" and report.plan.prefix_move == ("", "module.")


def test_checkpoint_saved_from_dataparallel_has_its_module_prefix_stripped(tmp_path):
    wrapped = nn.DataParallel(TinyResNet())
    path = tmp_path / "dp.pt"
    torch.save(wrapped.state_dict(), path)
    model = TinyResNet()
    report = transfer(path, model)
    for name, value in model.state_dict().items():
        assert torch.equal(value, wrapped.module.state_dict()[name]), name
    assert report.source_info.stripped_prefixes == ("module.",)
    assert {s.strategy for s in report.plan.steps} == {EXACT} and report.plan.prefix_move is None


def test_whole_model_pickle_whose_class_is_gone(tmp_path, monkeypatch):
    folder = tmp_path / "gone"
    folder.mkdir()
    module_file = folder / "vanished_net.py"
    module_file.write_text(
        "from torch import nn\n\n"
        "class VanishedNet(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.stem = nn.Conv2d(3, 4, 3)\n"
        "        self.bn = nn.BatchNorm2d(4)\n"
        "        self.head = nn.Linear(4, 2)\n")
    monkeypatch.syspath_prepend(str(folder))
    net = importlib.import_module("vanished_net").VanishedNet()
    with torch.no_grad():
        net.bn.running_mean.uniform_()
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    del sys.modules["vanished_net"]
    module_file.unlink()

    class SameKeys(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.head = nn.Linear(4, 2)

    model = SameKeys()
    report = transfer(path, model)
    for name, value in model.state_dict().items():
        assert torch.equal(value, net.state_dict()[name]), name
    assert report.source_info.container_kind == "module"
    assert "vanished_net.VanishedNet" in report.source_info.stubbed_globals
    assert "vanished_net" not in sys.modules


# --- meta device, tied weights, initialisers, dtypes ---------------------------------------------


def test_meta_model_gets_real_cpu_tensors_that_do_not_share_the_source_memory():
    source_model = TinyResNet()
    old = source_model.state_dict()
    with torch.device("meta"):
        model = TinyResNet()
    transfer(old, model)
    for name, value in model.state_dict().items():
        assert value.device.type == "cpu" and torch.equal(value, old[name]), name
    assert isinstance(model.conv1.weight, nn.Parameter) and model.conv1.weight.requires_grad
    with torch.no_grad():
        model.conv1.weight.add_(1.0)  # training the new model must not change the source model
    assert not torch.equal(model.conv1.weight, source_model.conv1.weight)


def test_meta_model_loaded_from_a_file_owns_its_memory(tmp_path):
    old = TinyResNet().state_dict()
    torch.save(old, tmp_path / "src.pt")
    with torch.device("meta"):
        model = TinyResNet()
    transfer(tmp_path / "src.pt", model)
    (tmp_path / "src.pt").write_bytes(b"")  # the file changes after the transfer; the model does not
    assert all(torch.equal(value, old[name]) for name, value in model.state_dict().items())


def test_meta_model_with_a_new_key_needs_an_init():
    old = TinyResNet(num_classes=10).state_dict()
    with torch.device("meta"):
        model = TinyResNet(num_classes=3)
    with pytest.raises(MappingError, match="--init"):
        transfer(old, model)
    assert model.conv1.weight.is_meta  # nothing was loaded


def test_meta_model_with_an_init_rule():
    old = TinyResNet(num_classes=10).state_dict()
    with torch.device("meta"):
        model = TinyResNet(num_classes=3)
    report = transfer(old, model, init=["fc.*=zeros"])
    after = model.state_dict()
    assert not any(value.is_meta for value in after.values())
    assert torch.equal(after["fc.weight"], torch.zeros(3, 16)) and torch.equal(after["fc.bias"], torch.zeros(3))
    assert all(torch.equal(after[n], old[n]) for n in old if not n.startswith("fc."))
    assert report.plan.step_for("fc.weight").method == "zeros"


def test_meta_model_new_batchnorm_counters_start_at_zero():
    old = TinyResNet(blocks=(2, 2)).state_dict()
    with torch.device("meta"):
        model = TinyResNet(blocks=(2, 3))
    transfer(old, model, init=["layer2.2.*=normal:0.01"])  # normal cannot fill int64 counters
    after = model.state_dict()
    assert torch.equal(after["layer2.2.bn1.num_batches_tracked"], torch.tensor(0))
    assert not any(value.is_meta for value in after.values())


class TiedHead(nn.Module):
    """``head.weight`` is the very Parameter of ``embed.weight``."""

    def __init__(self) -> None:
        super().__init__()
        # Linear rather than Embedding: building an Embedding on the meta device imports torch._dynamo (seconds).
        self.embed = nn.Linear(3, 5, bias=False)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_tied_weights_both_get_the_one_source_tensor(device):
    old = {"embed.weight": torch.randn(5, 3)}
    with torch.device(device):
        model = TiedHead()
    report = transfer(old, model)
    assert torch.equal(model.embed.weight, old["embed.weight"])
    assert model.head.weight is model.embed.weight
    step = report.plan.step_for("head.weight")
    assert (step.action, step.source, step.strategy) == (COPY, "embed.weight", TIED)
    assert report.plan.unused == ()


def test_init_is_reproducible_by_seed():
    old = TinyResNet(num_classes=10).state_dict()
    models = [TinyResNet(num_classes=3) for _ in range(3)]
    for model, seed in zip(models, (1, 1, 2)):
        transfer(old, model, init=["*fc*=normal:0.01"], seed=seed)
    assert torch.equal(models[0].fc.weight, models[1].fc.weight)
    assert torch.equal(models[0].fc.bias, models[1].fc.bias)
    assert not torch.equal(models[0].fc.weight, models[2].fc.weight)
    assert 0.005 < models[0].fc.weight.std().item() < 0.02


def test_without_a_seed_the_report_records_the_default_seed_it_used():
    old = TinyResNet(num_classes=10).state_dict()
    unseeded, seeded_0 = TinyResNet(num_classes=3), TinyResNet(num_classes=3)
    report = transfer(old, unseeded, init=["*fc*=normal:0.01"])
    transfer(old, seeded_0, init=["*fc*=normal:0.01"], seed=0)
    assert torch.equal(unseeded.fc.weight, seeded_0.fc.weight)
    assert report.plan.options.seed == 0
    assert report.to_dict()["options"]["seed"] == 0


def test_fp16_checkpoint_into_an_fp32_model_is_cast_and_warned_about():
    old = {k: v.half() if v.is_floating_point() else v for k, v in TinyResNet().state_dict().items()}
    model = TinyResNet()
    report = transfer(old, model)
    for name, value in model.state_dict().items():
        assert value.dtype == (torch.float32 if value.is_floating_point() else torch.int64)
        assert torch.equal(value, old[name].to(value.dtype)), name
    assert report.counts().cast == 52
    assert any("cast to the target dtype" in w and "fp16 -> fp32" in w for w in report.warnings())


def test_fp16_source_resize_keeps_the_fp32_target_values_exactly():
    old = {k: v.half() if v.is_floating_point() else v for k, v in TinyResNet(num_classes=10).state_dict().items()}
    model = TinyResNet(num_classes=20)
    with torch.no_grad():
        model.fc.weight.add_(1e-4)  # values an fp16 round trip would change
    before = snapshot(model)
    transfer(old, model, resize=["fc.*=slice_pad"])
    assert torch.equal(model.fc.weight[:10], old["fc.weight"].float())
    assert torch.equal(model.fc.weight[10:], before["fc.weight"][10:])


# --- dry run and gates ---------------------------------------------------------------------------


def test_dry_run_leaves_the_model_alone_and_reads_no_tensor_data(tmp_path, monkeypatch):
    torch.save(TinyResNet(num_classes=10).state_dict(), tmp_path / "src.pt")
    model = TinyResNet(num_classes=3)
    before = snapshot(model)

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run read tensor data")

    monkeypatch.setattr(MappedRecords, "buffer", refuse)
    report = transfer(tmp_path / "src.pt", model, dry_run=True)
    assert not report.applied
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    assert report.counts().new == 2


def strict_case() -> tuple[dict[str, torch.Tensor], nn.Module]:
    """fc changes shape (2 unused, 2 new) and an SE block is new (2 new)."""
    return TinyResNet(num_classes=10).state_dict(), TinyResNet(num_classes=3, block_insert=(2, 1, "se"))


def test_strict_gate_fails_with_its_reasons_and_leaves_the_model_alone():
    old, model = strict_case()
    before = snapshot(model)
    with pytest.raises(GateFailed, match="--strict") as caught:
        transfer(old, model, strict=True)
    report = caught.value.report
    assert caught.value.exit_code == 3
    assert len(report.gate_failures) == 2
    assert "2 source tensors unused" in report.gate_failures[0] and "--allow-unused" in report.gate_failures[0]
    assert "4 target tensors" in report.gate_failures[1] and "--allow-new" in report.gate_failures[1]
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())


def test_strict_gate_passes_with_allow_patterns():
    old, model = strict_case()
    report = transfer(old, model, strict=True, allow_unused=["fc.*"], allow_new=["fc.*", "re:\\.fc\\.\\d\\."])
    assert report.applied and report.gate_failures == ()
    with pytest.raises(GateFailed, match="allow-new"):
        transfer(old, strict_case()[1], strict=True, allow_unused=["fc.*"])


def test_min_coverage_gate():
    old, model = strict_case()
    with pytest.raises(GateFailed, match="min-coverage 0.99") as caught:
        transfer(old, model, min_coverage=0.99)
    assert "92.6%" in caught.value.report.gate_failures[0]
    assert transfer(old, model, min_coverage=0.9).applied


def test_a_whole_training_checkpoint_dict_is_refused_with_what_to_pass():
    old = TinyResNet().state_dict()
    with pytest.raises(MappingError, match="'epoch' holds a int"):
        transfer({**old, "epoch": 3}, TinyResNet())
    with pytest.raises(MappingError, match="not a tensor"):
        transfer({"model": old}, TinyResNet())


def test_strict_ignores_bookkeeping_counters():
    # new BatchNorm layers bring num_batches_tracked counters; those never fail --strict on their own
    old = TinyResNet(blocks=(2, 2)).state_dict()
    model = TinyResNet(blocks=(2, 3))
    with pytest.raises(GateFailed) as caught:
        transfer(old, model, strict=True)
    assert "num_batches_tracked" not in caught.value.report.gate_failures[0]
    assert transfer(old, TinyResNet(blocks=(2, 3)), strict=True, allow_new=["layer2.2.*"]).applied
