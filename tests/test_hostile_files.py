"""Hostile folders and files: sharded indexes judged by their text, non-regular inputs, CRC-32 checks."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import torch
from click.testing import Result
from safetensors.torch import save_file

from ckptsurgeon.errors import CheckpointFormatError
from ckptsurgeon.io import checking, open_checkpoint, verify_checkpoint
from refusals import assert_refused, run



def sharded(folder: Path, shard_names: list[object] | None = None) -> Path:
    """Two safetensors shards and an index; ``shard_names`` overrides what the index says for each tensor."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"a": torch.ones(2)}, folder / "model-00001-of-00002.safetensors")
    save_file({"b": torch.zeros(3)}, folder / "model-00002-of-00002.safetensors")
    names = shard_names or ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = {"metadata": {}, "weight_map": {"a": names[0], "b": names[1]}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


@pytest.mark.parametrize("shard, why", [
    ("model.safetensors.index.json", "which is the index itself"),
    ("./model.safetensors.index.json", "which is the index itself"),
    (".", "which is not a file name"),
    ("", "which is not a file name"),
    (5, "a int, not a file name"),
    (["x"], "a list, not a file name"),
    ("../../x.safetensors", "which leaves the index's folder"),
    ("sub/../../x.safetensors", "which leaves the index's folder"),
    ("/etc/passwd", "which leaves the index's folder"),
])
def test_bad_shard_names_are_refused(tmp_path: Path, shard: object, why: str) -> None:
    folder = sharded(tmp_path / "ckpt", ["model-00001-of-00002.safetensors", shard])
    with pytest.raises(CheckpointFormatError, match="weight_map names shard .*" + why.replace("(", r"\(")):
        open_checkpoint(folder)
    assert_refused(run("inspect", str(folder)), why)


def test_symlinked_shards_stay_readable(tmp_path: Path) -> None:
    """The Hugging Face cache layout: snapshot files are symlinks into ../../blobs."""
    blobs = tmp_path / "blobs"
    sharded(blobs)
    snapshot = tmp_path / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    for name in os.listdir(blobs):
        (snapshot / name).symlink_to(Path("../..") / "blobs" / name)
    with open_checkpoint(snapshot) as checkpoint:
        assert sorted(checkpoint) == ["a", "b"]
        assert torch.equal(checkpoint["b"], torch.zeros(3))


def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    outcome: list[Result] = []
    worker = threading.Thread(target=lambda: outcome.append(run("inspect", str(fifo))), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert outcome, "inspect blocked on a FIFO"
    assert_refused(outcome[0], "not a regular file (a FIFO, device or socket)")
    assert_refused(run("inspect", "/dev/zero"), "/dev/zero: not a regular file")


@pytest.fixture
def damaged_pt(tmp_path: Path) -> Path:
    """A torch zip whose second tensor's bytes were changed after saving (its CRC-32 no longer agrees)."""
    path = tmp_path / "damaged.pt"
    torch.save({"a": torch.arange(4.0), "b": torch.full((64,), 3.0)}, path)
    data = bytearray(path.read_bytes())
    at = data.index(torch.full((64,), 3.0).numpy().tobytes())
    data[at + 5] ^= 0x40
    path.write_bytes(bytes(data))
    return path


def test_inspect_check_verifies_every_record(damaged_pt: Path, tmp_path: Path) -> None:
    plain = run("inspect", str(damaged_pt))
    assert plain.exit_code == 0, plain.output   # metadata alone cannot see it
    assert_refused(run("inspect", str(damaged_pt), "--check"), "record data/1 fails its CRC-32 check")
    good = tmp_path / "good.pt"
    torch.save({"a": torch.arange(4.0), "b": torch.ones(2)}, good)
    checked = run("inspect", str(good), "--check")
    assert checked.exit_code == 0, checked.output
    assert checked.stdout.endswith("check: CRC-32 of 2 records verified\n")
    assert verify_checkpoint(good) == 2


def test_convert_and_transfer_check_the_records_they_read(damaged_pt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    assert_refused(run("convert", str(damaged_pt), str(out), "--check"), "record data/1 fails its CRC-32 check")
    assert not out.exists()
    template = tmp_path / "template.safetensors"
    save_file({"a": torch.zeros(4), "b": torch.zeros(64)}, template)
    assert_refused(run("transfer", str(damaged_pt), "--target", str(template), "-o", str(out), "--check"),
                   "record data/1 fails its CRC-32 check")
    assert not out.exists()
    with checking(True), open_checkpoint(damaged_pt) as checkpoint:
        assert torch.equal(checkpoint["a"], torch.arange(4.0))   # an intact record reads
        with pytest.raises(CheckpointFormatError, match="fails its CRC-32 check"):
            checkpoint["b"]
