"""Writing checkpoints atomically: a temporary file beside the target, fsync, rename.

The output format follows the extension: ``.safetensors``, or anything else (``.pt``, ``.pth``, ``.bin``) as
the torch zip ``torch.save`` writes for a state dict; both are streamed tensor by tensor. An explicit
``format`` also writes folders: ``safetensors-sharded`` (``sharded_writer``) and ``dcp`` (``dcp_writer``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import tempfile
import threading
import uuid
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping

from ..errors import OutputError
from ..specs import TensorSpec, spec_of
from .records import FileSpan
from .safetensors_file import check_key, write_safetensors_stream
from .torchzip_writer import STREAMED_DTYPES, write_torch_zip_stream


OUTPUT_EXTENSIONS = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
TEMP_PREFIX = ".ckptsurgeon-"


def same_path(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """The same file: by name, or by identity (``os.path.samefile``: links, hard links) when both exist."""
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def check_output_path(path: str | os.PathLike[str], *, inputs: Iterable[str | os.PathLike[str]] = (),
                      force: bool = False, formats: tuple[str, ...] = OUTPUT_EXTENSIONS) -> str:
    """Refuse an output that would overwrite an input (by identity), an existing file without ``force``, a
    folder, a missing or read-only folder, or an unknown format; returns the path as str. Runs before any work."""
    path = os.fspath(path)
    if any(same_path(path, source) for source in inputs):
        raise OutputError(f"{path}: the output is also an input; write to another file")
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a folder; give a file name such as {os.path.join(path, 'model.safetensors')}, "
                          f"or write a folder with --format safetensors-sharded or --format dcp")
    if formats and not path.lower().endswith(formats):
        raise OutputError(f"{path}: unknown output format {os.path.splitext(path)[1] or '(no extension)'!r}; "
                          f"name it {' or '.join(formats)}")
    if os.path.lexists(path) and not force:
        raise OutputError(f"{path}: already exists; pass --force (force=True) to replace it")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise OutputError(f"{path}: exists and is not a regular file; choose another name")
    check_parent_folder(path)
    return path


def check_parent_folder(path: str) -> None:
    """The folder an output goes into exists and can be written to."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(f"{path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: the folder {folder} is not writable")


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[BinaryIO]:
    """Yield a file that becomes ``path`` only when the block succeeds (fsynced, then linked or renamed).

    On Linux the file is unnamed (``O_TMPFILE``) until linked into place, so a killed process leaves nothing.
    Elsewhere, or when replacing an existing file, a hidden ``.ckptsurgeon-<pid>-*.tmp`` exists for a moment
    (or for the whole write without ``O_TMPFILE``); SIGTERM/SIGHUP remove it, and stale ones of dead processes
    are removed by the next write to that folder.
    """
    folder = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(folder)
    fd, temp = _open_temporary(path, folder)
    try:
        with _removed_on_signal(temp), os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            _link_into_place(handle.fileno(), temp, path, folder)
    except BaseException as exc:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        if isinstance(exc, OSError):  # disk full, permissions: the user's to fix, not a bug
            raise OutputError(f"{path}: writing failed ({exc}); nothing was written") from exc
        raise


def check_report_paths(reports: Iterable[str | os.PathLike[str] | None], *,
                       inputs: Iterable[str | os.PathLike[str]] = (), out: str | os.PathLike[str] | None = None) -> None:
    """Every report path checked before any work: not an input, OUT or another report, in a writable folder."""
    taken = [os.fspath(p) for p in inputs] + ([os.fspath(out)] if out else [])
    for report in (os.fspath(r) for r in reports if r):
        if any(same_path(report, other) for other in taken):
            raise OutputError(f"{report}: the report would overwrite an input, OUT or another report; "
                              f"choose another name")
        check_output_path(report, force=True, formats=())
        taken.append(report)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """A text file (a report) written whole or not at all, like every other output."""
    with atomic_output(os.fspath(path)) as handle:
        handle.write(text.encode("utf-8", "backslashreplace"))


def _open_temporary(path: str, folder: str) -> tuple[int, str | None]:
    """An unnamed file in ``folder`` (fd, None), or a named hidden one (fd, its path) without O_TMPFILE."""
    mode = _new_file_mode()
    if hasattr(os, "O_TMPFILE"):
        try:
            return os.open(folder, os.O_TMPFILE | os.O_WRONLY, mode), None
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise OutputError(f"{path}: cannot create a file in {folder} ({exc})") from exc
    try:
        fd, temp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create a file in {folder} ({exc})") from exc
    os.fchmod(fd, mode)  # mkstemp makes it owner-only; the output should be an ordinary file
    return fd, temp


def _link_into_place(fd: int, temp: str | None, path: str, folder: str) -> None:
    if temp is not None:
        os.replace(temp, path)
        return
    source = f"/proc/self/fd/{fd}"
    try:
        _link_following(source, path, folder)   # the unnamed file gets its name, atomically
        return
    except FileExistsError:
        pass   # --force: link under a hidden name, then rename over the old file
    named = os.path.join(folder, f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")
    _link_following(source, named, folder)
    try:
        os.replace(named, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(named)
        raise


def _link_following(source: str, target: str, folder: str) -> None:
    # os.link calls linkat(AT_SYMLINK_FOLLOW), needed to link a /proc/self/fd entry, only when given a dir fd.
    folder_fd = os.open(folder, os.O_RDONLY)
    try:
        os.link(source, target, src_dir_fd=folder_fd, follow_symlinks=True)
    finally:
        os.close(folder_fd)


@contextlib.contextmanager
def _removed_on_signal(temp: str | None) -> Iterator[None]:
    """SIGTERM / SIGHUP during the write remove the named temporary, then end the process as the signal would."""
    if temp is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def remove_stale_temporaries(folder: str) -> list[str]:
    """Remove ``.ckptsurgeon-<pid>-*.tmp`` files in ``folder`` left by processes that no longer run."""
    removed: list[str] = []
    try:
        names = [n for n in os.listdir(folder) if n.startswith(TEMP_PREFIX) and n.endswith(".tmp")]
    except OSError:
        return removed
    for name in names:
        pid = name[len(TEMP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not process_running(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))
                removed.append(name)
    return removed


def process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


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


FORMATS = ("safetensors", "pt", "dcp", "safetensors-sharded")
FOLDER_FORMATS = ("dcp", "safetensors-sharded")


def output_format(path: str | os.PathLike[str], format: str | None = None) -> str:
    """The format to write: ``format`` when given, else the one OUT's extension names (``.safetensors``, or
    ``.pt``/``.pth``/``.bin``/``.ckpt`` as a torch zip). A folder needs ``format`` (``dcp``, ``safetensors-sharded``)."""
    path = os.fspath(path)
    if format is not None:
        if format not in FORMATS:
            raise OutputError(f"{path}: unknown output format {format!r}; choose one of {', '.join(FORMATS)}")
        return format
    if is_safetensors_path(path):
        return "safetensors"
    if path.lower().endswith(OUTPUT_EXTENSIONS):
        return "pt"
    if os.path.isdir(path) or not os.path.splitext(path)[1]:
        raise OutputError(f"{path}: a folder output needs a format; pass --format safetensors-sharded or "
                          f"--format dcp (format=...), or name a file such as {path}.safetensors")
    return "pt"   # check_output_path names the unknown extension


def check_output(path: str | os.PathLike[str], *, inputs: Iterable[str | os.PathLike[str]] = (),
                 force: bool = False, format: str | None = None) -> str:
    """:func:`check_output_path` for a file, ``folders.check_output_folder`` for a folder format; runs before
    any work. With an explicit file ``format`` any extension is accepted."""
    if format is None and not os.path.isdir(path) and not os.path.splitext(os.fspath(path))[1]:
        output_format(path)   # refuses a folder name without a format, saying which to pass
    if format is not None and output_format(path, format) in FOLDER_FORMATS:
        from .folders import check_output_folder

        return check_output_folder(path, inputs=inputs, force=force)
    return check_output_path(path, inputs=inputs, force=force, formats=OUTPUT_EXTENSIONS if format is None else ())


def write_state_dict(path: str | os.PathLike[str], tensors: Mapping[str, Any], *,
                     metadata: Mapping[str, str] | None = None, inputs: Iterable[str | os.PathLike[str]] = (),
                     force: bool = False, format: str | None = None,
                     max_shard_size: int | str | None = None) -> str:
    """Write ``tensors`` (name -> torch tensor) to ``path``, atomically; the format follows the extension
    unless ``format`` names one."""
    path = check_output(path, inputs=inputs, force=force, format=format)
    specs = [spec_of(name, tensor) for name, tensor in tensors.items()]
    getters = {name: (lambda t=tensor: t) for name, tensor in tensors.items()}
    return write_streamed(path, specs, getters, metadata=metadata, format=format, max_shard_size=max_shard_size,
                          force=force)


def write_streamed(path: str, specs: list[TensorSpec], produce: Mapping[str, Callable[[], Any]], *,
                   metadata: Mapping[str, str] | None = None,
                   raw: Callable[[str], memoryview | FileSpan | None] | None = None,
                   format: str | None = None, max_shard_size: int | str | None = None, force: bool = True) -> str:
    """Write tensors produced one at a time, so only one needs to be in memory at once.

    ``produce[name]()`` returns a torch tensor of ``specs``' shape and dtype; ``raw(name)``, when given,
    may return the bytes directly, or where they lie in a file (no torch needed), and is tried first.
    ``metadata`` goes into a safetensors header; a torch zip holds the state dict alone. Quantized tensors
    (whose scales only torch knows how to pickle) go to ``torch.save`` whole.

    ``format`` (``safetensors``, ``pt``, ``dcp``, ``safetensors-sharded``; default from the extension) picks
    the output; the folder formats replace an existing folder only with ``force`` (callers check the path
    first, see :func:`check_output`). ``max_shard_size`` (bytes or ``"5GB"``) sizes safetensors shards.
    A progress bar shows on stderr when the CLI asks for one (``progress.showing_progress``).
    """
    from .progress import TensorProgress

    chosen = output_format(path, format)
    for spec in specs:
        check_key(spec.name)
    progress = TensorProgress({spec.name: spec.nbytes for spec in specs}, f"writing {os.path.basename(path)}")

    def tracked(name: str) -> memoryview | FileSpan | None:
        progress.begin(name)
        return raw(name) if raw is not None else None

    try:
        _write_format(chosen, path, specs, produce, metadata, tracked, max_shard_size, force)
    except BaseException:
        progress.close(completed=False)
        raise
    progress.close()
    return path


def _write_format(chosen: str, path: str, specs: list[TensorSpec], produce: Mapping[str, Callable[[], Any]],
                  metadata: Mapping[str, str] | None, raw: Callable[[str], memoryview | FileSpan | None],
                  max_shard_size: int | str | None, force: bool) -> None:
    if chosen == "safetensors-sharded":
        from .sharded_writer import DEFAULT_MAX_SHARD_SIZE, write_sharded_safetensors

        write_sharded_safetensors(path, specs, produce, raw=raw, metadata=metadata, force=force,
                                  max_shard_size=DEFAULT_MAX_SHARD_SIZE if max_shard_size is None else max_shard_size)
        return
    if chosen == "dcp":
        from .dcp_writer import write_dcp_folder

        write_dcp_folder(path, specs, produce, raw=raw, force=force)
        return
    chunks = (_bytes_of(spec.name, produce, raw) for spec in specs)
    with atomic_output(path) as handle:
        if chosen == "safetensors":
            write_safetensors_stream(handle, specs, chunks, dict(metadata or {}))
        elif all(spec.dtype in STREAMED_DTYPES for spec in specs):
            write_torch_zip_stream(handle, specs, chunks)
        else:
            _torch_save({spec.name: _compact(produce[spec.name]()) for spec in specs}, handle, path)


class _WatchedWrites:
    """The output file as torch.save sees it, remembering a failed write: torch reports one (disk full, file too
    large) as an unrelated RuntimeError ("unexpected pos ...") that would read as a bug."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def _torch_save(state: dict[str, Any], handle: BinaryIO, path: str) -> None:
    import torch

    watched = _WatchedWrites(handle)
    try:
        # torch.save documents any object with write and flush; its FileLike hint asks for IO[bytes].
        torch.save(state, watched)  # type: ignore[arg-type]
    except RuntimeError as exc:
        if watched.error is None:
            raise
        raise OutputError(f"{path}: writing failed ({watched.error}); nothing was written") from exc
    if watched.error is not None:
        raise OutputError(f"{path}: writing failed ({watched.error}); nothing was written") from watched.error


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
