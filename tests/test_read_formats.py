"""Reading every supported checkpoint layout, checked against the state dict that was saved.

Every file is written here under ``tmp_path``; values, key order and dtypes are compared exactly.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import importlib
import importlib.abc
import json
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ckptsurgeon.io import open_checkpoint, read_specs
from ckptsurgeon.specs import TensorSpec
from tempmodules import temporary_module


class ConvBnHead(nn.Module):
    """conv, bn (with running stats that differ from their defaults), linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)
        self.bn.running_mean.uniform_(-1, 1)
        self.bn.running_var.uniform_(0.5, 2)
        self.bn.num_batches_tracked.fill_(11)


def make_state(seed: int = 0) -> collections.OrderedDict:
    torch.manual_seed(seed)
    return ConvBnHead().state_dict()


def assert_same(checkpoint: Any, expected: dict[str, torch.Tensor]) -> None:
    """Same keys in the same order, same dtypes and shapes, equal values."""
    assert list(checkpoint) == list(expected)
    for name, tensor in expected.items():
        got = checkpoint[name]
        assert got.dtype == tensor.dtype, name
        assert got.shape == tensor.shape, name
        assert torch.equal(got, tensor), name


# --- torch zip files ---------------------------------------------------------------------------


@pytest.mark.parametrize("filename", ["model.pt", "model.pth", "yolo.weights", "no_extension"])
@pytest.mark.parametrize("as_dict", [False, True], ids=["OrderedDict", "dict"])
def test_plain_state_dict_any_extension(tmp_path: Path, filename: str, as_dict: bool) -> None:
    sd = make_state()
    torch.save(dict(sd) if as_dict else sd, tmp_path / filename)
    with open_checkpoint(tmp_path / filename) as checkpoint:
        assert_same(checkpoint, sd)
        assert checkpoint.info.format == "torch-zip"
        assert checkpoint.info.container == ""
        assert checkpoint.info.stripped_prefixes == ()
        assert checkpoint.info.stubbed_globals == ()


@pytest.mark.parametrize("key", ["model", "state_dict"])
def test_single_container(tmp_path: Path, key: str) -> None:
    sd = make_state()
    torch.save({key: sd}, tmp_path / "ckpt.pt")
    with open_checkpoint(tmp_path / "ckpt.pt") as checkpoint:
        assert_same(checkpoint, sd)
        assert checkpoint.info.container == key


def training_checkpoint(tmp_path: Path) -> tuple[Path, dict, dict]:
    """``{'model', 'ema', 'optimizer', 'epoch'}`` with an optimizer that holds real (tensor) state."""
    torch.manual_seed(0)
    model = ConvBnHead()
    optimizer = torch.optim.Adam(model.parameters())
    model.head(model.conv(torch.randn(2, 3, 3, 3)).flatten(1)).sum().backward()
    optimizer.step()
    sd = model.state_dict()
    ema = {name: value + 1 if value.is_floating_point() else value for name, value in sd.items()}
    path = tmp_path / "train.pt"
    torch.save({"model": sd, "ema": ema, "optimizer": optimizer.state_dict(), "epoch": 3}, path)
    return path, sd, ema


def test_training_checkpoint_picks_model_not_ema_or_optimizer(tmp_path: Path) -> None:
    path, sd, _ = training_checkpoint(tmp_path)
    with open_checkpoint(path) as checkpoint:
        assert_same(checkpoint, sd)
        info = checkpoint.info
    assert info.container == "model"
    assert [(c.path, c.kind, c.tensors, c.chosen) for c in info.containers] == [
        ("model", "state_dict", len(sd), True), ("ema", "state_dict", len(sd), False)]
    assert "--container" in info.container_reason


def test_training_checkpoint_container_ema(tmp_path: Path) -> None:
    path, _, ema = training_checkpoint(tmp_path)
    with open_checkpoint(path, container="ema") as checkpoint:
        assert_same(checkpoint, ema)
        assert checkpoint.info.container == "ema"
        assert [c.path for c in checkpoint.info.containers if c.chosen] == ["ema"]


def test_lightning_keeps_model_prefix(tmp_path: Path) -> None:
    sd = collections.OrderedDict((f"model.{name}", value) for name, value in make_state().items())
    torch.save({"state_dict": sd, "epoch": 4, "global_step": 100, "optimizer_states": [], "lr_schedulers": [],
                "hyper_parameters": {"lr": 0.1}}, tmp_path / "last.ckpt")
    with open_checkpoint(tmp_path / "last.ckpt") as checkpoint:
        assert_same(checkpoint, sd)
        assert checkpoint.info.container == "state_dict"
        assert checkpoint.info.stripped_prefixes == ()


