"""The progress bar: on a terminal, after about a second of work, never with --json / --quiet or in a pipe."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import save_file

from ckptsurgeon.cli import _register, cli
from ckptsurgeon.io import progress
from ckptsurgeon.io.progress import ByteProgress, showing_progress
from ckptsurgeon.io.writer import write_state_dict

_register()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeClock:
    """Each reading is ``step`` seconds after the last."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture()
def terminal(monkeypatch: pytest.MonkeyPatch) -> FakeTerminal:
    stream = FakeTerminal()
    monkeypatch.setattr(progress, "_stderr", lambda: stream)
    monkeypatch.setattr(progress, "_clock", FakeClock(0.5))
    return stream


def state() -> dict[str, torch.Tensor]:
    return {f"layer.{i}.weight": torch.full((256, 256), float(i)) for i in range(6)}


def test_a_bar_appears_only_after_a_second_on_a_terminal() -> None:
    stream = FakeTerminal()
    clock = FakeClock(0.4)
    with showing_progress():
        with ByteProgress(3 * 2**20, "writing out", stream=stream, clock=clock) as bar:
            bar.update(2**20)
            bar.update(2**20)
            assert stream.getvalue() == ""   # 0.4 s, then 0.8 s in: nothing yet
            bar.update(2**20)   # 1.2 s: the bar starts with what is done
    text = stream.getvalue()
    assert "writing out" in text and "100%" in text
    assert "3.0 MiB/3.0 MiB" in text and "MiB/s" in text


def test_no_bar_unless_asked_or_on_a_terminal() -> None:
    for asked, stream in ((False, FakeTerminal()), (True, io.StringIO())):
        with showing_progress(asked):
            with ByteProgress(100, "writing", stream=stream, clock=FakeClock(5.0)) as bar:
                bar.update(50)
                bar.update(50)
        assert stream.getvalue() == ""


def test_the_writer_counts_each_tensor_as_it_is_written(tmp_path: Path, terminal: FakeTerminal) -> None:
    with showing_progress():
        write_state_dict(tmp_path / "out.safetensors", state())
    text = terminal.getvalue()
    assert "writing out.safetensors" in text and "1.5 MiB/1.5 MiB" in text
    write_state_dict(tmp_path / "quiet.safetensors", state())   # the library alone shows nothing
    assert "quiet" not in terminal.getvalue()


def test_a_failed_write_does_not_count_its_last_tensor(terminal: FakeTerminal) -> None:
    from ckptsurgeon.io.progress import TensorProgress

    with showing_progress():
        tracker = TensorProgress({"a": 2**20, "b": 2**20, "c": 2**20}, "writing x")
        for name in ("a", "b", "c"):
            tracker.begin(name)
        tracker.close(completed=False)
    assert tracker.bar.done == 2 * 2**20
    assert "2.0 MiB/3.0 MiB" in terminal.getvalue()


def test_the_cli_shows_a_bar_on_a_terminal_but_not_with_json_or_quiet(tmp_path: Path,
                                                                     terminal: FakeTerminal) -> None:
    source = tmp_path / "in.safetensors"
    save_file(state(), str(source))
    assert run("cast", source, tmp_path / "a.safetensors", "--dtype", "fp16").exit_code == 0
    assert "writing a.safetensors" in terminal.getvalue()
    for extra in ("--json", "--quiet"):
        result = run("cast", source, tmp_path / f"b{extra}.safetensors", "--dtype", "fp16", extra)
        assert result.exit_code == 0, result.output
        assert f"b{extra}" not in terminal.getvalue()
    assert run("convert", source, tmp_path / "c.pt", "--quiet").exit_code == 0
    assert "c.pt" not in terminal.getvalue()


def test_no_progress_output_when_stderr_is_not_a_terminal(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "_clock", FakeClock(5.0))
    source = tmp_path / "in.safetensors"
    save_file(state(), str(source))
    for args in (["cast", source, tmp_path / "a.safetensors", "--dtype", "fp16"],
                 ["convert", source, tmp_path / "b.pt"],
                 ["transfer", source, "--target", source, "-o", tmp_path / "c.safetensors"]):
        result = run(*args)
        assert result.exit_code == 0, result.output
        assert result.stderr == ""


def run(*args: object) -> Result:
    return CliRunner().invoke(cli, [*map(str, args)])
