"""The project a newcomer meets: README's two commands, CI running the same test command, CLI help."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ckptsurgeon.cli import _register, cli

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[1] == "```bash", "README must open with the set-up commands"
    return lines[2:4]


def test_readme_opens_with_exactly_two_setup_commands():
    install, tests = readme_commands()
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[4] == "```"
    assert install.endswith("pip install -e . && ckptsurgeon demo")
    assert tests.endswith("python -m pytest -q")


def test_ci_runs_readme_test_command():
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci_lines[-1] == readme_commands()[1]


def test_pyproject_pins_torch():
    assert '"torch==2.13.0"' in (ROOT / "pyproject.toml").read_text()


_register()
COMMANDS = sorted(cli.commands)


def test_commands_present():
    assert {"inspect", "diff", "convert", "transfer", "demo"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert cli.commands[command].help and len(cli.commands[command].help) > 20
    assert "Usage:" in result.output


def test_demo_runs_and_shows_the_report_and_the_exact_name_comparison(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "--keep", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "loaded 466/475 target tensors (98.1%), 9 new, 0 resized, 0 source tensors unused" in result.output
    assert "backbone.dark3.1.* -> backbone.dark3.2.*" in result.output
    assert "the usual exact-name loop on the same pair: loaded 431 tensors, of which 0 from the wrong layer; " \
           "missed 35 that ckptsurgeon loads" in result.output
    assert "holds the pretrained backbone.dark3.1 weights: yes" in result.output
    assert "gives finite outputs" in result.output and "NON-FINITE" not in result.output
    assert (tmp_path / "yolov7_se_cbam.safetensors").stat().st_size > 0
    assert (tmp_path / "yolov7_se_cbam.report.json").exists()
