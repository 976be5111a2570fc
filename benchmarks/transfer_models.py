"""Deterministic Conv+BN models for the transfer benchmark, built from a size name.

    from transfer_models import build_model, inserted_at
    model = build_model("yolov7")                  # the "pretrained" architecture
    model = build_model("yolov7", inserted=True)   # the same with ONE small module inserted

Both are a top-level ``nn.Sequential`` called ``model`` (keys ``model.<i>.conv.weight``,
``model.<i>.bn.running_var``, ...), so inserting a module shifts every later index by one.
The inserted module is a small squeeze-excitation block (two 1x1 convs with biases), whose
tensors look like nothing else in the model, so a correct transfer pairs every source
tensor with one target tensor and leaves only the inserted block new.

Sizes:

- ``yolov7``: the YOLOv7 layout (~37M parameters, 566 tensors): Conv(c_out, c_in, k, k)
  without bias + BatchNorm (weight, bias, running_mean, running_var, num_batches_tracked),
  32..1024 channels, ELAN/MP blocks whose concat/max-pool layers own no tensors, SPPCSPC,
  RepConv and an IDetect head.
- ``big``: ~1.5 GB of Conv+BN blocks (~240 tensors); the largest convs are 1536x1536x3x3
  (81 MiB) and 4096x4096x1x1 (64 MiB).

Weights are PyTorch's default initialisation under ``torch.manual_seed(SEED)``: the same
name gives the same model in every process.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

SEED = 0
SIZES = ("yolov7", "big")


class ConvBN(nn.Module):
    """YOLO's ``Conv``: conv (no bias) + BatchNorm + SiLU."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU()


class Concat(nn.Module):
    """Tensor-free layer (YOLO's concat): takes an index in the sequence, owns nothing."""


class SPPCSPC(nn.Module):
    def __init__(self, c_in: int, c: int) -> None:
        super().__init__()
        shapes = [(c_in, c, 1), (c_in, c, 1), (c, c, 3), (c, c, 1), (4 * c, c, 1), (c, c, 3), (2 * c, c, 1)]
        for n, (a, b, k) in enumerate(shapes, start=1):
            setattr(self, f"cv{n}", ConvBN(a, b, k))
        self.m = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in (5, 9, 13))


