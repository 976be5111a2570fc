"""Synthetic checkpoints for the benchmarks, built once and cached on disk.

Each checkpoint is a plain state dict written in two formats: a torch zip
(``torch.save``, ``.pth``) and ``.safetensors``. Tensors are zero-filled: the content
does not matter for the benchmarks, only the shapes, dtypes, count and size do.

A ``<name>.manifest.json`` written after both files records the spec version, the
tensor count and the file sizes; a checkpoint is reused when its manifest matches
and the files on disk still have the recorded sizes.

torch and safetensors are imported only when something has to be built, so that a
benchmark run on cached files keeps torch out of the measuring process.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

StateDict = dict[str, "torch.Tensor"]

FORMATS: tuple[str, ...] = ("pth", "safetensors")


@dataclass(frozen=True)
class CheckpointSpec:
    name: str
    version: int  # bump when the builder changes, to invalidate cached files
    description: str
    build: Callable[[], StateDict]


@dataclass(frozen=True)
class BuiltCheckpoint:
    name: str
    tensors: int
    files: dict[str, Path]  # format -> path


# --------------------------------------------------------------------------- builders


def _zeros(*shape: int, dtype: Any = None) -> torch.Tensor:
    import torch

    return torch.zeros(shape, dtype=dtype or torch.float32)


class _ConvBank:
    """Collects YOLO-style Conv+BN tensors under ``model.<index>`` prefixes."""

    def __init__(self) -> None:
        self.tensors: StateDict = {}

    def conv_bn(self, prefix: str, c_in: int, c_out: int, k: int,
                conv: str = "conv", bn: str = "bn") -> int:
        import torch

        t = self.tensors
        t[f"{prefix}.{conv}.weight"] = _zeros(c_out, c_in, k, k)
        for field in ("weight", "bias", "running_mean", "running_var"):
            t[f"{prefix}.{bn}.{field}"] = _zeros(c_out)
        t[f"{prefix}.{bn}.num_batches_tracked"] = _zeros(dtype=torch.int64)
        return c_out

    def elan(self, index: int, c_in: int, c_mid: int, c_branch: int, c_out: int,
             concat_branches: int) -> tuple[int, int]:
        """Two 1x1 convs, a chain of four 3x3 convs, a concat and a 1x1 fuse conv.

        Returns (next layer index, output channels).
        """
        self.conv_bn(f"model.{index}", c_in, c_mid, 1)
        self.conv_bn(f"model.{index + 1}", c_in, c_mid, 1)
        c_prev = c_mid
        for j in range(4):
            c_prev = self.conv_bn(f"model.{index + 2 + j}", c_prev, c_branch, 3)
        concat = 2 * c_mid + concat_branches * c_branch
        self.conv_bn(f"model.{index + 7}", concat, c_out, 1)  # index + 6 is the concat
        return index + 8, c_out

    def mp_down(self, index: int, c_in: int, c: int) -> tuple[int, int]:
        """MaxPool branch + strided 3x3 branch, concatenated (index is the MaxPool)."""
        self.conv_bn(f"model.{index + 1}", c_in, c, 1)
        self.conv_bn(f"model.{index + 2}", c_in, c, 1)
        self.conv_bn(f"model.{index + 3}", c, c, 3)
        return index + 5, 2 * c  # index + 4 is the concat


def _yolov7_backbone(bank: _ConvBank) -> int:
    c = bank.conv_bn("model.0", 3, 32, 3)
    c = bank.conv_bn("model.1", c, 64, 3)
    c = bank.conv_bn("model.2", c, 64, 3)
    c = bank.conv_bn("model.3", c, 128, 3)
    i, c = bank.elan(4, c, 64, 64, 256, concat_branches=2)        # 4..11
    i, c = bank.mp_down(i, c, 128)                                # 12..16 (P3)
    i, c = bank.elan(i, c, 128, 128, 512, concat_branches=2)      # 17..24
    i, c = bank.mp_down(i, c, 256)                                # 25..29 (P4)
    i, c = bank.elan(i, c, 256, 256, 1024, concat_branches=2)     # 30..37
    i, c = bank.mp_down(i, c, 512)                                # 38..42 (P5)
    i, _ = bank.elan(i, c, 256, 256, 1024, concat_branches=2)     # 43..50
    return i


def _yolov7_head(bank: _ConvBank, i: int) -> None:
    for n, (c_in, c_out, k) in enumerate(
        [(1024, 512, 1), (1024, 512, 1), (512, 512, 3), (512, 512, 1),
         (2048, 512, 1), (512, 512, 3), (1024, 512, 1)], start=1):
        bank.conv_bn(f"model.{i}.cv{n}", c_in, c_out, k)           # 51: SPPCSPC
    bank.conv_bn("model.52", 512, 256, 1)                          # 53: upsample
    bank.conv_bn("model.54", 1024, 256, 1)                         # route P4
    i, _ = bank.elan(56, 512, 256, 128, 256, concat_branches=4)     # 56..63
    bank.conv_bn("model.64", 256, 128, 1)                          # 65: upsample
    bank.conv_bn("model.66", 512, 128, 1)                          # route P3
    i, _ = bank.elan(68, 256, 128, 64, 128, concat_branches=4)      # 68..75
    i, c = bank.mp_down(76, 128, 128)                              # 76..80 (+ route 63)
    i, _ = bank.elan(81, c + 256, 256, 128, 256, concat_branches=4)  # 81..88
    i, c = bank.mp_down(89, 256, 256)                              # 89..93 (+ route 51)
    bank.elan(94, c + 512, 512, 256, 512, concat_branches=4)        # 94..101
    for n, (c_in, c_out) in enumerate([(128, 256), (256, 512), (512, 1024)]):
        prefix = f"model.{102 + n}"                                # RepConv
        bank.conv_bn(prefix, c_in, c_out, 3, conv="rbr_dense.0", bn="rbr_dense.1")
        bank.conv_bn(prefix, c_in, c_out, 1, conv="rbr_1x1.0", bn="rbr_1x1.1")


def _yolov7_detect(bank: _ConvBank, outputs: int = 255) -> None:
    t = bank.tensors
    t["model.105.anchors"] = _zeros(3, 3, 2)
    t["model.105.anchor_grid"] = _zeros(3, 1, 3, 1, 1, 2)
    for j, c in enumerate((256, 512, 1024)):
        t[f"model.105.m.{j}.weight"] = _zeros(outputs, c, 1, 1)
        t[f"model.105.m.{j}.bias"] = _zeros(outputs)
        t[f"model.105.ia.{j}.implicit"] = _zeros(1, c, 1, 1)
        t[f"model.105.im.{j}.implicit"] = _zeros(1, outputs, 1, 1)


def build_yolov7() -> StateDict:
    """YOLOv7-like detector: ~37M fp32 params (~150 MB) in ~560 tensors."""
    bank = _ConvBank()
    _yolov7_head(bank, _yolov7_backbone(bank))
    _yolov7_detect(bank)
    return bank.tensors


def build_big(layers: int = 12, hidden: int = 1536, ffn: int = 6144,
              vocab: int = 14336, positions: int = 2048) -> StateDict:
    """Transformer-like: ~1.5 GB fp32, embeddings ~88 MB, FFN matrices ~38 MB."""
    sd: StateDict = {
        "embed_tokens.weight": _zeros(vocab, hidden),
        "embed_positions.weight": _zeros(positions, hidden),
    }
    head_dim = 128
    for i in range(layers):
        p = f"layers.{i}"
        for proj in ("q", "k", "v", "o"):
            sd[f"{p}.self_attn.{proj}_proj.weight"] = _zeros(hidden, hidden)
            sd[f"{p}.self_attn.{proj}_proj.bias"] = _zeros(hidden)
        sd[f"{p}.self_attn.q_norm.weight"] = _zeros(head_dim)
        sd[f"{p}.self_attn.k_norm.weight"] = _zeros(head_dim)
        sd[f"{p}.self_attn.rotary_emb.inv_freq"] = _zeros(head_dim // 2)
        sd[f"{p}.fc1.weight"] = _zeros(ffn, hidden)
        sd[f"{p}.fc1.bias"] = _zeros(ffn)
        sd[f"{p}.fc2.weight"] = _zeros(hidden, ffn)
        sd[f"{p}.fc2.bias"] = _zeros(hidden)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            sd[f"{p}.{norm}.weight"] = _zeros(hidden)
            sd[f"{p}.{norm}.bias"] = _zeros(hidden)
    sd["final_layer_norm.weight"] = _zeros(hidden)
    sd["final_layer_norm.bias"] = _zeros(hidden)
    sd["lm_head.weight"] = _zeros(vocab, hidden)
    return sd


def build_many(layers: int = 50_000) -> StateDict:
    """100,000 tiny tensors: ``layers.{i}.weight`` (4, 4) and ``layers.{i}.bias`` (16,)."""
    sd: StateDict = {}
    for i in range(layers):
        sd[f"layers.{i}.weight"] = _zeros(4, 4)
        sd[f"layers.{i}.bias"] = _zeros(16)
    return sd


SPECS: dict[str, CheckpointSpec] = {
    spec.name: spec
    for spec in (
        CheckpointSpec("yolov7", 1, "~150 MB, ~560 YOLOv7-like conv/BN tensors", build_yolov7),
        CheckpointSpec("big", 1, "~1.5 GB, ~230 tensors, large matrices", build_big),
        CheckpointSpec("many", 1, "100,000 tiny tensors", build_many),
    )
}


# --------------------------------------------------------------------------- cache


def _paths(work_dir: Path, name: str) -> tuple[dict[str, Path], Path]:
    files = {fmt: work_dir / f"{name}.{fmt}" for fmt in FORMATS}
    return files, work_dir / f"{name}.manifest.json"


def _load_cached(spec: CheckpointSpec, work_dir: Path) -> BuiltCheckpoint | None:
    files, manifest_path = _paths(work_dir, spec.name)
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest["version"] != spec.version:
            return None
        for fmt, path in files.items():
            if path.stat().st_size != manifest["bytes"][fmt]:
                return None
        return BuiltCheckpoint(spec.name, int(manifest["tensors"]), files)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_formats(state_dict: StateDict, files: dict[str, Path]) -> None:
    """Write every format to a temporary name, then rename into place."""
    import safetensors.torch
    import torch

    writers: dict[str, Callable[[StateDict, Path], None]] = {
        "pth": lambda sd, path: torch.save(sd, path),
        "safetensors": lambda sd, path: safetensors.torch.save_file(sd, str(path)),
    }
    for fmt, path in files.items():
        tmp = path.with_name(path.name + ".tmp")
        writers[fmt](state_dict, tmp)
        os.replace(tmp, path)


def build_checkpoint(spec: CheckpointSpec, work_dir: Path) -> BuiltCheckpoint:
    work_dir.mkdir(parents=True, exist_ok=True)
    files, manifest_path = _paths(work_dir, spec.name)
    manifest_path.unlink(missing_ok=True)
    state_dict = spec.build()
    _write_formats(state_dict, files)
    manifest = {
        "version": spec.version,
        "tensors": len(state_dict),
        "bytes": {fmt: path.stat().st_size for fmt, path in files.items()},
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return BuiltCheckpoint(spec.name, len(state_dict), files)


def ensure_checkpoint(spec: CheckpointSpec, work_dir: Path) -> BuiltCheckpoint:
    """Return the cached checkpoint, building it first if missing or stale."""
    cached = _load_cached(spec, work_dir)
    if cached is not None:
        return cached
    print(f"building {spec.name} ({spec.description}) in {work_dir} ...",
          file=sys.stderr, flush=True)
    start = time.perf_counter()
    built = build_checkpoint(spec, work_dir)
    print(f"built {spec.name} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return built
