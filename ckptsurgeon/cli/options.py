"""Options shared by several commands, as reusable decorators."""

from __future__ import annotations

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
