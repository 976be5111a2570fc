"""The report renders a hand-built Plan: counts, headline, coverage, grouped lists, JSON, Markdown, warnings."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from ckptsurgeon.errors import MappingError
from hypothesis import given
from hypothesis import strategies as st

from ckptsurgeon import __version__
from ckptsurgeon.io.reader import CheckpointInfo
from ckptsurgeon.plan import (ALIGN, AMBIGUOUS, COPY, DROPPED, EXACT, INIT, KEEP_TARGET, NO_MATCH, RENAME, RESIZE,
                              Ambiguity, Plan, PlanOptions, Step, Unused)
from ckptsurgeon.report import REPORT_SCHEMA, Report, ReportCounts, report_metadata
from ckptsurgeon.report_render import group_pairs, percent

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def copy(target: str, shape: tuple[int, ...], source: str | None = None, strategy: str = EXACT,
         source_dtype: str = "float32", dtype: str = "float32") -> Step:
    return Step(target, COPY, shape, dtype, source or target, shape, source_dtype, strategy, reason="same name")


def new(target: str, shape: tuple[int, ...], method: str = KEEP_TARGET, reason: str = "no source key",
        dtype: str = "float32") -> Step:
    return Step(target, INIT, shape, dtype, method=method, reason=reason)


def resize(target: str, old: tuple[int, ...], shape: tuple[int, ...], method: str = "slice_pad") -> Step:
    return Step(target, RESIZE, shape, "float32", target, old, "float32", EXACT, method, "class head 80 -> 10")


def detector_plan(**extra) -> Plan:
    """A small detector: a renamed stage, an inserted neck block, a resized class head, a new layer."""
    steps = [
        copy("backbone.stem.conv.weight", (16, 3, 3, 3), source_dtype="float16"),
        copy("backbone.stem.bn.weight", (16,)),
        new("backbone.stem.bn.num_batches_tracked", (), dtype="int64"),
        *(copy(f"backbone.dark3.{i}.conv.weight", (16, 16, 3, 3), f"backbone.dark2.{i}.conv.weight", RENAME)
          for i in range(5)),
        copy("neck.blocks.0.weight", (16, 16)),
        new("neck.blocks.1.weight", (16, 16), reason="inserted block"),
        copy("neck.blocks.2.weight", (16, 16), "neck.blocks.1.weight", ALIGN),
        copy("neck.blocks.3.weight", (16, 16), "neck.blocks.2.weight", ALIGN),
        resize("head.cls.weight", (80, 16), (10, 16)),
        resize("head.cls.bias", (80,), (10,)),
        copy("head.reg.weight", (4, 16)),
        copy("head.se.weight", (0, 3)),
        new("head.extra.weight", (8, 16), method="normal:0.01"),
        copy("cls_token", (1, 1, 16)),
    ]
    unused = [
        Unused("aux.fc.weight", (1000, 2048), "float32", NO_MATCH, "no target key with this name or shape"),
        Unused("aux.fc.bias", (1000,), "float32", NO_MATCH, "no target key with this name or shape"),
        Unused("backbone.stem.bn.num_batches_tracked", (), "int64", NO_MATCH),
        *(Unused(f"old.blocks.{i}.weight", (16, 16), "float32", DROPPED, "rule old.*") for i in range(3)),
    ]
    return Plan(tuple(steps), tuple(unused), options=PlanOptions(rename=("dark2=>dark3",), seed=7), **extra)


def detector_report(**extra) -> Report:
    info = CheckpointInfo("yolo.pt", "torch-zip", "model", "the only container with tensors",
                          stripped_prefixes=("module.",), stubbed_globals=("models.yolo.Model",))
    return Report(detector_plan(**extra), "yolo.pt", "--model pkg.mod:build", info)


HEADLINE = ("loaded 13/17 target tensors (76.5%), 2 new, 2 resized, 5 source tensors unused; "
            "97.1% of tensor elements from the source (parameters and buffers: the target does not say which is "
            "which)")


def test_counts_leave_out_bookkeeping():
    assert detector_report().counts() == ReportCounts(
        targets=17, loaded=13, resized=2, new=2, unused_sources=5, sources=20, ambiguous=0, cast=1,
        numel_target=13370, numel_from_source=12986)


def test_headline():
    assert detector_report().headline() == HEADLINE


def test_headline_of_the_documented_example():
    steps = [copy(f"m.{i}.w", (10,)) for i in range(466)] + [new(f"n.{i}.w", (7,)) for i in range(6)]
    steps += [copy("m.bn.num_batches_tracked", ()), new("n.bn.num_batches_tracked", ())]
    unused = [Unused(f"u.{i}.w", (3,), "float32", NO_MATCH) for i in range(12)]
    unused.append(Unused("u.bn.num_batches_tracked", (), "int64", NO_MATCH))
    parameters = frozenset(step.target for step in steps if step.target.endswith(".w"))
    report = Report(Plan(tuple(steps), tuple(unused)), "a.pt", "Net", parameters=parameters)
    assert report.headline() == ("loaded 466/472 target tensors (98.7%), 6 new, 0 resized, 12 source tensors "
                                 "unused; 99.1% of parameter elements from the source")


def grown_head_plan() -> Plan:
    """A classifier whose fc grew from 1000 to 5000 classes by slice_pad, after a BatchNorm with buffers."""
    steps = [copy(f"bn.{name}", (4,)) for name in ("weight", "bias", "running_mean", "running_var")]
    steps += [new("bn.num_batches_tracked", (), dtype="int64"),
              resize("fc.weight", (1000, 4), (5000, 4)), resize("fc.bias", (1000,), (5000,))]
    return Plan(tuple(steps), ())


GROWN_PARAMETERS = frozenset({"bn.weight", "bn.bias", "fc.weight", "fc.bias"})


def test_grown_head_counts_only_the_parameter_elements_taken_from_the_source():
    report = Report(grown_head_plan(), "a.pt", "Net", parameters=GROWN_PARAMETERS)
    assert report.counts() == ReportCounts(
        targets=6, loaded=4, resized=2, new=0, unused_sources=0, sources=6, ambiguous=0, cast=0,
        numel_target=25_016, numel_from_source=5_016, param_numel_target=25_008, param_numel_from_source=5_008)
    assert report.headline() == ("loaded 4/6 target tensors (66.7%), 0 new, 2 resized, 0 source tensors unused; "
                                 "20.0% of parameter elements from the source")
    counts = report.to_dict()["counts"]
    assert (counts["numel_target"], counts["numel_from_source"]) == (25_016, 5_016)
    assert (counts["param_numel_target"], counts["param_numel_from_source"]) == (25_008, 5_008)


def test_without_parameter_names_the_headline_says_it_counts_every_tensor_element():
    report = Report(grown_head_plan(), "a.pt", "Net")
    assert report.headline().endswith("; 20.1% of tensor elements from the source (parameters and buffers: the "
                                      "target does not say which is which)")
    counts = report.to_dict()["counts"]
    assert (counts["numel_from_source"], counts["param_numel_target"], counts["param_numel_from_source"]) == (
        5_016, None, None)


def test_headline_names_ambiguities():
    report = detector_report(ambiguities=(Ambiguity("neck.blocks", "inserted at 1", "inserted at 2"),))
    assert report.headline() == HEADLINE.replace("unused;", "unused, 1 ambiguous;")


def test_empty_plan():
    report = Report(Plan((), ()), "a.pt", "Net")
    assert report.headline() == ("loaded 0/0 target tensors (n/a), 0 new, 0 resized, 0 source tensors unused; "
                                 "n/a of tensor elements from the source (parameters and buffers: the target does "
                                 "not say which is which)")
    assert "coverage: no target tensors" in report.render()


@pytest.mark.parametrize("part, whole, text", [(466, 472, "98.7%"), (9999, 10000, "99.9%"), (1, 10000, "0.1%"),
                                                (0, 5, "0.0%"), (5, 5, "100.0%"), (0, 0, "n/a")])
def test_percent_never_rounds_to_a_false_100(part, whole, text):
    assert percent(part, whole) == text


def test_coverage_per_top_level_module_in_target_order():
    report = detector_report()
    assert report.coverage() == [("backbone", 7, 7), ("neck", 3, 4), ("head", 4, 5), ("<root>", 1, 1)]
    assert "coverage: backbone 100.0%  neck 75.0%  head 80.0%  <root> 100.0%" in report.render()


def test_render_groups_key_names():
    text = detector_report().render()
    assert text.splitlines()[0] == HEADLINE
    assert "backbone.dark2.* -> backbone.dark3.*" in text
    assert "neck.blocks.{1,2}.weight -> neck.blocks.{2,3}.weight" in text
    assert re.search(r"head\.cls\.weight\s+slice_pad\s+from \(80, 16\) to \(10, 16\)", text)
    assert "    old.blocks.{0..2}.weight  rule old.*" in text.splitlines()
    assert "    aux.fc.bias               no target key with this name or shape" in text.splitlines()
    # exact copies are counted, not listed; bookkeeping keys are not listed either
    assert "head.reg.weight" not in text and "num_batches_tracked" not in text


def test_render_sections_and_source_lines():
    text = detector_report(prefix_move=("model.", "")).render()
    for line in ("source: yolo.pt (torch-zip)", "  container: model (state_dict); the only container with tensors",
                 "  prefixes stripped: module.", "  stood in for (not run): models.yolo.Model",
                 "target: --model pkg.mod:build", "prefix move: removed 'model.'",
                 "dry run: no tensor data read, nothing written",
                 "renamed / moved (7)", "  rename:", "  align:", "resized (2)", "new (initialised) (2)",
                 "  kept the target's initial values; inserted block:", "    neck.blocks.1.weight",
                 "  normal(std=0.01); no source key:", "    head.extra.weight",
                 "unused source tensors (5)", "  no match:", "  dropped by rule:"):
        assert line in text.splitlines(), line
    lines = text.splitlines()
    headers = [lines.index(h) for h in ("renamed / moved (7)", "resized (2)", "new (initialised) (2)",
                                        "unused source tensors (5)", "warnings (4)")]
    assert headers == sorted(headers)


def test_ambiguity_and_gate_failures_render_last():
    plan_extra = {"ambiguities": (Ambiguity("neck.blocks", "block inserted at 1", "block inserted at 2",
                                            "--rename 'neck.blocks.1=>neck.blocks.2'"),)}
    report = Report(detector_plan(**plan_extra), "a.pt", "Net", gate_failures=("coverage 76.5% < 90%",))
    text = report.render()
    assert ("  neck.blocks: took block inserted at 1; the other reading: block inserted at 2; "
            "to take it use --rename 'neck.blocks.1=>neck.blocks.2'") in text
    assert text.splitlines()[-2:] == ["gate failures", "  coverage 76.5% < 90%"]


def test_color_only_when_asked():
    report = Report(detector_plan(), "a.pt", "Net", gate_failures=("strict: 2 new tensors",))
    plain, coloured = report.render(), report.render(color=True)
    assert "\x1b" not in plain and str(report) == plain
    assert "\x1b[32m" in coloured and "\x1b[31m" in coloured and "\x1b[33m" in coloured
    assert ANSI.sub("", coloured) == plain


def test_verbose_shows_every_line_else_cut_at_20():
    steps = tuple(copy(f"new{i}.weight", (2,), f"old{i}.weight", RENAME) for i in range(50))
    report = Report(Plan(steps, ()), "a.pt", "Net")
    short = report.render()
    assert "old19.weight -> new19.weight" in short and "old20.weight" not in short
    assert "  ... and 30 more (use --verbose or --report)" in short.splitlines()
    full = report.render(verbose=True)
    assert "old49.weight -> new49.weight" in full and "more (use" not in full


def test_group_pairs():
    shifted = [(f"a.{i}.w", f"a.{i + 1}.w") for i in range(2, 6)]
    assert group_pairs(shifted) == [("a.{2..5}.w", "a.{3..6}.w")]
    assert group_pairs([("x.w", "y.0.w"), ("z.w", "y.1.w")]) == [("x.w", "y.0.w"), ("z.w", "y.1.w")]
    mixed = [("s.0.w", "t.0.w"), ("s.1.w", "t.2.w")]    # different shifts are not merged
    assert group_pairs(mixed) == mixed


def test_json_lists_every_step_and_round_trips():
    report = detector_report(prefix_move=("model.", ""))
    data = report.to_dict()
    assert data["schema"] == REPORT_SCHEMA == "ckptsurgeon.report/2"
    assert data["tool_version"] == __version__
    assert json.loads(json.dumps(data)) == data
    assert [t["target"] for t in data["targets"]] == [s.target for s in report.plan.steps]
    assert data["targets"][5] == {
        "target": "backbone.dark3.2.conv.weight", "action": "copy",
        "sources": [{"input": 0, "key": "backbone.dark2.2.conv.weight"}],
        "strategy": "rename", "method": None, "source_shape": [16, 16, 3, 3], "target_shape": [16, 16, 3, 3],
        "source_dtype": "float32", "target_dtype": "float32", "fill": None, "reason": "same name", "reason_kind": ""}
    assert data["targets"][2]["source_shape"] is None
    assert len(data["unused"]) == 6 and data["unused"][0] == {
        "source": "aux.fc.weight", "shape": [1000, 2048], "dtype": "float32", "reason": "no match",
        "detail": "no target key with this name or shape"}
    assert data["counts"]["loaded"] == 13 and data["headline"] == HEADLINE
    assert data["coverage"][1] == {"module": "neck", "transferred": 3, "total": 4}
    assert data["options"]["seed"] == 7 and data["prefix_move"] == {"removed": "model.", "added": ""}
    assert (data["container"], data["stripped_prefixes"], data["stubbed_globals"]) == (
        "model", ["module."], ["models.yolo.Model"])
    assert data["applied"] is False and data["output"] is None and data["created"].endswith("+00:00")


def test_save_json_and_markdown(tmp_path):
    report = detector_report()
    report.save_json(tmp_path / "r.json")
    report.save_markdown(tmp_path / "r.md")
    assert json.loads((tmp_path / "r.json").read_text())["headline"] == HEADLINE
    assert (tmp_path / "r.md").read_text() == report.to_markdown()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md"]


def test_markdown_tables():
    md = detector_report(ambiguities=(Ambiguity("neck", "a", "b", "--rename 'x=>y'"),)).to_markdown()
    assert md.startswith("# ckptsurgeon transfer report\n\n**" + HEADLINE.replace("unused;", "unused, 1 ambiguous;"))
    for line in ("- prefixes stripped: `module.`", "| module | transferred | total | coverage |", "| `backbone` | 7 | 7 | 100.0% |",
                 "## Renamed / moved", "| rename | `backbone.dark2.*` | `backbone.dark3.*` |",
                 "| `head.cls.weight` | slice_pad | (80, 16) | (10, 16) |  |",
                 "| `neck.blocks.1.weight` | kept the target's initial values | inserted block |",
                 "| `old.blocks.{0..2}.weight` | dropped by rule | rule old.* |",
                 "| `neck` | a | b | `--rename 'x=>y'` |", "## Warnings"):
        assert line in md.splitlines(), line


def test_warnings():
    warnings = Report(detector_plan(notes=("order fallback was off",)), "a.pt", "Net").warnings()
    assert warnings == [
        "zero-sized target tensor (a dimension of 0, e.g. the weight of Linear(3, 0)): head.se.weight (0, 3)",
        "zero-sized source tensor (a dimension of 0, e.g. the weight of Linear(3, 0)): head.se.weight (0, 3)",
        "1 tensor cast to the target dtype: fp16 -> fp32 (1); e.g. backbone.stem.conv.weight",
        "large unused source tensor aux.fc.weight (1000, 2048) (2.05M elements, no match)",
        "order fallback was off",
    ]
    text = Report(detector_plan(), "a.pt", "Net").render()
    assert "warnings (4)" in text and "  1 tensor cast to the target dtype: fp16 -> fp32 (1); e.g. " \
                                     "backbone.stem.conv.weight" in text


def test_ambiguity_warning():
    plan = Plan((copy("a.w", (2,)),), (Unused("b.w", (2,), "float32", AMBIGUOUS, "two readings"),),
                ambiguities=(Ambiguity("a", "x", "y"), Ambiguity("b", "x", "y")))
    assert Report(plan, "a.pt", "Net").warnings() == [
        "2 ambiguous places: the checkpoint cannot tell which reading is right; the plan took one "
        "(see 'ambiguous' for the other and the --rename that states it)"]


def test_report_metadata_is_strings():
    meta = report_metadata(detector_report())
    assert meta == {"ckptsurgeon.version": __version__, "ckptsurgeon.source": "yolo.pt",
                    "ckptsurgeon.container": "model",
                    "ckptsurgeon.options": json.dumps(PlanOptions(rename=("dark2=>dark3",), seed=7).as_dict(),
                                                      sort_keys=True),
                    "ckptsurgeon.headline": HEADLINE}
    assert json.loads(meta["ckptsurgeon.options"])["seed"] == 7


def test_rendering_needs_no_torch():
    code = ("import sys; from ckptsurgeon.report import Report; from ckptsurgeon.plan import Plan, Step; "
            "r = Report(Plan((Step('a.w', 'init', (2,), 'float32', method='zeros'),), ()), 's', 't'); "
            "r.render(); r.to_markdown(); r.to_dict(); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


ACTIONS = st.sampled_from([COPY, RESIZE, INIT])


@given(st.lists(st.tuples(ACTIONS, st.integers(0, 4), st.booleans()), max_size=30))
def test_counts_add_up_and_json_lists_every_step(rows):
    steps = tuple(Step(f"m{i % 3}.l{i}.{'num_batches_tracked' if bk else 'w'}", action, (dim,), "float32",
                       None if action == INIT else f"s.{i}", None if action == INIT else (dim,),
                       None if action == INIT else "float32", None if action == INIT else EXACT)
                  for i, (action, dim, bk) in enumerate(rows))
    report = Report(Plan(steps, ()), "a.pt", "Net")
    counts = report.counts()
    assert counts.loaded + counts.resized + counts.new == counts.targets
    assert sum(total for _, _, total in report.coverage()) == counts.targets
    assert counts.numel_from_source <= counts.numel_target
    data = json.loads(json.dumps(report.to_dict()))
    assert len(data["targets"]) == len(steps)
    report.render(verbose=True)
    report.to_markdown()


def test_a_report_reads_back_as_its_plan_whichever_schema_version(tmp_path):
    from ckptsurgeon.report import read_report_plan

    report = detector_report(prefix_move=("model.", ""))
    data = report.to_dict()
    current = tmp_path / "r2.json"
    current.write_text(json.dumps(data))
    plan = read_report_plan(current)
    assert [(s.target, s.action, s.sources) for s in plan.steps] == [
        (s.target, s.action, s.sources) for s in report.plan.steps]
    old = dict(data, schema="ckptsurgeon.report/1", targets=[
        {**{k: v for k, v in t.items() if k not in ("sources", "reason_kind")},
         "source": t["sources"][0]["key"] if t["sources"] else None} for t in data["targets"]])
    previous = tmp_path / "r1.json"
    previous.write_text(json.dumps(old))
    assert read_report_plan(previous).steps == plan.steps
    future = tmp_path / "r3.json"
    future.write_text(json.dumps(dict(data, schema="ckptsurgeon.report/3")))
    with pytest.raises(MappingError, match="report schema 'ckptsurgeon.report/3', this ckptsurgeon reads"):
        read_report_plan(future)
