#!/usr/bin/env python
"""Benchmark ``ckptsurgeon transfer`` (library call and CLI) and the planner against naive baselines.

    python benchmarks/bench_transfer.py [--quick] [--only NAME] [--repeat N] [--build-only]

1. live model: ``ckptsurgeon.transfer(SRC, model)`` vs ``torch.load`` + exact-name/shape filter +
   ``load_state_dict(strict=False)``, into a model with ONE module inserted mid-way (whole processes);
2. file to file: ``ckptsurgeon transfer SRC --target TEMPLATE -o OUT.safetensors`` vs loading both files
   fully, intersecting and saving (whole processes);
3. planning only, in this process: ``make_plan`` on 100k keys vs a detectron2-style suffix matrix.

Source and template checkpoints are built once (cached in benchmarks/_work/). Whole-process figures are
wall time (median), CPU time (median) and peak private memory (max RssAnon of the process tree), page cache
warm (see measure.py). Exits 0 even when targets are missed; 1 when a measured command fails or a
correctness check (plan, transferred values) fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from checkpoints import CheckpointSpec, ensure_checkpoint
from measure import MIB, CommandError, Result, finish, format_table, measure, warm_cache

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / "_work"

SIZES = ("yolov7", "big")          # transfer_models.SIZES, without importing torch here
QUICK_SKIPS = ("big",)
FORMATS = ("pth", "safetensors")
MODEL_VERSION = 1                   # bump when transfer_models.py changes the models

# targets
LIVE_WALL_RATIO = 1.2               # case 1: ckptsurgeon / baseline
LIVE_PEAK_RATIO = 1.2
FILE_PEAK_BASE_MB = 300.0           # case 2: peak < 300 MiB + 2 x largest tensor
FILE_WALL_RATIO = 0.5               # case 2: ckptsurgeon wall <= 0.5 x naive
STRETCH_PEAK_BASE_MB = 64.0         # case 2 stretch: peak < 64 MiB + largest tensor, torch not imported
PLAN_WALL_S = 1.0                   # case 3

PLAN_BLOCKS = 20_000                # 5 keys a block: 100,000 source keys
PLAN_CHANNELS = (64, 128, 256, 512)
SUFFIX_BASELINE_BLOCKS = (200, 400)  # 1k and 2k keys

Outcome = Result | CommandError


@dataclass(frozen=True)
class Check:
    case: str
    target: str
    status: str   # PASS, MISS, FAIL, SKIP
    figures: str


@dataclass
class Pair:
    """One comparison: the ckptsurgeon command and its baseline, on one size and format."""

    size: str
    fmt: str
    ours: Outcome
    base: Outcome
    extra: dict = dataclasses.field(default_factory=dict)


CHECKS: list[Check] = []
ERRORS: list[str] = []


# --------------------------------------------------------------------------- helpers


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the ~1.5 GB model (cases 1 and 2)")
    parser.add_argument("--only", choices=[*SIZES, "plan"], metavar="NAME",
                        help="one size for cases 1 and 2 (yolov7, big), or 'plan' for case 3 alone")
    parser.add_argument("--repeat", type=int, default=3, help="runs per command (default 3)")
    parser.add_argument("--build-only", action="store_true", help="build the cached checkpoints, measure nothing")
    return parser.parse_args(argv)


def child_env() -> dict[str, str]:
    """The repository (ckptsurgeon) and benchmarks/ (transfer_models) are importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), str(BENCH_DIR), env.get("PYTHONPATH")]))
    return env


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def try_measure(label: str, cmd: list[str], repeat: int, env: dict[str, str],
                setup: Callable[[], object] | None = None) -> Outcome:
    say(f"  {label}: $ {shlex.join(cmd) if len(shlex.join(cmd)) < 300 else shlex.join(cmd)[:300] + ' ...'}")
    try:
        result = measure(cmd, repeat=repeat, env=env, setup=setup)
    except CommandError as error:
        say(f"    FAILED (exit status {error.returncode})")
        ERRORS.append(error.describe())
        return error
    say(f"    wall {result.wall_s:.2f} s (runs {', '.join(f'{w:.2f}' for w in result.wall_runs_s)}), "
        f"cpu {result.cpu_s:.2f} s, peak {result.peak_anon_mb:.0f} MiB")
    return result


