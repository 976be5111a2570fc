"""Options shared by several commands, as reusable decorators."""

from __future__ import annotations

import functools
from typing import Any, Callable

import click

F = Callable[..., Any]


def container_options(func: F) -> F:
    func = click.option("--trust", is_flag=True,
                        help="Run the pickle's own code (torch.load weights_only=False). Only for files you trust.")(func)
    func = click.option("--container", metavar="NAME",
                        help="Which state dict to use when the file holds several (e.g. ema, model, a dotted path).")(func)
    return func


def model_options(func: F) -> F:
    func = click.option("--model-path", metavar="DIR", help="Folder to import --model from (added to sys.path).")(func)
    func = click.option("--model-kwargs", metavar="JSON", help="Keyword arguments for --model, as a JSON object.")(func)
    func = click.option("--model", "model_spec", metavar="MODULE:CALLABLE",
                        help="A live model: module.path:callable returning an nn.Module.")(func)
    return func


def force_option(func: F) -> F:
    return click.option("--force", is_flag=True, help="Replace OUT if it exists.")(func)



def check_option(func: F) -> F:
    return click.option("--check/--no-check", default=None,
                        help="Verify the CRC-32 of each torch zip record read (reads the bytes; "
                             "see README, Reading checkpoints safely).")(func)


class SizeType(click.ParamType[int]):
    """A byte size: ``5GB``, ``500MB``, ``2GiB`` or a plain number of bytes."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from ..errors import OutputError
        from ..io.sharded_writer import parse_size

        try:
            return parse_size(value)
        except OutputError as exc:
            self.fail(str(exc), param, ctx)


def output_format_options(func: F) -> F:
    """--format, --max-shard-size and --quiet for every command that writes a checkpoint.

    The command also gets a progress bar on stderr for long writes (a terminal only), unless --quiet or --json.
    """
    from ..io.writer import FORMATS

    @functools.wraps(func)
    def run(*args: Any, quiet: bool = False, **kwargs: Any) -> Any:
        from ..io.progress import showing_progress

        with showing_progress(not quiet and not kwargs.get("as_json", False)):
            return func(*args, **kwargs)

    run = click.option("--quiet", is_flag=True, help="No progress bar on stderr.")(run)
    run = click.option("--max-shard-size", type=SizeType(), metavar="SIZE",
                       help="With --format safetensors-sharded: the largest shard (5GB, 500MB, 2GiB; default 5GB); "
                            "a larger tensor gets a shard of its own.")(run)
    run = click.option("--format", "output_format", type=click.Choice(FORMATS),
                       help="The output format (default: from OUT's extension). The folder formats: "
                            "safetensors-sharded (the hub's model-0000N-of-0000M.safetensors and index) and dcp "
                            "(torch.distributed.checkpoint).")(run)
    return run
