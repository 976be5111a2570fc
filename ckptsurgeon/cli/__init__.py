"""The ``ckptsurgeon`` command: a thin layer over the library.

Exit codes: 0 success, 1 ``diff`` found differences, 2 bad input or usage, 3 a gate failed,
70 an internal error (a bug: rerun with ``--debug`` for the traceback).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from .. import __version__
from ..errors import SurgeonError

INTERNAL_ERROR = 70


class SurgeonGroup(click.Group):
    """Turns domain errors into one line and an exit code; bugs into one line pointing at --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug")) or os.environ.get("CKPTSURGEON_DEBUG") == "1"
        try:
            return super().invoke(ctx)
        except SurgeonError as exc:
            if debug:
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # a bug: keep it to one line unless asked
            if debug:
                raise
            click.echo(f"internal error (a bug in ckptsurgeon {__version__}): {type(exc).__name__}: {exc}; "
                       f"rerun with --debug for the traceback", err=True)
            ctx.exit(INTERNAL_ERROR)


@click.group(cls=SurgeonGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(__version__, prog_name="ckptsurgeon")
def cli(debug: bool) -> None:
    """PyTorch checkpoint surgery: inspect, diff, convert and transfer weights, safely."""


def _register() -> None:
    from . import demo_cmd, inspect_cmds  # noqa: F401  (commands register themselves on import)

    for name in ("transfer_cmd",):
        try:
            __import__(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise


def main() -> None:
    _register()
    cli(prog_name="ckptsurgeon")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
