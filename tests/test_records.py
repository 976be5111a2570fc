"""File-to-file byte copies: the kernel path and the fallback give the same bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ckptsurgeon.io.records import FileSpan, copy_span


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_copy_span_appends_exactly_the_span(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel_copy: bool) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 64)
    if not kernel_copy:
        def refuse(*args: object) -> int:
            raise OSError("copy_file_range not supported here")
        monkeypatch.setattr(os, "copy_file_range", refuse)
    out = tmp_path / "out.bin"
    with open(out, "wb") as handle:
        handle.write(b"head")
        copy_span(FileSpan(str(source), 100, 5000), handle)
        handle.write(b"tail")
    assert out.read_bytes() == b"head" + source.read_bytes()[100:5100] + b"tail"


def test_copy_span_of_a_truncated_source_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "short.bin"
    source.write_bytes(b"x" * 10)
    with open(tmp_path / "out.bin", "wb") as handle, pytest.raises(OSError, match="ended 15 bytes early"):
        copy_span(FileSpan(str(source), 5, 20), handle)
