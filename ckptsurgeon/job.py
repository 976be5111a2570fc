"""The CLI's transfer: check every output path first, then the one transfer flow, then write the reports."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .io.shards import checkpoint_files
from .io.writer import check_output, check_report_paths, write_text_atomic
from .options import RecipeOrigin, TransferOptions
from .pipeline import TransferTarget, model_target, run_transfer, template_target

if TYPE_CHECKING:
    from .report import Report


class TransferJob:
    """SOURCE into a template checkpoint (streamed file to file) or a live model (then written to OUT)."""

    def __init__(self, source: str, options: TransferOptions, *, template: str | None = None,
                 model_spec: str | None = None, model_kwargs: str | None = None, model_path: str | None = None,
                 out: str | None = None, force: bool = False, recipe: RecipeOrigin | None = None,
                 format: str | None = None, max_shard_size: int | str | None = None) -> None:
        self.source_path = source
        self.options = options
        self.template_path = template
        self.model_spec, self.model_kwargs, self.model_path = model_spec, model_kwargs, model_path
        self.out = out
        self.force = force
        self.recipe = recipe
        self.format, self.max_shard_size = format, max_shard_size

    def _inputs(self) -> dict[str, str]:
        inputs = {"source": self.source_path}
        if self.template_path:
            inputs["target"] = self.template_path
        if self.model_spec:
            inputs["model"] = self.model_spec
            inputs["model_kwargs"] = self.model_kwargs or "{}"
        return inputs

    def run(self, *, dry_run: bool = False, report_json: str | None = None, report_md: str | None = None) -> Report:
        # Every output is checked against every file the inputs consist of (shards, index) before any work.
        inputs = [f for p in (self.source_path, self.template_path) if p for f in checkpoint_files(p)]
        if self.out and not dry_run:
            check_output(self.out, inputs=inputs, force=self.force, format=self.format)
        check_report_paths((report_json, report_md), inputs=inputs, out=self.out)
        report = run_transfer(self.source_path, self._target(), self.options, dry_run=dry_run,
                              out=None if dry_run else self.out, recipe=self.recipe, inputs=self._inputs(),
                              format=self.format, max_shard_size=self.max_shard_size, force=self.force)
        _save(report, report_json, report_md)
        return report

    def _target(self) -> TransferTarget:
        if self.template_path:
            return template_target(self.template_path)
        from .model.build import load_model

        assert self.model_spec is not None   # the command asks for --target or --model
        model = load_model(self.model_spec, self.model_kwargs, self.model_path)
        return model_target(model, f"--model {self.model_spec}")


def _save(report: Report, report_json: str | None, report_md: str | None) -> None:
    # The same text as Report.save_json / save_markdown, written whole or not at all (never a stray partial).
    if report_json:
        write_text_atomic(report_json, json.dumps(report.to_dict(), indent=2) + "\n")
    if report_md:
        write_text_atomic(report_md, report.to_markdown())
