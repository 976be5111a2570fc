"""State-dict surgery without a model: rename, drop, extract, cast, strip (and the shared options)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

import click

from . import cli
from .options import container_options, force_option

if TYPE_CHECKING:
    from ..report import Report

F = Callable[..., Any]


def surgery_options(func: F) -> F:
    """--dry-run, --json, --report FILE, --verbose, --force, --container, --trust: every surgery command's."""
    func = container_options(func)
    func = force_option(func)
    func = click.option("--verbose", is_flag=True, help="List every key changed.")(func)
    func = click.option("--report", "report_path", metavar="FILE",
                        help="Also write the report as JSON (schema ckptsurgeon.report/2).")(func)
    func = click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of text.")(func)
    func = click.option("--dry-run", is_flag=True, help="Plan and report only: read no tensor data, write nothing.")(func)
    return func


def finish(report: Report, *, as_json: bool, report_path: str | None, verbose: bool) -> None:
    """Print the report (text or JSON) and write it to ``report_path`` when asked."""
    from ..io.writer import write_text_atomic
    from ..surgery.render import render_surgery

    data = report.to_dict()
    if report_path:
        write_text_atomic(report_path, json.dumps(data, indent=2) + "\n")
    click.echo(json.dumps(data, indent=2) if as_json else render_surgery(report, verbose=verbose))
