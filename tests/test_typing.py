"""ckptsurgeon passes ``mypy --strict`` (pyproject's ``[tool.mypy]``), and a training script using the public
API sees its real types, not ``Any``.

mypy runs in-process, once cold per session (some 20 s): the package check fills a session cache that the
script check then reuses.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parents[1]

USER_SCRIPT = """\
import torch

import ckptsurgeon as cs


def fine_tune(model: torch.nn.Module) -> None:
    reveal_type(cs.transfer("a.pt", model))
    reveal_type(cs.make_plan({}, {}))
    reveal_type(cs.open_checkpoint("a.pt"))
"""


class MypyRun(NamedTuple):
    report: str    # mypy's stdout and stderr
    status: int
    cache: Path


def run_mypy(cache: Path, *targets: str) -> MypyRun:
    """mypy with the project's configuration; without targets it checks the configured ``files``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)   # mypy searches the working directory first: the checkout's package, not an install
        stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(cache),
                                          *targets])
    return MypyRun(stdout + stderr, status, cache)


@pytest.fixture(scope="session")
def package_check(tmp_path_factory: pytest.TempPathFactory) -> MypyRun:
    return run_mypy(tmp_path_factory.mktemp("mypy-cache"))


def test_package_passes_mypy_strict(package_check: MypyRun) -> None:
    assert package_check.status == 0, f"mypy --strict ckptsurgeon:\n{package_check.report}"


def test_a_user_script_sees_the_public_types(package_check: MypyRun, tmp_path: Path) -> None:
    script = tmp_path / "fine_tune.py"
    script.write_text(USER_SCRIPT)
    run = run_mypy(package_check.cache, str(script))
    revealed = re.findall(r'^.*fine_tune\.py:\d+: note: Revealed type is "([^"]+)"$', run.report, re.M)
    assert revealed == ["ckptsurgeon.report.Report", "ckptsurgeon.plan.Plan", "ckptsurgeon.io.reader.Checkpoint"], (
        f"mypy on a user script:\n{run.report}")
