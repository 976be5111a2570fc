"""``FrozenBatchNorm``: a BatchNorm whose affine parameters and running statistics are buffers, in the spirit
of torchvision's and detectron2's ``FrozenBatchNorm2d``, for any of 1d/2d/3d inputs.

Its state dict has the keys of the layer it replaces (``weight``, ``bias``, ``running_mean``, ``running_var``,
``num_batches_tracked``), so checkpoints load both ways with ``strict=True``; its output is the replaced
layer's in eval mode, bit for bit (it calls the same ``F.batch_norm``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

STAT_KEYS = ("running_mean", "running_var")


class FrozenBatchNorm(nn.Module):
    """BatchNorm with fixed statistics and affine transform; nothing in it trains or updates.

    Built with :meth:`from_batchnorm`; :meth:`to_batchnorm` gives back a layer of the original class (for
    unfreezing later). An affine-less layer has no ``weight`` / ``bias`` buffers, as the original had none.
    """

    weight: torch.Tensor | None
    bias: torch.Tensor | None
    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(self, num_features: int, eps: float = 1e-5, *, affine: bool = True, momentum: float | None = 0.1,
                 original_type: type[_BatchNorm] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.affine = affine
        self.momentum = momentum            # kept for to_batchnorm; unused here
        self.original_type = original_type
        self.register_buffer("weight", torch.ones(num_features) if affine else None)
        self.register_buffer("bias", torch.zeros(num_features) if affine else None)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @classmethod
    def from_batchnorm(cls, bn: _BatchNorm) -> FrozenBatchNorm:
        """A frozen copy of ``bn`` (which must track running statistics), same device and dtypes."""
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(f"{type(bn).__name__} without running statistics has nothing to freeze")
        frozen = cls(bn.num_features, bn.eps, affine=bn.affine, momentum=bn.momentum, original_type=type(bn))
        frozen.to(device=bn.running_mean.device, dtype=bn.running_mean.dtype)
        frozen.load_state_dict(_detached(bn.state_dict()))
        return frozen

    def to_batchnorm(self) -> _BatchNorm:
        """A trainable layer of the original class holding these values (new parameters, requires_grad on)."""
        bn = self.original_type(self.num_features, eps=self.eps, momentum=self.momentum, affine=self.affine)
        bn.to(device=self.running_mean.device, dtype=self.running_mean.dtype)
        bn.load_state_dict(_detached(self.state_dict()))
        return bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"FrozenBatchNorm expects (N, C, ...) input, got shape {tuple(x.shape)}")
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, momentum=0.0, eps=self.eps)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        # checkpoints from before BatchNorm counted batches lack the counter: start it at 0, as BatchNorm does
        counter = prefix + "num_batches_tracked"
        if counter not in state_dict:
            state_dict[counter] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}, from={self.original_type.__name__}"


def _detached(state: dict[str, Any]) -> dict[str, Any]:
    return {key: value.detach().clone() for key, value in state.items()}