def test_mmengine_state_dict_with_meta(tmp_path: Path) -> None:
    sd = make_state()
    meta = {"epoch": 12, "iter": 3000, "mmengine_version": "0.10.0", "dataset_meta": {"classes": ["a", "b"]}}
    torch.save({"meta": meta, "state_dict": sd, "message_hub": {"runtime_info": {"epoch": 12}}}, tmp_path / "e.pth")
    with open_checkpoint(tmp_path / "e.pth") as checkpoint:
        assert_same(checkpoint, sd)
        assert checkpoint.info.container == "state_dict"
        assert [c.path for c in checkpoint.info.containers] == ["state_dict"]


# --- wrapper prefixes ----------------------------------------------------------------------------


def test_data_parallel_prefix_stripped(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ConvBnHead()
    wrapped = nn.DataParallel(model)
    saved = wrapped.state_dict()
    assert all(name.startswith("module.") for name in saved)
    torch.save(saved, tmp_path / "dp.pt")
    with open_checkpoint(tmp_path / "dp.pt") as checkpoint:
        assert_same(checkpoint, model.state_dict())
        assert checkpoint.info.stripped_prefixes == ("module.",)


def test_compiled_prefix_stripped(tmp_path: Path) -> None:
    sd = make_state()
    torch.save({"model": {f"_orig_mod.{name}": value for name, value in sd.items()}}, tmp_path / "c.pt")
    with open_checkpoint(tmp_path / "c.pt") as checkpoint:
        assert_same(checkpoint, sd)
        assert checkpoint.info.stripped_prefixes == ("_orig_mod.",)


def test_data_parallel_of_compiled_strips_both(tmp_path: Path) -> None:
    sd = make_state()
    torch.save({f"module._orig_mod.{name}": value for name, value in sd.items()}, tmp_path / "c.pt")
    with open_checkpoint(tmp_path / "c.pt") as checkpoint:
        assert_same(checkpoint, sd)
        assert checkpoint.info.stripped_prefixes == ("module.", "_orig_mod.")


def test_prefix_on_some_keys_only_is_kept(tmp_path: Path) -> None:
    sd = collections.OrderedDict((f"module.{name}" if i % 2 else name, value)
                                 for i, (name, value) in enumerate(make_state().items()))
    torch.save(sd, tmp_path / "mixed.pt")
    with open_checkpoint(tmp_path / "mixed.pt") as checkpoint:
        assert_same(checkpoint, sd)
        assert checkpoint.info.stripped_prefixes == ()


def test_model_prefix_is_never_stripped(tmp_path: Path) -> None:
    sd = collections.OrderedDict((f"model.{name}", value) for name, value in make_state().items())
    torch.save(sd, tmp_path / "m.pt")
    with open_checkpoint(tmp_path / "m.pt") as checkpoint:
        assert_same(checkpoint, sd)
        assert checkpoint.info.stripped_prefixes == ()


# --- whole pickled models, their classes gone ------------------------------------------------------

NET_SOURCE = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(2.0))
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.register_buffer("scratch", torch.ones(5), persistent=False)
        self.register_buffer("anchors", torch.arange(6.0).view(3, 2))
        self.unused = None


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = Block()
        self.head = nn.ModuleList([nn.Linear(4, 2), nn.Linear(2, 1)])
        self.stride = torch.tensor([8.0, 16.0])  # a plain attribute, not part of the state dict
        self.head[1].requires_grad_(False)
        self.stem.bn.running_mean.uniform_(-1, 1)
        self.stem.bn.num_batches_tracked.fill_(3)
