"""Tensor specs: name, shape and dtype, the only facts planning and inspecting need.

Dtypes are plain strings named as torch names them without the ``torch.`` prefix (``float32``,
``bfloat16``), so nothing here imports torch or numpy.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, NamedTuple

ELEMENT_SIZE: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "complex128": 16, "complex64": 8, "complex32": 4,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1,
    "uint16": 2, "uint32": 4, "uint64": 8, "bool": 1,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
    "qint8": 1, "quint8": 1, "qint32": 4,
}

FLOATING = frozenset({"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
                      "float8_e4m3fnuz", "float8_e5m2fnuz"})

# Legacy typed-storage classes named in torch pickles (``torch.HalfStorage``) -> dtype.
STORAGE_DTYPE: dict[str, str] = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128", "ComplexFloatStorage": "complex64",
    "QInt8Storage": "qint8", "QUInt8Storage": "quint8", "QInt32Storage": "qint32",
    "UntypedStorage": "uint8",
    "Float8_e4m3fnStorage": "float8_e4m3fn", "Float8_e5m2Storage": "float8_e5m2",
    "UInt16Storage": "uint16", "UInt32Storage": "uint32", "UInt64Storage": "uint64",
}

# safetensors header dtype codes -> dtype.
SAFETENSORS_DTYPE: dict[str, str] = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "C64": "complex64",
}
SAFETENSORS_CODE: dict[str, str] = {v: k for k, v in SAFETENSORS_DTYPE.items()}

DTYPE_ALIASES: dict[str, str] = {
    "fp32": "float32", "float": "float32", "float32": "float32", "f32": "float32",
    "fp16": "float16", "half": "float16", "float16": "float16", "f16": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp64": "float64", "double": "float64", "float64": "float64",
}


class TensorSpec(NamedTuple):
    """What is known of a tensor without its data. (A NamedTuple: cheap by the hundred thousand.)"""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * ELEMENT_SIZE.get(self.dtype, 0)

    @property
    def is_degenerate(self) -> bool:
        """A dimension of size 0, e.g. ``Linear(3, 0)`` from an SE block built on 3 channels."""
        return 0 in self.shape

    def with_name(self, name: str) -> "TensorSpec":
        return TensorSpec(name, self.shape, self.dtype)


def dtype_name(dtype: Any) -> str:
    """``torch.float16`` / ``numpy.dtype('float16')`` / ``'float16'`` -> ``'float16'``."""
    text = str(dtype)
    text = text.removeprefix("torch.")
    return {"bool_": "bool", "float": "float32", "double": "float64", "half": "float16"}.get(text, text)


def normalize_dtype(text: str) -> str:
    """Accept user spellings (``fp16``, ``bf16``, ``float32``) and return the canonical name."""
    key = text.strip().lower()
    if key not in DTYPE_ALIASES:
        raise ValueError(f"unknown dtype {text!r}; use one of fp32, fp16, bf16, fp64")
    return DTYPE_ALIASES[key]


def spec_of(name: str, value: Any) -> TensorSpec:
    """The spec of a torch tensor, numpy array, or anything with ``shape`` and ``dtype``."""
    return TensorSpec(name, tuple(int(d) for d in value.shape), dtype_name(value.dtype))


def specs_of(tensors: Mapping[str, Any]) -> dict[str, TensorSpec]:
    """Specs of a state dict, in its order."""
    return {name: spec_of(name, value) for name, value in tensors.items()}


def total_numel(specs: Iterable[TensorSpec]) -> int:
    return sum(spec.numel for spec in specs)


def format_shape(shape: tuple[int, ...]) -> str:
    """``(64,)``, ``(32, 3, 3, 3)``, ``()``: as Python prints a tuple."""
    return str(tuple(int(d) for d in shape))