def _conv_bn_seq(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, 1, k // 2, bias=False), nn.BatchNorm2d(c_out))


class RepConv(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.rbr_dense = _conv_bn_seq(c_in, c_out, 3)
        self.rbr_1x1 = _conv_bn_seq(c_in, c_out, 1)
        self.act = nn.SiLU()


class Implicit(nn.Module):
    def __init__(self, channels: int, mean: float) -> None:
        super().__init__()
        self.implicit = nn.Parameter(torch.full((1, channels, 1, 1), mean))


class IDetect(nn.Module):
    def __init__(self, channels: tuple[int, ...] = (256, 512, 1024), outputs: int = 255) -> None:
        super().__init__()
        self.register_buffer("anchors", torch.zeros(3, 3, 2))
        self.register_buffer("anchor_grid", torch.zeros(3, 1, 3, 1, 1, 2))
        self.m = nn.ModuleList(nn.Conv2d(c, outputs, 1) for c in channels)
        self.ia = nn.ModuleList(Implicit(c, 0.0) for c in channels)
        self.im = nn.ModuleList(Implicit(outputs, 1.0) for _ in channels)


class SqueezeExcite(nn.Module):
    """The inserted module: small, and shaped like nothing else in the models."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)


class Detector(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.model = nn.Sequential(*layers)


# --------------------------------------------------------------------------- layouts


def _elan(layers: list[nn.Module], c_in: int, c_mid: int, c_branch: int, c_out: int, branches: int) -> int:
    layers += [ConvBN(c_in, c_mid, 1), ConvBN(c_in, c_mid, 1)]
    c_prev = c_mid
    for _ in range(4):
        layers.append(ConvBN(c_prev, c_branch, 3))
        c_prev = c_branch
    layers += [Concat(), ConvBN(2 * c_mid + branches * c_branch, c_out, 1)]
    return c_out


def _mp_down(layers: list[nn.Module], c_in: int, c: int) -> int:
    layers += [nn.MaxPool2d(2, 2), ConvBN(c_in, c, 1), ConvBN(c_in, c, 1), ConvBN(c, c, 3, 2), Concat()]
    return 2 * c


def yolov7_layers() -> tuple[list[nn.Module], int, int]:
    """The YOLOv7 layer list (indices as in the official model.yaml), where to insert, and the
    channels there."""
    L: list[nn.Module] = [ConvBN(3, 32, 3), ConvBN(32, 64, 3, 2), ConvBN(64, 64, 3), ConvBN(64, 128, 3, 2)]
    c = _elan(L, 128, 64, 64, 256, 2)             # 4..11
    c = _mp_down(L, c, 128)                        # 12..16
    c = _elan(L, c, 128, 128, 512, 2)              # 17..24
    c = _mp_down(L, c, 256)                        # 25..29
    c = _elan(L, c, 256, 256, 1024, 2)             # 30..37
    c = _mp_down(L, c, 512)                        # 38..42
    _elan(L, c, 256, 256, 1024, 2)                 # 43..50
    L.append(SPPCSPC(1024, 512))                   # 51
    insert_at, channels = len(L), 512              # the SE block goes right after the SPPCSPC
    L += [ConvBN(512, 256, 1), nn.Upsample(None, 2), ConvBN(1024, 256, 1), Concat()]  # 52..55
    _elan(L, 512, 256, 128, 256, 4)                # 56..63
    L += [ConvBN(256, 128, 1), nn.Upsample(None, 2), ConvBN(512, 128, 1), Concat()]  # 64..67
    _elan(L, 256, 128, 64, 128, 4)                 # 68..75
    c = _mp_down(L, 128, 128)                      # 76..80
    _elan(L, c + 256, 256, 128, 256, 4)            # 81..88
    c = _mp_down(L, 256, 256)                      # 89..93
    _elan(L, c + 512, 512, 256, 512, 4)            # 94..101
    L += [RepConv(128, 256), RepConv(256, 512), RepConv(512, 1024), IDetect()]  # 102..105
    return L, insert_at, channels


def big_layers() -> tuple[list[nn.Module], int, int]:
    """~1.5 GB of Conv+BN blocks in five stages; the SE block goes between stages 3 and 4."""
    L: list[nn.Module] = [ConvBN(3, 64, 3, 2), ConvBN(64, 128, 3, 2), ConvBN(128, 256, 3, 2)]
    L += [ConvBN(256, 512, 3, 2)] + [ConvBN(512, 512, 3) for _ in range(6)]
    L += [ConvBN(512, 1024, 3, 2)] + [ConvBN(1024, 1024, 3) for _ in range(8)]
    L += [ConvBN(1024, 1536, 3, 2)] + [ConvBN(1536, 1536, 3) for _ in range(6)]
    insert_at, channels = len(L), 1536
    L += [ConvBN(1536, 4096, 1)] + [ConvBN(4096, 4096, 1) for _ in range(7)] + [ConvBN(4096, 1536, 1)]
    L += [ConvBN(1536, 1024, 1), ConvBN(1024, 512, 1), ConvBN(512, 256, 1)]
    return L, insert_at, channels


_LAYOUTS = {"yolov7": yolov7_layers, "big": big_layers}


def build_model(size: str, *, inserted: bool = False) -> nn.Module:
    """The model for ``size``; with ``inserted`` ONE SqueezeExcite block is inserted mid-way into
    the top-level Sequential, so every later index shifts by one."""
    if size not in _LAYOUTS:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    torch.manual_seed(SEED)
    layers, insert_at, channels = _LAYOUTS[size]()
    if inserted:
        layers.insert(insert_at, SqueezeExcite(channels))
    return Detector(layers)


@functools.lru_cache(maxsize=None)
def inserted_index(size: str) -> int:
    """Index of the inserted module in ``model`` (and of the first shifted source layer)."""
    with torch.device("meta"):
        return _LAYOUTS[size]()[1]


def expected_source(size: str, target_key: str) -> str | None:
    """The source key a correct transfer puts into ``target_key`` of the inserted model (None: new)."""
    at = inserted_index(size)
    head, index, rest = target_key.split(".", 2)
    i = int(index)
    if i == at:
        return None
    return f"{head}.{i - 1 if i > at else i}.{rest}"


def state_dict_of(size: str, *, inserted: bool = False) -> dict[str, Any]:
    """The model's state dict (for saving)."""
    return dict(build_model(size, inserted=inserted).state_dict())


if __name__ == "__main__":
    for name in SIZES:
        sd = build_model(name).state_dict()
        nbytes = sum(t.numel() * t.element_size() for t in sd.values())
        largest = max(sd.items(), key=lambda kv: kv[1].numel() * kv[1].element_size())
        params = sum(t.numel() for k, t in sd.items() if not k.endswith(("running_mean", "running_var",
                                                                          "num_batches_tracked")))
        print(f"{name}: {len(sd)} tensors, {params / 1e6:.1f}M params, {nbytes / 2**20:.0f} MiB, "
              f"largest {largest[0]} {tuple(largest[1].shape)} {largest[1].numel() * 4 / 2**20:.0f} MiB, "
              f"insert at model.{inserted_index(name)}")
