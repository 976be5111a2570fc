"""The CLI as a user meets it, and what a refusal must look like: exit 2, one line on stderr, nothing on stdout."""

from __future__ import annotations

from click.testing import CliRunner, Result

import ckptsurgeon.cli.inspect_cmds  # noqa: F401  (registers the commands)
import ckptsurgeon.cli.transfer_cmd  # noqa: F401
from ckptsurgeon.cli import cli


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def assert_refused(result: Result, fragment: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == ""
