"""Writing checkpoints atomically: a temporary file beside the target, fsync, rename.

The output format follows the extension: ``.safetensors`` is streamed tensor by tensor; anything else
(``.pt``, ``.pth``, ``.bin``) is written with ``torch.save`` as a plain state dict.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping

from ..errors import OutputError
from ..specs import TensorSpec, spec_of
from .records import FileSpan
from .safetensors_file import write_safetensors_stream


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """The same file: by name, or through a link when both exist."""
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def check_output_path(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (), force: bool = False) -> str:
    """Refuse to overwrite an input, or an existing file without ``force``; returns the path as str."""
    path = os.fspath(path)
    if any(same_path(path, source) for source in inputs):
        raise OutputError(f"{path}: the output is also an input; write to another file")
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a folder; give a file name such as {os.path.join(path, 'model.safetensors')}")
    if os.path.exists(path) and not force:
        raise OutputError(f"{path}: already exists; pass --force (force=True) to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(f"{path}: the folder {folder} does not exist")
    return path


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[BinaryIO]:
    """Yield a temporary file in the target's folder; on success fsync it and rename it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, temp = tempfile.mkstemp(prefix=".ckptsurgeon-", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create a file in {folder} ({exc})") from exc
    try:
        os.fchmod(fd, _new_file_mode())  # mkstemp makes it owner-only; the output should be an ordinary file
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        if isinstance(exc, OSError):  # disk full, permissions: the user's to fix, not a bug
            raise OutputError(f"{path}: writing failed ({exc}); nothing was written") from exc
        raise


def _new_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def is_safetensors_path(path: str) -> bool:
    return os.fspath(path).endswith(".safetensors")


def tensor_bytes(tensor: Any) -> memoryview:
    """A tensor's bytes in C order, without copying when it is already contiguous."""
    import torch

    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def write_state_dict(path: str | os.PathLike, tensors: Mapping[str, Any], *, metadata: Mapping[str, str] | None = None,
                     inputs: Iterable[str | os.PathLike] = (), force: bool = False) -> str:
    """Write ``tensors`` (name -> torch tensor) to ``path``, atomically; the format follows the extension."""
    path = check_output_path(path, inputs=inputs, force=force)
    specs = [spec_of(name, tensor) for name, tensor in tensors.items()]
    getters = {name: (lambda t=tensor: t) for name, tensor in tensors.items()}
    return write_streamed(path, specs, getters, metadata=metadata)


def write_streamed(path: str, specs: list[TensorSpec], produce: Mapping[str, Callable[[], Any]], *,
                   metadata: Mapping[str, str] | None = None,
                   raw: Callable[[str], memoryview | FileSpan | None] | None = None) -> str:
    """Write tensors produced one at a time, so only one needs to be in memory at once (safetensors).

    ``produce[name]()`` returns a torch tensor of ``specs``' shape and dtype; ``raw(name)``, when given,
    may return the bytes directly, or where they lie in a file (no torch needed), and is tried first.
    """
    with atomic_output(path) as handle:
        if is_safetensors_path(path):
            chunks = (_bytes_of(spec.name, produce, raw) for spec in specs)
            write_safetensors_stream(handle, specs, chunks, dict(metadata or {}))
        else:
            import torch

            torch.save({spec.name: _compact(produce[spec.name]()) for spec in specs}, handle)
    return path


def _compact(tensor: Any) -> Any:
    """The tensor on a storage of its own size: torch.save writes whole storages, and a tensor read from a
    file may view a record shared with many others (a flat parameter buffer)."""
    if tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size():
        return tensor.contiguous().clone() if tensor.is_contiguous() else tensor.contiguous()
    return tensor


def _bytes_of(name: str, produce: Mapping[str, Callable[[], Any]],
              raw: Callable[[str], memoryview | FileSpan | None] | None) -> memoryview | FileSpan:
    data = raw(name) if raw is not None else None
    return data if data is not None else tensor_bytes(produce[name]())
