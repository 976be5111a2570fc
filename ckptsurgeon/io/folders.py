"""Folder outputs written atomically: a hidden sibling folder is filled, fsynced, then renamed into place.

A folder cannot be created unnamed like a file (``O_TMPFILE``), so the writer works in a temporary sibling,
``.<name>.ckptsurgeon-tmp-<pid>-<hex>``. Replacing an existing folder (``force``) swaps the two in one step
with ``renameat2(RENAME_EXCHANGE)`` where the kernel offers it; elsewhere the old folder is first renamed
aside (``.<name>.ckptsurgeon-old-<pid>-<hex>``) and the new one renamed in. Either way the old folder is
deleted last, so a kill at any moment leaves the old or the new folder complete. Siblings of ours whose
process no longer runs are cleaned by the next write into that parent: a temporary is deleted; an aside
folder is renamed back when the output is missing (the kill came between the two renames), else deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import shutil
import uuid
from typing import Callable, Iterable, Iterator

from ..errors import OutputError
from .writer import check_parent_folder, process_running, same_path

_MARK = ".ckptsurgeon-"
_SIBLING = re.compile(r"^\.(?P<name>.+)\.ckptsurgeon-(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{12}$")
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def check_output_folder(path: str | os.PathLike[str], *, inputs: Iterable[str | os.PathLike[str]] = (),
                        force: bool = False) -> str:
    """Refuse a folder output that is an input, lies inside an input folder or holds an input, exists as a
    file, exists non-empty without ``force``, or whose parent is missing or read-only; returns it as str.

    Runs before any work, like ``check_output_path`` for files.
    """
    path = os.fspath(path)
    if not os.path.basename(os.path.normpath(os.path.abspath(path))) or os.path.abspath(path) == os.sep:
        raise OutputError(f"{path}: cannot write a checkpoint folder here; name a new folder")
    real = os.path.realpath(path)
    for source in (os.fspath(s) for s in inputs):
        source_real = os.path.realpath(source)
        if same_path(path, source):
            raise OutputError(f"{path}: the output is also an input ({source}); write to another folder")
        if _inside(real, source_real):
            raise OutputError(f"{path}: the output would be inside the input folder {source}; "
                              f"write to a folder outside it")
        if _inside(source_real, real):
            raise OutputError(f"{path}: the output folder holds the input {source} and would replace it; "
                              f"write to another folder")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputError(f"{path}: exists and is not a folder; choose another name")
    if os.path.islink(path):
        raise OutputError(f"{path}: is a symbolic link; name the folder itself or choose another name")
    if os.path.isdir(path) and not force and _non_empty(path):
        raise OutputError(f"{path}: already exists and is not empty; pass --force (force=True) to replace it")
    check_parent_folder(path)
    return path


@contextlib.contextmanager
def atomic_folder(path: str, *, force: bool) -> Iterator[str]:
    """Yield an empty temporary sibling folder that becomes ``path`` only when the block succeeds.

    Every file in it (not in sub-folders) and the folder itself are fsynced before the rename. An existing
    non-empty ``path`` is replaced only with ``force`` (an empty one always). If the block raises, the
    temporary is deleted and ``path`` is left as it was. Raises ``OutputError`` for refused outputs and
    failed writes (disk full, permissions).
    """
    path = os.path.abspath(check_output_folder(path, force=force))
    parent, name = os.path.split(path)
    remove_stale_folders(parent)
    temp = _sibling(parent, name, "tmp")
    try:
        os.mkdir(temp)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create a folder in {parent} ({exc})") from exc
    try:
        yield temp
        _fsync_folder(temp, files=True)
        _move_into_place(temp, path, parent, name)
    except BaseException as exc:
        shutil.rmtree(temp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{path}: writing failed ({exc}); nothing was written") from exc
        raise


def remove_stale_folders(parent: str) -> list[str]:
    """Clean siblings of ours in ``parent`` left by processes that no longer run; returns their names.

    A temporary is deleted. An aside copy of an old folder is renamed back when its folder is missing (the
    writer died between moving the old folder aside and the new one in), and deleted otherwise.
    """
    removed: list[str] = []
    try:
        names = [n for n in os.listdir(parent) if _MARK in n]
    except OSError:
        return removed
    for entry in names:
        found = _SIBLING.match(entry)
        if found is None or process_running(int(found["pid"])):
            continue
        full = os.path.join(parent, entry)
        if not os.path.isdir(full) or os.path.islink(full):
            continue
        original = os.path.join(parent, found["name"])
        if found["kind"] == "old" and not os.path.lexists(original):
            with contextlib.suppress(OSError):
                os.rename(full, original)
                removed.append(entry)
            continue
        shutil.rmtree(full, ignore_errors=True)
        if not os.path.lexists(full):
            removed.append(entry)
    return removed


def _move_into_place(temp: str, path: str, parent: str, name: str) -> None:
    """``temp`` becomes ``path``; an old ``path`` is swapped out (or moved aside first), then deleted."""
    if not os.path.lexists(path):
        try:
            os.rename(temp, path)   # fails rather than replace a folder someone created meanwhile, if non-empty
            _fsync_folder(parent)
            return
        except OSError:
            if not os.path.isdir(path):
                raise
    exchange = _exchanger()
    if exchange is not None and exchange(temp, path):
        old = temp   # the temporary name now holds the old folder
    else:
        old = _sibling(parent, name, "old")
        os.rename(path, old)
        try:
            os.rename(temp, path)
        except BaseException:
            os.rename(old, path)   # the old folder back where it was
            raise
    _fsync_folder(parent)
    shutil.rmtree(old, ignore_errors=True)


def _exchanger() -> Callable[[str, str], bool] | None:
    """``renameat2(..., RENAME_EXCHANGE)`` from the C library, or None where it does not exist."""
    if not hasattr(os, "O_TMPFILE"):   # Linux only; elsewhere the two-rename path
        return None
    library = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(library, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int

    def exchange(a: str, b: str) -> bool:
        # False when the file system refuses (EINVAL, ENOSYS): the caller falls back to two renames.
        return int(function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)) == 0

    return exchange


def _sibling(parent: str, name: str, kind: str) -> str:
    return os.path.join(parent, f".{name}{_MARK}{kind}-{os.getpid()}-{uuid.uuid4().hex[:12]}")


def _fsync_folder(folder: str, *, files: bool = False) -> None:
    """fsync the folder entry (and with ``files`` each regular file in it) so a crash keeps what was renamed."""
    if files:
        for entry in os.scandir(folder):
            if entry.is_file(follow_symlinks=False):
                fd = os.open(entry.path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass   # some file systems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def _inside(inner: str, outer: str) -> bool:
    """``inner`` lies in the folder ``outer`` (both resolved, neither equal)."""
    try:
        return inner != outer and os.path.commonpath([inner, outer]) == outer
    except ValueError:
        return False


def _non_empty(folder: str) -> bool:
    with os.scandir(folder) as entries:
        return next(entries, None) is not None