def ok(outcome: Outcome | None) -> bool:
    return isinstance(outcome, Result)


def wall(o: Outcome | None) -> str:
    return f"{o.wall_s:.2f}" if ok(o) else "FAILED"


def cpu(o: Outcome | None) -> str:
    return f"{o.cpu_s:.2f}" if ok(o) else "FAILED"


def peak(o: Outcome | None) -> str:
    return f"{o.peak_anon_mb:.0f}" if ok(o) else "FAILED"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def check(case: str, target: str, passed: bool, figures: str) -> None:
    CHECKS.append(Check(case, target, "PASS" if passed else "MISS", figures))


def fail(case: str, target: str, why: str) -> None:
    CHECKS.append(Check(case, target, "FAIL", why))


def run_checked(label: str, cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess | None:
    """An untimed helper process (verification, import check); None and an error when it fails."""
    say(f"  {label}")
    done = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(("  " + line) for line in (done.stderr or done.stdout).strip().splitlines()[-15:])
        ERRORS.append(f"{label} failed with exit status {done.returncode}:\n  $ {shlex.join(cmd)[:400]}\n{tail}")
        say(f"    FAILED (exit status {done.returncode})")
        return None
    return done


def last_json(outcome: Outcome) -> dict:
    """The JSON object the measured script printed last (counts, for a sanity check)."""
    if not ok(outcome):
        return {}
    for line in reversed(outcome.stdout_tail.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return {}
    return {}


def load_line(load_before: float) -> str:
    cores = os.cpu_count() or 1
    line = (f"load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after the "
            f"measurements, {cores} cores")
    return line + (" -- machine busy, wall times are noisy (compare CPU times)" if load_before > cores / 2 else "")


# --------------------------------------------------------------------------- checkpoints


def _state_dict_builder(size: str, inserted: bool) -> Callable[[], dict]:
    def build() -> dict:
        import transfer_models

        return transfer_models.state_dict_of(size, inserted=inserted)
    return build


def checkpoint_specs(size: str) -> tuple[CheckpointSpec, CheckpointSpec]:
    return (CheckpointSpec(f"xfer-{size}-src", MODEL_VERSION, f"{size} model, as trained (source)",
                           _state_dict_builder(size, False)),
            CheckpointSpec(f"xfer-{size}-tpl", MODEL_VERSION, f"{size} model with one module inserted (template)",
                           _state_dict_builder(size, True)))


def largest_tensor_mb(path: Path) -> tuple[str, float]:
    from ckptsurgeon.io import read_specs  # no torch

    specs, _ = read_specs(path)
    name = max(specs, key=lambda n: specs[n].nbytes)
    return name, specs[name].nbytes / MIB


# --------------------------------------------------------------------------- case 1: live model

BUILD_ONLY = """
from transfer_models import build_model
model = build_model({size!r}, inserted=True)
"""

LIVE_BASELINE = {
    "pth": """
import json, torch
from transfer_models import build_model
model = build_model({size!r}, inserted=True)
sd = torch.load({src!r}, weights_only=True)
own = model.state_dict()
kept = {{k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}}
model.load_state_dict(kept, strict=False)
print(json.dumps({{"kept": len(kept), "source": len(sd), "target": len(own)}}))
""",
    "safetensors": """
import json, safetensors.torch
from transfer_models import build_model
model = build_model({size!r}, inserted=True)
sd = safetensors.torch.load_file({src!r})
own = model.state_dict()
kept = {{k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}}
model.load_state_dict(kept, strict=False)
print(json.dumps({{"kept": len(kept), "source": len(sd), "target": len(own)}}))
""",
}

LIVE_OURS = """
import dataclasses, json, ckptsurgeon
from transfer_models import build_model
model = build_model({size!r}, inserted=True)
report = ckptsurgeon.transfer({src!r}, model)
print(json.dumps(dataclasses.asdict(report.counts())))
"""

LIVE_VERIFY = """
import torch
from safetensors import safe_open
import ckptsurgeon
from transfer_models import build_model, expected_source
model = build_model({size!r}, inserted=True)
ckptsurgeon.transfer({src!r}, model)
bad, new = [], []
with safe_open({src_st!r}, "pt") as source:
    for name, value in model.state_dict().items():
        origin = expected_source({size!r}, name)
        if origin is None:
            new.append(name)
        elif not torch.equal(value, source.get_tensor(origin)):
            bad.append(name)
assert not bad, f"{{len(bad)}} tensors differ from their expected source, e.g. {{bad[:3]}}"
assert len(new) == 4, new
print("values ok:", len(model.state_dict()) - len(new), "tensors equal to their shifted source;", len(new), "new")
"""


def case_live(size: str, files: dict[str, dict[str, Path]], build_ref: Outcome, repeat: int,
              env: dict[str, str]) -> list[Pair]:
    pairs = []
    for fmt in FORMATS:
        src = files["src"][fmt]
        say(f"case 1, {size}.{fmt}: live model")
        warm = lambda p=src: warm_cache(p)  # noqa: E731
        base = try_measure("baseline", py(LIVE_BASELINE[fmt].format(size=size, src=str(src))), repeat, env, warm)
        ours = try_measure("ckptsurgeon", py(LIVE_OURS.format(size=size, src=str(src))), repeat, env, warm)
        pairs.append(Pair(size, fmt, ours, base))
    done = run_checked(f"case 1, {size}: verifying the transferred values (untimed)",
                       py(LIVE_VERIFY.format(size=size, src=str(files["src"]["pth"]),
                                             src_st=str(files["src"]["safetensors"]))), env)
    verified = done is not None
    for pair in pairs:
        name = f"1 live {size}.{pair.fmt}"
        counts = last_json(pair.ours)
        if not (ok(pair.ours) and ok(pair.base)):
            fail(name, "ckptsurgeon <= 1.2x baseline (wall, peak)", "a command failed")
            continue
        if verified and counts.get("new") == 4 and counts.get("unused_sources") == 0:
            check(name, "transfer is right", True, f"{counts['loaded']} loaded (+ counters), 4 new, 0 unused; "
                  f"values equal the shifted source (checked once, .pth source)")
        else:
            fail(name, "transfer is right", f"counts {counts}, values {'ok' if verified else 'WRONG'}")
            ERRORS.append(f"case 1, {size}.{pair.fmt}: wrong transfer: counts {counts}")
        w = pair.ours.wall_s / pair.base.wall_s
        m = pair.ours.peak_anon_mb / pair.base.peak_anon_mb
        extra = ""
        if ok(build_ref):
            extra = (f"; beyond building the model: wall {pair.ours.wall_s - build_ref.wall_s:.2f} s vs "
                     f"{pair.base.wall_s - build_ref.wall_s:.2f} s, cpu {pair.ours.cpu_s - build_ref.cpu_s:.2f} s "
                     f"vs {pair.base.cpu_s - build_ref.cpu_s:.2f} s")
        check(name, f"wall <= {LIVE_WALL_RATIO}x baseline", w <= LIVE_WALL_RATIO,
              f"{w:.2f}x ({pair.ours.wall_s:.2f} s vs {pair.base.wall_s:.2f} s; cpu "
              f"{pair.ours.cpu_s:.2f} s vs {pair.base.cpu_s:.2f} s = {ratio(pair.ours.cpu_s, pair.base.cpu_s)}{extra})")
        check(name, f"peak <= {LIVE_PEAK_RATIO}x baseline", m <= LIVE_PEAK_RATIO,
              f"{m:.2f}x ({pair.ours.peak_anon_mb:.0f} MiB vs {pair.base.peak_anon_mb:.0f} MiB)")
    return pairs


def live_table(pairs: Sequence[Pair], build_refs: dict[str, Outcome]) -> str:
    rows = []
    for p in pairs:
        counts, kept = last_json(p.ours), last_json(p.base)
        ref = build_refs.get(p.size)
        rows.append({
            "source": f"{p.size}.{p.fmt}",
            "build-only s": wall(ref), "build-only MiB": peak(ref),
            "baseline s": wall(p.base), "cpu s": cpu(p.base), "MiB": peak(p.base),
            "ckptsurgeon s": wall(p.ours), "cpu s ": cpu(p.ours), "MiB ": peak(p.ours),
            "wall ratio": ratio(p.ours.wall_s, p.base.wall_s) if ok(p.ours) and ok(p.base) else "-",
            "cpu ratio": ratio(p.ours.cpu_s, p.base.cpu_s) if ok(p.ours) and ok(p.base) else "-",
            "peak ratio": ratio(p.ours.peak_anon_mb, p.base.peak_anon_mb) if ok(p.ours) and ok(p.base) else "-",
            "loaded (ours / baseline)": f"{counts.get('loaded', '?')}+bk / {kept.get('kept', '?')} of "
                                        f"{kept.get('target', '?')}",
        })
    return format_table(rows)


# --------------------------------------------------------------------------- case 2: file to file

FILE_NAIVE = {
    "pth": """
import torch
src = torch.load({src!r}, weights_only=True)
result = torch.load({tpl!r}, weights_only=True)
for k, v in src.items():
    if k in result and result[k].shape == v.shape:
        result[k] = v
torch.save(result, {out!r})
""",
    "safetensors": """
import safetensors.torch as st
src = st.load_file({src!r})
result = st.load_file({tpl!r})
for k, v in src.items():
    if k in result and result[k].shape == v.shape:
        result[k] = v
st.save_file(result, {out!r})
""",
}

FILE_VERIFY = """
import torch
from safetensors import safe_open
from transfer_models import expected_source
with safe_open({out!r}, "pt") as out, safe_open({src!r}, "pt") as src, safe_open({tpl!r}, "pt") as tpl:
    assert list(out.keys()) == list(tpl.keys()) or sorted(out.keys()) == sorted(tpl.keys()), "keys differ"
    bad, new = [], 0
    for name in out.keys():
        origin = expected_source({size!r}, name)
        want = tpl.get_tensor(name) if origin is None else src.get_tensor(origin)
        new += origin is None
        if not torch.equal(out.get_tensor(name), want):
            bad.append(name)
assert not bad, f"{{len(bad)}} tensors wrong in OUT, e.g. {{bad[:3]}}"
print("OUT ok:", new, "new tensors with the template's values, the rest from the shifted source")
"""


def torch_imported(importtime_stderr: str) -> tuple[bool, bool]:
    """(torch, numpy) imported, from ``-X importtime`` output."""
    names = {line.rsplit("|", 1)[-1].strip() for line in importtime_stderr.splitlines() if "|" in line}
    return "torch" in names, "numpy" in names


def case_file(size: str, files: dict[str, dict[str, Path]], repeat: int, env: dict[str, str]) -> list[Pair]:
    pairs = []
    out = WORK_DIR / "xfer-out.safetensors"
    for fmt in FORMATS:
        src, tpl = files["src"][fmt], files["tpl"][fmt]
        naive_out = WORK_DIR / f"xfer-out-naive.{fmt}"
        say(f"case 2, {size}.{fmt}: file to file")

        def setup_ours(src: Path = src, tpl: Path = tpl) -> None:
            out.unlink(missing_ok=True)
            warm_cache(src)
            warm_cache(tpl)

        def setup_naive(src: Path = src, tpl: Path = tpl, naive_out: Path = naive_out) -> None:
            naive_out.unlink(missing_ok=True)
            warm_cache(src)
            warm_cache(tpl)

        cli_args = ["-m", "ckptsurgeon", "transfer", str(src), "--target", str(tpl), "-o", str(out), "--force"]
        ours = try_measure("ckptsurgeon", [sys.executable, *cli_args], repeat, env, setup_ours)
        base = try_measure("naive", py(FILE_NAIVE[fmt].format(src=str(src), tpl=str(tpl), out=str(naive_out))),
                           repeat, env, setup_naive)
        naive_out.unlink(missing_ok=True)
        pair = Pair(size, fmt, ours, base)
        setup_ours()
        done = run_checked("import check: the same command with -X importtime (untimed)",
                           [sys.executable, "-X", "importtime", *cli_args], env)
        if done is not None:
            pair.extra["torch"], pair.extra["numpy"] = torch_imported(done.stderr)
            verified = run_checked("verifying OUT (untimed)",
                                   py(FILE_VERIFY.format(out=str(out), src=str(files["src"]["safetensors"]),
                                                         tpl=str(files["tpl"]["safetensors"]), size=size)), env)
            pair.extra["verified"] = verified is not None
        out.unlink(missing_ok=True)
        pair.extra["largest"] = largest_tensor_mb(tpl)
        pairs.append(pair)
    for pair in pairs:
        name = f"2 file {size}.{pair.fmt}"
        largest_name, largest = pair.extra["largest"]
        if not ok(pair.ours):
            fail(name, "ckptsurgeon transfer CLI", "the command failed")
            continue
        if pair.extra.get("verified"):
            check(name, "OUT is right", True, "template's keys; 4 new with the template's values, the rest equal "
                  "the shifted source")
        else:
            fail(name, "OUT is right", "verification failed or did not run")
        limit = FILE_PEAK_BASE_MB + 2 * largest
        check(name, f"peak < {FILE_PEAK_BASE_MB:.0f} MiB + 2 x largest tensor", pair.ours.peak_anon_mb < limit,
              f"{pair.ours.peak_anon_mb:.0f} MiB < {limit:.0f} MiB (largest {largest:.0f} MiB, {largest_name})")
        if ok(pair.base):
            w = pair.ours.wall_s / pair.base.wall_s
            check(name, f"wall <= {FILE_WALL_RATIO}x naive", w <= FILE_WALL_RATIO,
                  f"{w:.2f}x ({pair.ours.wall_s:.2f} s vs {pair.base.wall_s:.2f} s; cpu {pair.ours.cpu_s:.2f} s vs "
                  f"{pair.base.cpu_s:.2f} s = {ratio(pair.ours.cpu_s, pair.base.cpu_s)})")
        else:
            fail(name, f"wall <= {FILE_WALL_RATIO}x naive", "the naive command failed")
        stretch = STRETCH_PEAK_BASE_MB + largest
        imported = pair.extra.get("torch")
        check(name, f"stretch: peak < {STRETCH_PEAK_BASE_MB:.0f} MiB + largest, no torch",
              pair.ours.peak_anon_mb < stretch and imported is False,
              f"{pair.ours.peak_anon_mb:.0f} MiB < {stretch:.0f} MiB; torch imported: "
              f"{'?' if imported is None else 'yes' if imported else 'no'}")
    return pairs


def file_table(pairs: Sequence[Pair]) -> str:
    rows = []
    for p in pairs:
        t = p.extra.get("torch")
        rows.append({
            "source -> template": f"{p.size}.{p.fmt}",
            "largest MiB": f"{p.extra['largest'][1]:.0f}",
            "naive s": wall(p.base), "cpu s": cpu(p.base), "MiB": peak(p.base),
            "ckptsurgeon s": wall(p.ours), "cpu s ": cpu(p.ours), "MiB ": peak(p.ours),
            "wall ratio": ratio(p.ours.wall_s, p.base.wall_s) if ok(p.ours) and ok(p.base) else "-",
            "cpu ratio": ratio(p.ours.cpu_s, p.base.cpu_s) if ok(p.ours) and ok(p.base) else "-",
            "imports torch": "?" if t is None else ("yes" if t else "no"),
            "numpy": "?" if p.extra.get("numpy") is None else ("yes" if p.extra["numpy"] else "no"),
        })
    return format_table(rows)


# --------------------------------------------------------------------------- case 3: planning


def plan_specs(blocks: int, insert_at: int | None) -> dict:
    """``model.<i>.conv.weight`` + ``model.<i>.bn.{weight,bias,running_mean,running_var}`` (5 keys a block),
    channels cycling through PLAN_CHANNELS, 1x1 and 3x3 kernels; with ``insert_at`` a squeeze-excite
    block (4 keys, shaped like no other) is inserted at that index of the top-level sequence."""
    from ckptsurgeon.specs import TensorSpec

    specs: dict[str, TensorSpec] = {}

    def add(name: str, shape: tuple[int, ...]) -> None:
        specs[name] = TensorSpec(name, shape, "float32")

    index = 0
    for block in range(blocks):
        if insert_at is not None and block == insert_at:
            c = 96
            add(f"model.{index}.fc1.weight", (c // 16, c, 1, 1))
            add(f"model.{index}.fc1.bias", (c // 16,))
            add(f"model.{index}.fc2.weight", (c, c // 16, 1, 1))
            add(f"model.{index}.fc2.bias", (c,))
            index += 1
        c_in = PLAN_CHANNELS[(block // 3) % len(PLAN_CHANNELS)]
        c_out = PLAN_CHANNELS[(block // 3 + 1) % len(PLAN_CHANNELS)] if block % 3 == 2 else c_in
        k = 3 if block % 2 else 1
        add(f"model.{index}.conv.weight", (c_out, c_in, k, k))
        for field in ("weight", "bias", "running_mean", "running_var"):
            add(f"model.{index}.bn.{field}", (c_out,))
        index += 1
    return specs


def expected_plan_source(target: str, insert_at: int) -> str | None:
    head, index, rest = target.split(".", 2)
    i = int(index)
    if i == insert_at:
        return None
    return f"{head}.{i - 1 if i > insert_at else i}.{rest}"


def verify_plan(plan, source: dict, target: dict, insert_at: int) -> list[str]:
    from ckptsurgeon.plan import COPY, INIT

    problems = []
    if len(plan.steps) != len(target):
        problems.append(f"{len(plan.steps)} steps for {len(target)} target keys")
    wrong = []
    for step in plan.steps:
        want = expected_plan_source(step.target, insert_at)
        if want is None and step.action != INIT:
            wrong.append(f"{step.target}: {step.action} from {step.source}, expected init")
        elif want is not None and (step.action != COPY or step.source != want):
            wrong.append(f"{step.target}: {step.action} from {step.source}, expected copy from {want}")
    if wrong:
        problems.append(f"{len(wrong)} wrong steps, e.g. " + "; ".join(wrong[:3]))
    if plan.unused:
        problems.append(f"{len(plan.unused)} source keys unused, e.g. {plan.unused[0].source} ({plan.unused[0].reason})")
    used = {step.source for step in plan.steps if step.source}
    if used != set(source):
        problems.append(f"{len(set(source) - used)} source keys not used by any step")
    return problems


def suffix_matrix_match(source: dict, target: dict) -> dict[str, str]:
    """detectron2-style: score every (target, source) pair by the length of their common dotted suffix,
    take each target's best source if the shapes agree. O(n*m) in pure Python."""
    src = [(name, tuple(reversed(name.split("."))), spec.shape) for name, spec in source.items()]
    pairs = {}
    for name, spec in target.items():
        parts = tuple(reversed(name.split(".")))
        best, best_len = None, 0
        for s_name, s_parts, _ in src:
            n = 0
            for a, b in zip(parts, s_parts):
                if a != b:
                    break
                n += 1
            if n > best_len:
                best, best_len = s_name, n
        if best is not None and source[best].shape == spec.shape:
            pairs[name] = best
    return pairs


def time_plan_100k(runs: int = 3) -> tuple[dict, dict, int, list[float], list[float], object]:
    """Plan 100k keys with one module inserted ``runs`` times: (source, target, insert_at, walls, cpus, plan)."""
    from ckptsurgeon.match import make_plan

    insert_at = PLAN_BLOCKS // 2
    source = plan_specs(PLAN_BLOCKS, None)
    target = plan_specs(PLAN_BLOCKS, insert_at)
    walls, cpus, plan = [], [], None
    for _ in range(runs):
        plan = None
        gc.collect()
        w0, c0 = time.perf_counter(), time.process_time()
        plan = make_plan(source, target)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return source, target, insert_at, walls, cpus, plan


def case_plan() -> dict:
    say("case 3: planning only (in process)")
    source, target, insert_at, walls, cpus, plan = time_plan_100k()
    say(f"  make_plan on {len(source):,} -> {len(target):,} keys: wall {', '.join(f'{w:.3f}' for w in walls)} s, "
        f"cpu {', '.join(f'{c:.3f}' for c in cpus)} s")
    problems = verify_plan(plan, source, target, insert_at)
    figures = {"source_keys": len(source), "target_keys": len(target), "wall_s": min(walls), "cpu_s": min(cpus),
               "problems": problems, "suffix": []}
    for blocks in SUFFIX_BASELINE_BLOCKS:
        s, t = plan_specs(blocks, None), plan_specs(blocks, blocks // 2)
        w0, c0 = time.perf_counter(), time.process_time()
        found = suffix_matrix_match(s, t)
        w, c = time.perf_counter() - w0, time.process_time() - c0
        right = sum(found.get(name) == expected_plan_source(name, blocks // 2) for name in t
                    if expected_plan_source(name, blocks // 2) is not None)
        figures["suffix"].append({"source_keys": len(s), "target_keys": len(t), "wall_s": w, "cpu_s": c,
                                  "right": right, "should": len(t) - 4})
        say(f"  suffix matrix on {len(s):,} x {len(t):,} keys: wall {w:.2f} s, cpu {c:.2f} s")
    big = figures["suffix"][-1]
    scale = (len(source) * len(target)) / (big["source_keys"] * big["target_keys"])
    figures["suffix_extrapolated_s"] = big["cpu_s"] * scale
    figures["suffix_scale"] = scale

    name = f"3 plan {len(source) // 1000}k keys"
    if problems:
        for problem in problems:
            say(f"  PLAN IS WRONG: {problem}")
        ERRORS.append("case 3: make_plan gave a wrong plan:\n  " + "\n  ".join(problems))
        fail(name, "plan is right (only the inserted keys init, all sources used)", "; ".join(problems))
    else:
        check(name, "plan is right (only the inserted keys init, all sources used)", True,
              f"{len(target) - 4:,} copy (index shift after model.{insert_at}), 4 init, 0 unused")
    check(name, f"make_plan < {PLAN_WALL_S:.0f} s (best of 3)", figures["wall_s"] < PLAN_WALL_S,
          f"wall {figures['wall_s']:.3f} s, cpu {figures['cpu_s']:.3f} s; suffix matrix extrapolated "
          f"{figures['suffix_extrapolated_s']:,.0f} s")
    return figures


def plan_report(figures: dict) -> str:
    lines = [f"make_plan, {figures['source_keys']:,} source -> {figures['target_keys']:,} target keys "
             f"(one module inserted mid-way into the top-level sequence): best of 3 wall "
             f"{figures['wall_s']:.3f} s, cpu {figures['cpu_s']:.3f} s; "
             f"plan {'RIGHT' if not figures['problems'] else 'WRONG'}"]
    rows = [{"suffix matrix (pure Python)": f"{s['source_keys']:,} x {s['target_keys']:,} keys",
             "wall s": f"{s['wall_s']:.2f}", "cpu s": f"{s['cpu_s']:.2f}",
             "pairs right": f"{s['right']:,} / {s['should']:,}"} for s in figures["suffix"]]
    lines.append(format_table(rows))
    first, last = figures["suffix"][0], figures["suffix"][-1]
    growth = last["cpu_s"] / first["cpu_s"] if first["cpu_s"] else 0.0
    lines.append(f"suffix matrix: {growth:.1f}x the time for 2x the keys (quadratic: 4x); extrapolated to "
                 f"{figures['source_keys']:,} x {figures['target_keys']:,} keys: {last['cpu_s']:.2f} s x "
                 f"{figures['suffix_scale']:,.0f} = {figures['suffix_extrapolated_s']:,.0f} s "
                 f"(~{figures['suffix_extrapolated_s'] / 3600:.1f} h; not run), "
                 f"{figures['suffix_extrapolated_s'] / figures['cpu_s']:,.0f}x make_plan's cpu time")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def selected_sizes(args: argparse.Namespace) -> list[str]:
    if args.only == "plan":
        return []
    if args.only:
        return [args.only]
    return [s for s in SIZES if not (args.quick and s in QUICK_SKIPS)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.repeat < 1:
        sys.exit("--repeat must be >= 1")
    started = time.perf_counter()
    sizes = selected_sizes(args)
    files: dict[str, dict[str, dict[str, Path]]] = {}
    for size in sizes:
        src_spec, tpl_spec = checkpoint_specs(size)
        files[size] = {"src": ensure_checkpoint(src_spec, WORK_DIR).files,
                       "tpl": ensure_checkpoint(tpl_spec, WORK_DIR).files}
    if args.build_only:
        return 0
    env = child_env()
    load_before = os.getloadavg()[0]
    refs: dict[str, Outcome] = {}
    build_refs: dict[str, Outcome] = {}
    live: list[Pair] = []
    filed: list[Pair] = []
    if sizes:
        say("reference commands")
        refs["python -c pass"] = try_measure("ref", py("pass"), args.repeat, env)
        refs["python -c 'import torch'"] = try_measure("ref", py("import torch"), args.repeat, env)
    for size in sizes:
        say(f"case 1, {size}: building the model alone (reference)")
        build_refs[size] = try_measure("build only", py(BUILD_ONLY.format(size=size)), args.repeat, env)
        refs[f"build {size} model (inserted)"] = build_refs[size]
        live += case_live(size, files[size], build_refs[size], args.repeat, env)
    for size in sizes:
        filed += case_file(size, files[size], args.repeat, env)
    plan = case_plan() if args.only in (None, "plan") else None

    print(f"\nwhole-process wall time and CPU time (median of {args.repeat}), peak private memory "
          f"(max RssAnon of the process tree over {args.repeat} runs, MiB); page cache warm before each run")
    print(load_line(load_before))
    if refs:
        print("\nreference commands")
        print(format_table([{"command": k, "wall s": wall(v), "cpu s": cpu(v), "peak MiB": peak(v)}
                            for k, v in refs.items()]))
    if live:
        print("\ncase 1: live model, library call, into the model with one module inserted "
              "(loaded = ckptsurgeon's non-bookkeeping copies, +bk = num_batches_tracked too; baseline keeps "
              "exact name+shape matches)")
        print(live_table(live, build_refs))
    if filed:
        print("\ncase 2: file to file, `ckptsurgeon transfer SRC --target TEMPLATE -o OUT.safetensors` vs naive "
              "load-both / intersect / save")
        print(file_table(filed))
    if plan is not None:
        print("\ncase 3: planning only, in process")
        print(plan_report(plan))
    return finish([{"case": c.case, "status": c.status, "target": c.target, "figures": c.figures} for c in CHECKS],
                  ERRORS, started)

if __name__ == "__main__":
    sys.exit(main())
