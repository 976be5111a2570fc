"""The file-level transfer the CLI runs: open inputs, plan, gate, write reports, apply, write OUT."""

from __future__ import annotations

import json
from typing import Any

from .io import open_checkpoint
from .io.shards import checkpoint_files
from .io.writer import check_output_path, check_report_paths, write_state_dict, write_text_atomic
from .engine import TransferOptions, check_gates, plan_transfer, target_parameters
from .specs import specs_of


class TransferJob:
    """SOURCE into a template checkpoint (streamed file to file) or a live model (then written to OUT)."""

    def __init__(self, source: str, options: TransferOptions, *, template: str | None = None,
                 model_spec: str | None = None, model_kwargs: str | None = None, model_path: str | None = None,
                 out: str | None = None, force: bool = False) -> None:
        self.source_path = source
        self.options = options
        self.template_path = template
        self.model_spec, self.model_kwargs, self.model_path = model_spec, model_kwargs, model_path
        self.out = out
        self.force = force

    def _inputs(self) -> dict[str, str]:
        inputs = {"source": self.source_path}
        if self.template_path:
            inputs["target"] = self.template_path
        if self.model_spec:
            inputs["model"] = self.model_spec
            inputs["model_kwargs"] = self.model_kwargs or "{}"
        return inputs

    def run(self, *, dry_run: bool = False, report_json: str | None = None, report_md: str | None = None) -> Any:
        from .report import Report, report_metadata

        # Every output is checked against every file the inputs consist of (shards, index) before any work.
        inputs = [f for p in (self.source_path, self.template_path) if p for f in checkpoint_files(p)]
        if self.out and not dry_run:
            check_output_path(self.out, inputs=inputs, force=self.force)
        check_report_paths((report_json, report_md), inputs=inputs, out=self.out)
        source = open_checkpoint(self.source_path, container=self.options.container, trust=self.options.trust)
        target, label, tied = self._target()
        target_specs = target.specs if self.template_path else specs_of(target.state_dict())
        plan = plan_transfer(source.specs, target_specs, self.options, tied)
        failures = tuple(check_gates(plan, self.options.gates))
        parameters = target_parameters(target)
        report = Report(plan, self.source_path, label, source.info, gate_failures=failures, inputs=self._inputs(),
                        parameters=parameters)
        if failures or dry_run:
            _save(report, report_json, report_md)
            return report
        report = Report(plan, self.source_path, label, source.info, output=self.out, applied=True,
                        inputs=self._inputs(), parameters=parameters)
        self._write(plan, source, target, report_metadata(report))
        _save(report, report_json, report_md)
        return report

    def _target(self) -> tuple[Any, str, list[list[str]]]:
        if self.template_path:
            return open_checkpoint(self.template_path), self.template_path, []
        from .apply import tied_groups
        from .modelspec import load_model

        model = load_model(self.model_spec, self.model_kwargs, self.model_path)
        return model, f"--model {self.model_spec}", tied_groups(model)

    def _write(self, plan: Any, source: Any, target: Any, metadata: dict[str, str]) -> None:
        from .apply import apply_to_model, write_plan

        if self.template_path:
            write_plan(plan, source, target, self.out, seed=self.options.plan.seed, metadata=metadata)
            return
        apply_to_model(plan, source, target, seed=self.options.plan.seed)
        write_state_dict(self.out, target.state_dict(), metadata=metadata, inputs=[self.source_path], force=True)


def _save(report: Any, report_json: str | None, report_md: str | None) -> None:
    # The same text as Report.save_json / save_markdown, written whole or not at all (never a stray partial).
    if report_json:
        write_text_atomic(report_json, json.dumps(report.to_dict(), indent=2) + "\n")
    if report_md:
        write_text_atomic(report_md, report.to_markdown())


