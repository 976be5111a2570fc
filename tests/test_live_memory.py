"""Transfer into a live model holds one new tensor at a time, however many are cast or resized."""

from __future__ import annotations

import weakref
from typing import Any

import pytest
import torch
from torch import nn

import ckptsurgeon as cs
import ckptsurgeon.apply as apply
from standins import TinyResNet


def spy_on_new_tensors(monkeypatch: pytest.MonkeyPatch, source: dict[str, torch.Tensor]) -> list[Any]:
    """Every tensor a step makes (not one the source holds) must be gone before the next step runs."""
    made: list[Any] = []
    real = apply.tensor_for_step

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        assert all(ref() is None for ref in made), "an earlier step's tensor is still alive"
        value = real(*args, **kwargs)
        if not any(value is held for held in source.values()):
            made.append(weakref.ref(value))
        return value
    monkeypatch.setattr(apply, "tensor_for_step", spy)
    return made


def test_an_fp16_checkpoint_into_an_fp32_model_is_cast_tensor_by_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    pretrained = TinyResNet(num_classes=10)
    source = {k: v.half() if v.is_floating_point() else v for k, v in pretrained.state_dict().items()}
    model = TinyResNet(num_classes=12)
    made = spy_on_new_tensors(monkeypatch, source)
    report = cs.transfer(source, model, resize=["fc.*=slice_pad"])
    assert len(made) > 40 and report.counts().resized == 2 and report.counts().cast > 40
    assert model.conv1.weight.dtype == torch.float32
    assert torch.equal(model.conv1.weight, source["conv1.weight"].float())
    assert torch.equal(model.fc.weight[:10], source["fc.weight"].float())


class Custom(nn.Module):
    """A module with its own loading logic: it must get the whole state dict through load_state_dict."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.seen: list[str] = []

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        self.seen.append(prefix)
        super()._load_from_state_dict(state_dict, prefix, *args)


def test_modules_with_their_own_loading_still_get_load_state_dict() -> None:
    torch.manual_seed(0)
    source, model = Custom(), Custom()
    cs.transfer(source.state_dict(), model)
    assert model.seen == [""] and torch.equal(model.lin.weight, source.lin.weight)
