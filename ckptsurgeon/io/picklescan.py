"""A walk over a pickle's opcodes before the C unpickler runs it, for what the unpickler cannot bound itself.

CPython's unpickler sizes its memo by the largest index a PUT / LONG_BINPUT names: six bytes asking for index
1,260,917,361 make it allocate and zero some 20 GB. A pickler numbers its memo from 0 upwards, one index per
object stored, and storing takes at least two bytes, so an index is never larger than its own offset in the
pickle; :func:`check_pickle` refuses any that is (the memo then costs at most 16 bytes per byte of pickle), and
any argument that runs past the end of the data. Runs of fixed-size opcodes are skipped by a regular
expression, so the 10 MB pickle of 100k tensors is walked in about 0.25 s.
"""

from __future__ import annotations

import pickletools
import re
from typing import Any

from ..errors import CheckpointFormatError

_STOP, _LONG_BINPUT, _PUT = 0x2E, 0x72, 0x70
_LENGTH_WIDTH = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4,
                 pickletools.TAKEN_FROM_ARGUMENT4U: 4, pickletools.TAKEN_FROM_ARGUMENT8U: 8}


def _tables() -> tuple[re.Pattern[bytes], dict[int, str | int]]:
    """A pattern for runs of fixed-size opcodes that need no look (not STOP, not LONG_BINPUT), and for every
    other opcode how its argument ends: "line", "two lines", or the width of its length prefix."""
    fixed: dict[int, list[int]] = {}
    other: dict[int, str | int] = {}
    for op in pickletools.opcodes:
        code, arg = ord(op.code), op.arg
        if arg is not None and arg.name == "stringnl_noescape_pair":
            other[code] = "two lines"
        elif arg is not None and arg.n == pickletools.UP_TO_NEWLINE:
            other[code] = "line"
        elif arg is not None and arg.n < 0:
            other[code] = _LENGTH_WIDTH[arg.n]
        elif code in (_STOP, _LONG_BINPUT):
            other[code] = 0 if arg is None else arg.n
        else:
            fixed.setdefault(0 if arg is None else arg.n, []).append(code)
    alternatives = [b"[" + b"".join(re.escape(bytes([c])) for c in codes) + b"]" + b"." * size
                    for size, codes in sorted(fixed.items())]
    # LONG_BINPUT below index 2**20 needs no look (a memo of at most 16 MB); short strings are skipped too.
    alternatives.append(re.escape(bytes([_LONG_BINPUT])) + b"..[\x00-\x0f]\x00")
    return re.compile(b"(?:" + b"|".join(alternatives) + b")*+", re.S), other


_RUN, _OTHER = _tables()


def check_pickle(data: Any, start: int, path: str, *, end: int | None = None) -> int:
    """Walk the pickle at ``data[start:end]`` (bytes or an mmap) to its STOP; returns the offset after it.

    Raises CheckpointFormatError for an unknown opcode, an argument past the end, or a memo index larger than
    its own offset.
    """
    end = len(data) if end is None else min(end, len(data))
    at, skip, number = start, _RUN.match, int.from_bytes
    while at < end:   # a length past the end (however large) ends the walk: refused below
        run = skip(data, at, end)
        assert run is not None   # a starred pattern matches, if only the empty run
        at = run.end()
        if at >= end:
            break
        code = data[at]
        how = _OTHER.get(code)
        at += 1
        if how is None:
            raise _refuse(path, f"unknown opcode 0x{code:02x} at offset {at - 1}")
        if code == _STOP:
            return at
        if code == _LONG_BINPUT:
            _check_memo(number(data[at:at + 4], "little"), at - start, path)
            at += 4
        elif isinstance(how, str):   # "line" or "two lines"
            newline = data.find(b"\n", at)
            if how == "two lines" and newline >= 0:
                newline = data.find(b"\n", newline + 1)
            if newline < 0:
                break
            if code == _PUT:
                _check_memo(_decimal(data[at:newline]), at - start, path)
            at = newline + 1
        else:
            at += how + number(data[at:at + how], "little")   # a negative length reads as huge: past the end
    raise _refuse(path, f"the pickle starting at offset {start} runs past the end of its data")


def _check_memo(index: int, offset: int, path: str) -> None:
    if not 0 <= index <= offset:
        raise _refuse(path, f"memo index {index} at offset {offset} is larger than anything a pickler stores there")


def _decimal(raw: Any) -> int:
    try:
        return int(bytes(raw))
    except ValueError:
        return -1   # not a number: refused


def _refuse(path: str, what: str) -> CheckpointFormatError:
    return CheckpointFormatError(f"{path}: cannot parse the pickle ({what}); the file is damaged or hostile")
