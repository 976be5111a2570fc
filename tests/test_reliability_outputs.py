"""Nothing lost, nothing left behind: outputs checked against every input file by identity before any work,
reports written atomically, unnamed temporaries (O_TMPFILE), cleanup on signals, full disks as one line."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import save_file

import ckptsurgeon.cli.inspect_cmds  # noqa: F401  (registers the commands)
import ckptsurgeon.cli.transfer_cmd  # noqa: F401
import hostile_corpus as corpus
from ckptsurgeon.cli import cli
from ckptsurgeon.errors import OutputError
from ckptsurgeon.io.writer import remove_stale_temporaries, write_state_dict

REPO = Path(__file__).resolve().parent.parent


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_refused(result: Result, fragment: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], (fragment, lines[0])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


@pytest.fixture
def shards(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file({"a": torch.ones(2, 2)}, folder / "model-00001-of-00002.safetensors")
    save_file({"b": torch.ones(3)}, folder / "model-00002-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}')
    template = tmp_path / "template.safetensors"
    save_file({"a": torch.zeros(2, 2), "b": torch.zeros(3)}, template)
    return folder, template


@pytest.mark.parametrize("name", ["model-00002-of-00002.safetensors", "model.safetensors.index.json"])
def test_out_onto_a_shard_or_the_index_is_refused(shards: tuple[Path, Path], name: str) -> None:
    folder, template = shards
    before = {n: digest(folder / n) for n in listing(folder)}
    out = folder / name
    assert_refused(run("transfer", folder, "--target", template, "-o", out, "--force"),
                   "the output is also an input")
    assert_refused(run("convert", folder, out, "--force"), "the output is also an input")
    assert {n: digest(folder / n) for n in listing(folder)} == before


def test_out_by_another_name_for_an_input_is_refused(shards: tuple[Path, Path], tmp_path: Path) -> None:
    folder, template = shards
    hard, soft = tmp_path / "hard.safetensors", tmp_path / "soft.safetensors"
    os.link(folder / "model-00001-of-00002.safetensors", hard)
    soft.symlink_to(template)
    for out in (hard, soft):
        assert_refused(run("transfer", folder, "--target", template, "-o", out, "--force"),
                       "the output is also an input")
        assert_refused(run("transfer", folder, "--target", template, "-o", tmp_path / "new.safetensors",
                           "--report", out), "the report would overwrite an input, OUT or another report")
    assert not (tmp_path / "new.safetensors").exists()


@pytest.mark.parametrize("report, fragment", [
    ("missing/report.json", "does not exist"),
    ("folder", "is a folder"),
    ("out.safetensors", "the report would overwrite an input, OUT or another report"),
])
def test_report_paths_are_checked_before_any_work(shards: tuple[Path, Path], tmp_path: Path, report: str,
                                                  fragment: str) -> None:
    folder, template = shards
    (tmp_path / "folder").mkdir()
    out = tmp_path / "out.safetensors"
    assert_refused(run("transfer", folder, "--target", template, "-o", out, "--markdown", tmp_path / report),
                   fragment)
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_report_into_a_read_only_folder(shards: tuple[Path, Path], tmp_path: Path) -> None:
    folder, template = shards
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    out = tmp_path / "out.safetensors"
    assert_refused(run("transfer", folder, "--target", template, "-o", out, "--report", locked / "r.json"),
                   "is not writable")
    assert not out.exists()


def test_reports_are_written_whole_and_leave_nothing(shards: tuple[Path, Path], tmp_path: Path) -> None:
    folder, template = shards
    out, report, markdown = tmp_path / "out.safetensors", tmp_path / "r.json", tmp_path / "r.md"
    done = run("transfer", folder, "--target", template, "-o", out, "--report", report, "--markdown", markdown)
    assert done.exit_code == 0, done.output
    assert report.read_text().startswith("{\n") and markdown.read_text().startswith("#")
    assert [n for n in listing(tmp_path) if n.endswith((".partial", ".tmp"))] == []


def test_unknown_output_extension_is_refused(shards: tuple[Path, Path], tmp_path: Path) -> None:
    folder, template = shards
    out = tmp_path / "model.onnx"
    assert_refused(run("transfer", folder, "--target", template, "-o", out),
                   "unknown output format '.onnx'; name it .safetensors or .pt or .pth or .bin or .ckpt")
    assert_refused(run("convert", folder, out), "unknown output format '.onnx'")
    assert not out.exists()


def test_force_replaces_through_an_unnamed_file(tmp_path: Path) -> None:
    out = tmp_path / "w.safetensors"
    write_state_dict(out, {"x": torch.ones(2)})
    write_state_dict(out, {"y": torch.zeros(3)}, force=True)
    from safetensors.torch import load_file

    assert list(load_file(out)) == ["y"]
    assert listing(tmp_path) == ["w.safetensors"]


_WRITER = """
import os, sys, time
{prelude}
from ckptsurgeon.io.writer import atomic_output
with atomic_output(sys.argv[1]) as handle:
    handle.write(b"x" * 1_000_000)
    handle.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def killed_writer(out: Path, sig: int, prelude: str = "") -> int:
    child = subprocess.Popen([sys.executable, "-c", _WRITER.format(prelude=prelude), str(out)], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "writing\n"
    child.send_signal(sig)
    return child.wait(timeout=30)


def test_kill_9_during_a_write_leaves_nothing(tmp_path: Path) -> None:
    assert killed_writer(tmp_path / "out.safetensors", signal.SIGKILL) == -signal.SIGKILL
    assert listing(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_without_o_tmpfile_sigterm_and_sighup_remove_the_temporary(tmp_path: Path, sig: int) -> None:
    assert killed_writer(tmp_path / "out.pt", sig, prelude="del os.O_TMPFILE") == -sig
    assert listing(tmp_path) == []


def test_stale_temporaries_of_dead_processes_are_removed_on_the_next_write(tmp_path: Path) -> None:
    assert killed_writer(tmp_path / "out.pt", signal.SIGKILL, prelude="del os.O_TMPFILE") == -signal.SIGKILL
    stale = listing(tmp_path)
    assert len(stale) == 1 and stale[0].startswith(".ckptsurgeon-") and stale[0].endswith(".tmp")
    alive = tmp_path / f".ckptsurgeon-{os.getpid()}-inuse.tmp"
    alive.write_bytes(b"")
    write_state_dict(tmp_path / "next.safetensors", {"x": torch.ones(1)})
    assert listing(tmp_path) == [alive.name, "next.safetensors"]
    assert remove_stale_temporaries(str(tmp_path)) == []


_FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))   # the disk fills after 20 kB
from ckptsurgeon.cli import main
sys.argv = ["ckptsurgeon", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_full_disk_is_one_line_and_no_out(tmp_path: Path, suffix: str) -> None:
    source = tmp_path / "big.safetensors"
    save_file({"w": torch.ones(64, 1024)}, source)
    out = tmp_path / f"out{suffix}"
    done = subprocess.run([sys.executable, "-c", _FULL_DISK, "convert", str(source), str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"error: {out}: writing failed (")
    assert "nothing was written" in done.stderr
    assert listing(tmp_path) == ["big.safetensors"]


def test_surrogate_keys_are_refused_when_writing_and_escaped_when_printing(tmp_path: Path) -> None:
    source = tmp_path / "bad.pkl"
    source.write_bytes(corpus.surrogate_key_pickle())
    shown = run("inspect", source)
    assert shown.exit_code == 0, shown.output
    assert "bad\\ud800key" in shown.stdout
    for out in (tmp_path / "out.safetensors", tmp_path / "out.pt"):
        assert_refused(run("convert", source, out), "tensor name 'bad\\ud800key' cannot be written: not valid UTF-8")
        assert not out.exists()
    with pytest.raises(OutputError, match=r"unknown output format '\.pkl'"):
        write_state_dict(source, {"x": torch.ones(1)}, force=True)
