"""The ``ckptsurgeon`` command: a thin layer over the library.

Exit codes: 0 success (also when a reader such as ``head`` closes the pipe early), 1 ``diff`` found
differences, 2 bad input or usage (always one line on stderr), 3 a gate failed, 70 an internal error
(a bug: rerun with ``--debug`` for the traceback).
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

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        _tolerant_streams()
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:   # click's default is three lines: usage, a hint, the error
            where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            _exit_with(f"error: {exc.format_message()}{where}", 2)
        except click.ClickException as exc:
            _exit_with(f"error: {exc.format_message()}", exc.exit_code)
        except click.Abort:
            _exit_with("aborted", 1)
        except BrokenPipeError:
            _silence_stdout()
            sys.exit(0)
        sys.exit(code if isinstance(code, int) else 0)

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
        except BrokenPipeError:   # `inspect --json | head`: the reader has what it wanted
            _silence_stdout()
            ctx.exit(0)
        except SystemExit as exc:   # user code (a --model builder) calling sys.exit must not end us silently
            if debug:
                raise
            click.echo(f"error: code run for this command called sys.exit({exc.code!r}); if it is your --model "
                       f"builder, make it return an nn.Module", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # a bug: keep it to one line unless asked
            if debug:
                raise
            click.echo(f"internal error (a bug in ckptsurgeon {__version__}): {type(exc).__name__}: {exc}; "
                       f"rerun with --debug for the traceback", err=True)
            ctx.exit(INTERNAL_ERROR)


def _exit_with(line: str, code: int) -> None:
    click.echo(" ".join(line.split()), err=True)   # one line, whatever the message held
    sys.exit(code)


def _tolerant_streams() -> None:
    """Names that are not valid UTF-8 (lone surrogates from a damaged file) print escaped instead of crashing."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a stream that cannot change (already written to a pipe, closed)
                pass


def _silence_stdout() -> None:
    # The reader went away (`inspect --json | head`): not an error. Point stdout at /dev/null so that the
    # interpreter's final flush does not complain about the closed pipe.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


@click.group(cls=SurgeonGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(__version__, prog_name="ckptsurgeon")
def cli(debug: bool) -> None:
    """PyTorch checkpoint surgery: inspect, diff, convert and transfer weights, safely."""


def _register() -> None:
    from . import demo_cmd, inspect_cmds  # noqa: F401  (commands register themselves on import)

    for name in ("transfer_cmd", "recipe_cmds", "freeze_cmd", "verify_cmd", "probe_cmd", "surgery_cmds", "combine_cmds",
                 "fuse_cmd"):
        try:
            __import__(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise


def main() -> None:
    _register()
    cli(prog_name="ckptsurgeon")


if __name__ == "__main__":  # pragma: no cover
    main()