'''


class ImportRecorder(importlib.abc.MetaPathFinder):
    """Records every module name the import system is asked for; finds nothing itself."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        self.names.append(fullname)
        return None


@contextlib.contextmanager
def recording_imports() -> Iterator[list[str]]:
    recorder = ImportRecorder()
    sys.meta_path.insert(0, recorder)
    try:
        yield recorder.names
    finally:
        sys.meta_path.remove(recorder)


def save_whole_models(tmp_path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """Three files of one Net: torch.save(model), the YOLOv5 dict with the model in fp16, legacy format."""
    with temporary_module(tmp_path, NET_SOURCE) as module:
        torch.manual_seed(0)
        model = module.Net()
        torch.save(model, tmp_path / "whole.pt")
        torch.save({"model": copy.deepcopy(model).half(), "ema": None, "epoch": 5, "optimizer": None},
                   tmp_path / "yolov5.pt")
        torch.save(model, tmp_path / "whole_legacy.pt", _use_new_zipfile_serialization=False)
        return module.__name__, model.state_dict()


def as_half(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.half() if value.is_floating_point() else value for name, value in sd.items()}


@pytest.fixture(scope="module")
def whole_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("whole")
    name, sd = save_whole_models(folder)
    assert "stem.scratch" not in sd and "stem.anchors" in sd
    return folder, name, sd


@pytest.mark.parametrize("filename, half, container, fmt", [
    ("whole.pt", False, "", "torch-zip"),
    ("yolov5.pt", True, "model", "torch-zip"),
    ("whole_legacy.pt", False, "", "torch-legacy"),
])
def test_whole_model_without_its_classes(whole_models: tuple, filename: str, half: bool, container: str,
                                         fmt: str) -> None:
    folder, module_name, sd = whole_models
    assert module_name not in sys.modules
    with recording_imports() as requested:
        checkpoint = open_checkpoint(folder / filename)
        expected = as_half(sd) if half else sd
        assert_same(checkpoint, expected)  # the non-persistent buffer is left out
    assert not [name for name in requested if name == module_name or name.startswith("ckst_tmp_")]
    assert module_name not in sys.modules
    info = checkpoint.info
    assert (info.format, info.container, info.container_kind) == (fmt, container, "module")
    assert {f"{module_name}.Block", f"{module_name}.Net", "torch.nn.modules.conv.Conv2d",
            "torch.nn.modules.batchnorm.BatchNorm2d", "torch.nn.modules.linear.Linear",
            "torch.nn.modules.container.ModuleList"} == set(info.stubbed_globals)
    assert checkpoint.is_parameter("stem.gain") is True
    assert checkpoint.is_parameter("stem.anchors") is False
    assert checkpoint.requires_grad("head.0.weight") is True
    assert checkpoint.requires_grad("head.1.weight") is False
    checkpoint.close()


# --- the official YOLOv7 layout ---------------------------------------------------------------------

YOLOV7_COMMON = ("Conv", "Concat", "MP", "RepConv", "SPPCSPC", "ImplicitA", "ImplicitM")
YOLOV7_YOLO = ("IDetect", "Model")


@contextlib.contextmanager
def official_yolov7_package(folder: Path) -> Iterator[dict[str, type]]:
    """Temporary ``models.common`` / ``models.yolo`` modules whose classes are the official stand-ins."""
    assert "models" not in sys.modules, "another package named 'models' is already imported"
    package = folder / "models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for module, names in (("common", YOLOV7_COMMON), ("yolo", YOLOV7_YOLO)):
        lines = ["from ckptsurgeon.examples import official_yolov7 as _official", ""]
        lines += [f"class {name}(_official.{name}):\n    pass\n" for name in names]
        (package / f"{module}.py").write_text("\n".join(lines))
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        common, yolo = importlib.import_module("models.common"), importlib.import_module("models.yolo")
        yield {name: getattr(common, name) for name in YOLOV7_COMMON} | {name: getattr(yolo, name) for name in YOLOV7_YOLO}
    finally:
        sys.path.remove(str(folder))
        for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
            del sys.modules[name]
        shutil.rmtree(package)
        importlib.invalidate_caches()


def test_official_yolov7_layout(tmp_path: Path) -> None:
    from ckptsurgeon.examples import official_yolov7

    with official_yolov7_package(tmp_path) as classes:
        torch.manual_seed(0)
        model = official_yolov7.Model(num_classes=3, width=8)
        for module in model.modules():  # the classes now live in models.common / models.yolo
            if type(module).__name__ in classes and type(module).__module__.startswith("ckptsurgeon.examples"):
                module.__class__ = classes[type(module).__name__]
        assert type(model).__module__ == "models.yolo"
        sd = model.state_dict()
        torch.save({"epoch": -1, "best_fitness": None, "training_results": None, "model": copy.deepcopy(model).half(),
                    "ema": None, "updates": None, "optimizer": None, "wandb_id": None}, tmp_path / "yolov7.pt")
    assert "models" not in sys.modules
    with recording_imports() as requested, open_checkpoint(tmp_path / "yolov7.pt") as checkpoint:
        assert_same(checkpoint, as_half(sd))
        info = checkpoint.info
    assert not [name for name in requested if name == "models" or name.startswith("models.")]
    assert info.container == "model" and info.container_kind == "module"
    assert any(name.startswith("model.35.ia.") for name in sd) and "model.35.anchors" in sd
    ours = {name for name in info.stubbed_globals if not name.startswith("torch.")}
    assert ours == {f"models.common.{name}" for name in YOLOV7_COMMON} | {f"models.yolo.{name}" for name in YOLOV7_YOLO}


# --- legacy (pre-zip) torch files ---------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [1, 2, 3, 4, 5])
def test_legacy_state_dict(tmp_path: Path, protocol: int) -> None:
    sd = make_state()
    torch.save({"state_dict": sd, "epoch": 1}, tmp_path / "old.pth", _use_new_zipfile_serialization=False,
               pickle_protocol=protocol)
    with open_checkpoint(tmp_path / "old.pth") as checkpoint:
        assert checkpoint.info.format == "torch-legacy"
        assert_same(checkpoint, sd)


def test_legacy_views_share_storage(tmp_path: Path) -> None:
    base = torch.arange(12.0).view(3, 4)
    sd = {"t": base.t(), "rows": base[1:], "column": base[:, 1], "empty": torch.empty(0, 3), "scalar": torch.tensor(2.5)}
    torch.save(sd, tmp_path / "views.pt", _use_new_zipfile_serialization=False)
    torch.save(sd, tmp_path / "views_zip.pt")
    for name in ("views.pt", "views_zip.pt"):
        with open_checkpoint(tmp_path / name) as checkpoint:
            assert_same(checkpoint, sd)


# --- plain pickles of numpy arrays ----------------------------------------------------------------------


def detectron2_model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"backbone.stem.conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            "backbone.stem.conv1.norm.running_mean": rng.standard_normal(4).astype(np.float32),
            "roi_heads.box_predictor.cls_score.bias": rng.standard_normal(5),  # float64
            "proposal_generator.anchor_ids": np.arange(5, dtype=np.int64),
            "half": np.ones((2, 2), dtype=np.float16),
            "fortran": np.asfortranarray(rng.standard_normal((2, 3)).astype(np.float32)),
            "transposed": np.arange(6, dtype=np.int32).reshape(2, 3).T}


@pytest.mark.parametrize("protocol", range(6))
def test_detectron2_pickle(tmp_path: Path, protocol: int) -> None:
    arrays = detectron2_model()
    with open(tmp_path / "model_final.pkl", "wb") as handle:
        pickle.dump({"model": arrays, "__author__": "x", "matching_heuristics": True}, handle, protocol=protocol)
    with open_checkpoint(tmp_path / "model_final.pkl") as checkpoint:
        assert list(checkpoint) == list(arrays)
        for name, array in arrays.items():
            assert torch.equal(checkpoint[name], torch.from_numpy(np.ascontiguousarray(array))), name
        assert checkpoint.info.format == "pickle"
        assert checkpoint.info.container == "model"
        assert checkpoint.info.stubbed_globals == ()


def test_flat_numpy_pickle(tmp_path: Path) -> None:
    arrays = detectron2_model()
    with open(tmp_path / "weights.pkl", "wb") as handle:
        pickle.dump(arrays, handle)
    with open_checkpoint(tmp_path / "weights.pkl") as checkpoint:
        assert list(checkpoint) == list(arrays)
        assert checkpoint.specs["half"] == TensorSpec("half", (2, 2), "float16")
        assert torch.equal(checkpoint["transposed"], torch.from_numpy(arrays["transposed"].copy()))


def test_numpy_arrays_that_are_not_numbers_are_left_out(tmp_path: Path) -> None:
    arrays = {"w": np.ones((2, 2), np.float32), "classes": np.array(["cat", "dog"]),
              "misc": np.array([1, "x"], dtype=object), "scale": np.float32(0.5)}
    with open(tmp_path / "mixed.pkl", "wb") as handle:
        pickle.dump({"model": arrays}, handle)
    with open_checkpoint(tmp_path / "mixed.pkl") as checkpoint:
        assert list(checkpoint) == ["w", "scale"]
        assert checkpoint["scale"].dtype == torch.float32 and float(checkpoint["scale"]) == 0.5


DICT_SUBCLASS_SOURCE = '''
import collections


