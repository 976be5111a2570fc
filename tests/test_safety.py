"""No code from a checkpoint runs unless asked: payloads that would create a marker file never do.

Each payload is real: ``test_payload_is_live`` shows that plain ``pickle.loads`` runs it.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ckptsurgeon.errors import CheckpointFormatError
from ckptsurgeon.io import open_checkpoint
from tempmodules import temporary_module

MARKER = "MARKER"


class OsSystem:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


class Eval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


class Exec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


class SubprocessCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (subprocess.call, (["touch", str(self.marker)],))


class SubprocessPopen:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (subprocess.Popen, (["touch", str(self.marker)],))


# payload class -> the global the pickle names, as reported in info.stubbed_globals
PAYLOADS: dict[type, str] = {
    OsSystem: f"{os.system.__module__}.system",  # posix.system on Linux
    Eval: "builtins.eval",
    Exec: "builtins.exec",
    SubprocessCall: "subprocess.call",
    SubprocessPopen: "subprocess.Popen",
}


def getattr_chain(marker: Path) -> bytes:
    """``getattr(__import__('os'), 'system')('touch MARKER')``, written by hand as protocol-0 text."""
    return (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(V"
            + f"touch {marker}".encode() + b"\ntR.")


def wait_for(path: Path) -> bool:
    """Popen returns before its child has run: give it a moment."""
    for _ in range(100):
        if path.exists():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("payload", list(PAYLOADS), ids=lambda cls: cls.__name__)
def test_payload_is_live(tmp_path: Path, payload: type) -> None:
    marker = tmp_path / MARKER
    pickle.loads(pickle.dumps(payload(marker)))
    assert wait_for(marker)


def test_getattr_chain_is_live(tmp_path: Path) -> None:
    marker = tmp_path / MARKER
    pickle.loads(getattr_chain(marker))
    assert wait_for(marker)


WEIGHT = torch.arange(12.0).view(3, 4)
STEPS = torch.tensor(7)


def write_payload(path: Path, payload: Any, container: str, protocol: int) -> None:
    """The payload beside real tensors, in a bare pickle, a torch zip or a legacy torch file."""
    if container == "pickle":
        with open(path, "wb") as handle:
            pickle.dump({"weight": WEIGHT.numpy(), "steps": STEPS.numpy(), "evil": payload}, handle, protocol=protocol)
    else:
        torch.save({"weight": WEIGHT, "evil": payload, "steps": STEPS}, path, pickle_protocol=protocol,
                   _use_new_zipfile_serialization=container == "zip")


CASES = ([("pickle", p) for p in range(6)] + [("zip", p) for p in range(1, 6)] + [("legacy", p) for p in range(1, 6)])


@pytest.mark.parametrize("container, protocol", CASES, ids=[f"{c}-p{p}" for c, p in CASES])
@pytest.mark.parametrize("payload", list(PAYLOADS), ids=lambda cls: cls.__name__)
def test_payload_beside_tensors_never_runs(tmp_path: Path, payload: type, container: str, protocol: int) -> None:
    marker = tmp_path / MARKER
    path = tmp_path / f"evil.{'pkl' if container == 'pickle' else 'pt'}"
    write_payload(path, payload(marker), container, protocol)
    with open_checkpoint(path) as checkpoint:
        assert list(checkpoint) == ["weight", "steps"]
        assert torch.equal(checkpoint["weight"], WEIGHT)
        assert torch.equal(checkpoint["steps"], STEPS)
        assert checkpoint.info.stubbed_globals == (PAYLOADS[payload],)
        assert checkpoint.info.format == {"pickle": "pickle", "zip": "torch-zip", "legacy": "torch-legacy"}[container]
    if payload is SubprocessPopen:
        time.sleep(0.1)  # a child that had been started would have touched the marker by now
    assert not marker.exists()


@pytest.mark.parametrize("container", ["pickle", "zip", "legacy"])
@pytest.mark.parametrize("payload", list(PAYLOADS), ids=lambda cls: cls.__name__)
def test_payload_alone_is_refused_with_its_globals(tmp_path: Path, payload: type, container: str) -> None:
    marker = tmp_path / MARKER
    path = tmp_path / "only_payload.bin"
    if container == "pickle":
        path.write_bytes(pickle.dumps({"evil": payload(marker)}, protocol=2))
    else:
        torch.save({"evil": payload(marker)}, path, _use_new_zipfile_serialization=container == "zip")
    with pytest.raises(CheckpointFormatError, match=rf"names {PAYLOADS[payload]}\b.*--trust"):
        open_checkpoint(path)
    assert not marker.exists()


def test_getattr_chain_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / MARKER
    path = tmp_path / "chain.pkl"
    path.write_bytes(getattr_chain(marker))
    with pytest.raises(CheckpointFormatError, match=r"builtins\.__import__, builtins\.getattr"):
        open_checkpoint(path)
    assert not marker.exists()


def test_getattr_chain_beside_tensors(tmp_path: Path) -> None:
    """The hand-written chain as one value of a dict whose other value is a real array."""
    marker = tmp_path / MARKER
    array = np.arange(4, dtype=np.float32)
    body = pickle.dumps({"w": array}, protocol=0)
    assert body.endswith(b"s.")  # ... SETITEM, STOP: add a second key whose value is the chain
    chain = getattr_chain(marker)[:-1]
    path = tmp_path / "mixed.pkl"
    path.write_bytes(body[:-1] + b"Vevil\n" + chain + b"s.")
    with open_checkpoint(path) as checkpoint:
        assert list(checkpoint) == ["w"]
        assert torch.equal(checkpoint["w"], torch.from_numpy(array))
        assert checkpoint.info.stubbed_globals == ("builtins.__import__", "builtins.getattr")
    assert not marker.exists()


def test_payload_inside_a_whole_model_state(tmp_path: Path) -> None:
    """A payload hidden in a pickled module's __dict__ is stubbed; the module's weights still come out."""
    marker = tmp_path / MARKER
    model = nn.Sequential(nn.Linear(2, 3))
    model[0].hook = OsSystem(marker)
    torch.save(model, tmp_path / "model.pt")
    with open_checkpoint(tmp_path / "model.pt") as checkpoint:
        assert torch.equal(checkpoint["0.weight"], model[0].weight.detach())
        assert PAYLOADS[OsSystem] in checkpoint.info.stubbed_globals
    assert not marker.exists()


BENIGN_SOURCE = '''
import torch
from torch import nn


class Benign(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.register_buffer("scale", torch.tensor([1.5, 2.5]))
'''


def test_trust_runs_real_classes_and_gives_the_same_tensors(tmp_path: Path) -> None:
    with temporary_module(tmp_path, BENIGN_SOURCE) as module:
        torch.manual_seed(0)
        model = module.Benign()
        torch.save({"model": model, "epoch": 2}, tmp_path / "benign.pt")
        with open_checkpoint(tmp_path / "benign.pt", trust=True) as trusted:
            trusted_tensors = {name: trusted[name] for name in trusted}
            assert trusted.info.trusted is True
            assert trusted.info.stubbed_globals == ()
    with open_checkpoint(tmp_path / "benign.pt") as safe:
        safe_tensors = {name: safe[name] for name in safe}
        assert f"{module.__name__}.Benign" in safe.info.stubbed_globals
    expected = model.state_dict()
    for tensors in (trusted_tensors, safe_tensors):
        assert list(tensors) == list(expected)
        assert all(torch.equal(tensors[name], expected[name]) for name in expected)



@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*TorchScript archive:UserWarning")
def test_torchscript_needs_trust_and_then_reads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    scripted = torch.jit.script(nn.Sequential(nn.Linear(2, 3)))
    torch.jit.save(scripted, tmp_path / "scripted.pt")
    with pytest.raises(CheckpointFormatError, match=r"__torch__\.torch\.nn\.modules\.linear\.Linear.*--trust"):
        open_checkpoint(tmp_path / "scripted.pt")
    with open_checkpoint(tmp_path / "scripted.pt", trust=True) as checkpoint:
        expected = scripted.state_dict()
        assert list(checkpoint) == list(expected)
        assert all(torch.equal(checkpoint[name], expected[name]) for name in expected)