class CustomStateDict(collections.OrderedDict):
    pass


class AttrDict(dict):
    pass
'''


def test_dict_subclass_from_a_missing_module(tmp_path: Path) -> None:
    """A state dict held in a dict subclass whose module is gone still yields its tensors, in order."""
    sd = make_state()
    with temporary_module(tmp_path, DICT_SUBCLASS_SOURCE) as module:
        torch.save(module.CustomStateDict(sd), tmp_path / "custom.pt")
        torch.save({"model": module.AttrDict(sd), "meta": module.AttrDict(epoch=3)}, tmp_path / "attr.pt")
    for name, container in (("custom.pt", ""), ("attr.pt", "model")):
        with open_checkpoint(tmp_path / name) as checkpoint:
            assert_same(checkpoint, sd)
            assert checkpoint.info.container == container
            assert len(checkpoint.info.stubbed_globals) == 1


# --- safetensors, sharded folders, .bin ----------------------------------------------------------------


def header_order(path: Path) -> list[str]:
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return sorted(header, key=lambda name: header[name]["data_offsets"][0])


def test_safetensors(tmp_path: Path) -> None:
    sd = make_state()
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with open_checkpoint(tmp_path / "model.safetensors") as checkpoint:
        assert list(checkpoint) == header_order(tmp_path / "model.safetensors")  # the file keeps no other order
        assert_same(checkpoint, {name: sd[name] for name in checkpoint})
        assert checkpoint.info.format == "safetensors"
        assert dict(checkpoint.info.metadata) == {"format": "pt"}
        assert bytes(checkpoint.raw_bytes("conv.weight")) == sd["conv.weight"].numpy().tobytes()


def write_sharded(folder: Path, sd: dict[str, torch.Tensor], kind: str) -> list[str]:
    names = list(sd)
    halves = (names[: len(names) // 2], names[len(names) // 2:])
    if kind == "safetensors":
        shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
        index = "model.safetensors.index.json"
    else:
        shards = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
        index = "pytorch_model.bin.index.json"
    for shard, part in zip(shards, halves):
        tensors = {name: sd[name] for name in part}
        save_file(tensors, folder / shard) if kind == "safetensors" else torch.save(tensors, folder / shard)
    weight_map = {name: shards[0] if name in halves[0] else shards[1] for name in sorted(names)}
    (folder / index).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return shards


@pytest.mark.parametrize("via_index", [False, True], ids=["folder", "index"])
def test_sharded_safetensors(tmp_path: Path, via_index: bool) -> None:
    sd = make_state()
    shards = write_sharded(tmp_path, sd, "safetensors")
    target = tmp_path / "model.safetensors.index.json" if via_index else tmp_path
    with open_checkpoint(target) as checkpoint:
        assert list(checkpoint) == header_order(tmp_path / shards[0]) + header_order(tmp_path / shards[1])
        assert_same(checkpoint, {name: sd[name] for name in checkpoint})
        assert checkpoint.info.format == "safetensors-sharded"
        assert checkpoint.info.shards == tuple(shards)
        assert checkpoint.info.path == str(tmp_path / "model.safetensors.index.json")


def test_sharded_bin(tmp_path: Path) -> None:
    sd = make_state()
    write_sharded(tmp_path, sd, "bin")
    with open_checkpoint(tmp_path) as checkpoint:
        assert_same(checkpoint, sd)
        assert checkpoint.info.format == "torch-sharded"


def test_sharded_with_wrapper_prefix(tmp_path: Path) -> None:
    sd = make_state()
    write_sharded(tmp_path, {f"module.{name}": value for name, value in sd.items()}, "safetensors")
    with open_checkpoint(tmp_path) as checkpoint:
        assert sorted(checkpoint) == sorted(sd)
        assert checkpoint.info.stripped_prefixes == ("module.",)
        assert torch.equal(checkpoint["bn.running_mean"], sd["bn.running_mean"])


def test_pytorch_model_bin(tmp_path: Path) -> None:
    sd = make_state()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text("{}")
    for target in (tmp_path / "pytorch_model.bin", tmp_path):
        with open_checkpoint(target) as checkpoint:
            assert_same(checkpoint, sd)
            assert checkpoint.info.path == str(tmp_path / "pytorch_model.bin")


def test_read_specs_reads_no_tensor_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ckptsurgeon.io.reader as reader

    sd = make_state()
    torch.save({"model": sd}, tmp_path / "a.pt")
    monkeypatch.setattr(reader, "materialize", lambda *a: pytest.fail("tensor data was read"))
    specs, info = read_specs(tmp_path / "a.pt")
    assert list(specs) == list(sd)
    assert specs["conv.weight"] == TensorSpec("conv.weight", (4, 3, 3, 3), "float32")
    assert specs["bn.num_batches_tracked"] == TensorSpec("bn.num_batches_tracked", (), "int64")
    assert info.container == "model"
