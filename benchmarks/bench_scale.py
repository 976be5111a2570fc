#!/usr/bin/env python
"""Benchmark ckptsurgeon on an 8 GiB sharded checkpoint (issue 11) and a live fp16 -> fp32 transfer.

    python benchmarks/bench_scale.py [--repeat N] [--only inspect|convert|transfer|baseline|live] [--build-only]

1. An 8 GiB fp32 checkpoint (64 Linear-like matrices of 128 MiB, ``layers.<i>.weight``/``.bias``) saved twice:
   by ``torch.distributed.checkpoint.save`` (``FileSystemWriter(dir, thread_count=4)``, one process, no
   process group: 4 ``.distcp`` shards) and as 4 safetensors shards with ``model.safetensors.index.json``.
   Measured: ``inspect`` of both folders; ``convert DCP OUT --format safetensors-sharded``; ``transfer DCP
   --target TEMPLATE -o OUT --format safetensors-sharded`` into the same stack with one block inserted
   mid-way (``layers.32`` new, every later index shifted); ``cp -r --reflink=never`` of the DCP folder as
   the yardstick; the load-everything baseline (``dcp_to_torch_save`` to a ``.pt``, then ``torch.load`` +
   ``safetensors.torch.save_file``, two processes).
2. ``ckptsurgeon.transfer(SRC_fp16, model)`` into the live fp32 ``transfer_models`` "big" model with one
   module inserted, SRC the 1.5 GB ``xfer-big-src.safetensors`` cast to fp16 by ``ckptsurgeon cast``.

Every command is a whole process (measure.py: median wall and CPU time, max peak RssAnon of the process tree),
inputs read just before every run (page cache warm), outputs deleted before every run. Data is built once and
cached in benchmarks/_work/ (~16 GiB). Exit status 0 even when targets are missed; 1 when a measured command
failed (a command or option that does not exist yet is a FAIL row with its error).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench_transfer import (CHECKS, ERRORS, Outcome, check, child_env, cpu, fail, largest_tensor_mb, load_line, ok,
                            peak, py, ratio, run_checked, say, try_measure, wall)
from measure import MIB, finish, format_table, warm_cache

WORK_DIR = Path(__file__).resolve().parent / "_work"
VERSION = 1                     # bump when a builder below changes
LAYERS = 64                     # alternating (WIDE, NARROW) and (NARROW, WIDE) fp32 matrices, 128 MiB each
NARROW, WIDE = 4096, 8192
SHARDS = 4
INSERT_AT = 32                  # the template's inserted block: layers.32.{weight,bias} of shape (NARROW,)
DCP_DIR = WORK_DIR / "scale-dcp"
ST_DIR = WORK_DIR / "scale-st"
TEMPLATE = WORK_DIR / "scale-tpl.safetensors"
MANIFEST = WORK_DIR / "scale.manifest.json"
BIG_SRC = WORK_DIR / "xfer-big-src.safetensors"   # bench_transfer.py's cached source
BIG_FP16 = WORK_DIR / "scale-big-src-fp16.safetensors"
CASES = ("inspect", "convert", "transfer", "baseline", "live")

# targets (issue 11)
INSPECT_WALL_S = 0.5            # inspect of either folder
STREAM_PEAK_BASE_MB = 300.0     # convert / transfer: peak < 300 MiB + 2 x the largest tensor
COPY_WALL_RATIO = 1.5           # convert / transfer: wall <= 1.5 x cp -r of the same folder
LIVE_PEAK_BASE_MB = 300.0       # live fp16 -> fp32: peak <= the model + 2 x the largest tensor + 300 MiB


# --------------------------------------------------------------------------- data


def layer_shapes() -> dict[str, tuple[int, ...]]:
    """The 8 GiB model's keys and shapes, in order."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(LAYERS):
        rows, cols = (WIDE, NARROW) if i % 2 == 0 else (NARROW, WIDE)
        shapes[f"layers.{i}.weight"] = (rows, cols)
        shapes[f"layers.{i}.bias"] = (rows,)
    return shapes


def expected_value(index: int, key: str, row: int, rows: int) -> float:
    """Tensor ``index`` (in key order) holds ``index + 1 + row / rows`` in every element of each row: distinct
    tensors, cheap to build and to check."""
    return index + 1 + row / rows


def build_tensor(index: int, key: str, shape: tuple[int, ...]):
    import torch

    rows = shape[0]
    column = torch.arange(rows, dtype=torch.float64).div_(rows).add_(index + 1).to(torch.float32)
    return column if len(shape) == 1 else column[:, None].expand(shape).contiguous()


def shard_of(index: int, count: int) -> int:
    return index * SHARDS // count


def shard_name(shard: int) -> str:
    return f"model-{shard + 1:05d}-of-{SHARDS:05d}.safetensors"


def write_safetensors_header_only(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """A valid fp32 safetensors file whose data region is a hole (sparse file, zeros, no disk used): a template
    only needs keys, shapes and dtypes, and its values only for the inserted (new) tensors."""
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = 4
        for dim in shape:
            size *= dim
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as stream:
        stream.write(len(raw).to_bytes(8, "little") + raw)
        stream.truncate(8 + len(raw) + offset)
    os.replace(tmp, path)


def template_shapes() -> dict[str, tuple[int, ...]]:
    """The same stack with one norm-like block (weight, bias of shape (NARROW,)) inserted at ``INSERT_AT``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for key, shape in layer_shapes().items():
        index = int(key.split(".")[1])
        if index == INSERT_AT and key.endswith(".weight"):
            shapes[f"layers.{INSERT_AT}.weight"] = (NARROW,)
            shapes[f"layers.{INSERT_AT}.bias"] = (NARROW,)
        shifted = index + 1 if index >= INSERT_AT else index
        shapes[f"layers.{shifted}.{key.split('.')[2]}"] = shape
    return shapes


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def cached() -> bool:
    try:
        manifest = json.loads(MANIFEST.read_text())
        return (manifest["version"] == VERSION and folder_bytes(DCP_DIR) == manifest["dcp_bytes"]
                and folder_bytes(ST_DIR) == manifest["st_bytes"] and TEMPLATE.stat().st_size == manifest["tpl_bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def build_scale() -> None:
    """Both 8 GiB folders and the sparse template; the tensors are built once and written twice."""
    import warnings

    import safetensors.torch
    import torch.distributed.checkpoint as dcp

    say(f"building the 8 GiB checkpoint ({LAYERS} x 128 MiB) in {DCP_DIR} and {ST_DIR} ...")
    start = time.perf_counter()
    MANIFEST.unlink(missing_ok=True)
    for folder in (DCP_DIR, ST_DIR):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    shapes = layer_shapes()
    state = {key: build_tensor(i, key, shape) for i, (key, shape) in enumerate(shapes.items())}
    say(f"  tensors built in {time.perf_counter() - start:.1f} s")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group: saving in a single process"
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(DCP_DIR), thread_count=SHARDS))
    say(f"  DCP written at {time.perf_counter() - start:.1f} s")
    weight_map, keys = {}, list(state)
    for shard in range(SHARDS):
        part = {k: state[k] for i, k in enumerate(keys) if shard_of(i, len(keys)) == shard}
        safetensors.torch.save_file(part, str(ST_DIR / shard_name(shard)), metadata={"format": "pt"})
        weight_map.update({k: shard_name(shard) for k in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (ST_DIR / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    del state
    write_safetensors_header_only(TEMPLATE, template_shapes())
    MANIFEST.write_text(json.dumps({"version": VERSION, "dcp_bytes": folder_bytes(DCP_DIR),
                                    "st_bytes": folder_bytes(ST_DIR), "tpl_bytes": TEMPLATE.stat().st_size}))
    say(f"  built in {time.perf_counter() - start:.1f} s")


def ensure_fp16(env: dict[str, str]) -> Path | None:
    """``xfer-big-src.safetensors`` cast to fp16 by ``ckptsurgeon cast`` (cached; None when it cannot be made)."""
    if BIG_FP16.exists() and BIG_FP16.stat().st_mtime >= BIG_SRC.stat().st_mtime:
        return BIG_FP16
    cmd = [sys.executable, "-m", "ckptsurgeon", "cast", str(BIG_SRC), str(BIG_FP16), "--dtype", "fp16", "--force"]
    return BIG_FP16 if run_checked("casting xfer-big-src.safetensors to fp16 (cached)", cmd, env) else None


# --------------------------------------------------------------------------- scripts

BASELINE_DCP_TO_PT = """
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
dcp_to_torch_save({dcp!r}, {pt!r})
"""

BASELINE_PT_TO_ST = """
import torch, safetensors.torch
sd = torch.load({pt!r}, weights_only=True)
safetensors.torch.save_file(sd, {out!r})
"""

LIVE_OURS = """
import dataclasses, json, ckptsurgeon
from transfer_models import build_model
model = build_model("big", inserted=True)
report = ckptsurgeon.transfer({src!r}, model)
print(json.dumps(dataclasses.asdict(report.counts())))
"""

LIVE_BUILD = """
from transfer_models import build_model
model = build_model("big", inserted=True)
"""

# OUT (a folder with model.safetensors.index.json) against the builder's pattern: the first and last row of
# every tensor; the template's inserted tensors (zeros) where it has them; untimed
VERIFY = """
import json, pathlib
from safetensors import safe_open
out, expected, inserted = pathlib.Path({out!r}), {expected!r}, set({inserted!r})
index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
assert sorted(index) == sorted(list(expected) + list(inserted)), (len(index), len(expected) + len(inserted))
handles = {{name: safe_open(str(out / name), "pt") for name in set(index.values())}}
for key, file in index.items():
    tensor = handles[file].get_slice(key)
    rows = tensor.get_shape()[0]
    for row in (0, rows - 1):
        got = tensor[row:row + 1].flatten()
        want = 0.0 if key in inserted else expected[key] + 1 + row / rows
        assert bool((got == got[0]).all()) and abs(float(got[0]) - want) < 1e-6 * max(1.0, want), (key, row)
print("OUT checked:", len(index), "tensors")
"""


# --------------------------------------------------------------------------- cases


def warming(out: Path | None, *inputs: Path) -> Callable[[], None]:
    def run() -> None:
        if out is not None:
            remove(out)
        for source in inputs:
            if source == TEMPLATE:   # sparse: its 8 GiB of holes would push the DCP folder out of the page cache
                with open(source, "rb") as stream:
                    stream.read(MIB)
            else:
                warm_cache(source)
    return run


def remove(path: Path) -> None:
    """Delete an output, and the temporary folders a killed or failed writer may have left beside it."""
    for leftover in [path, *path.parent.glob(f".{path.name}.ckptsurgeon-tmp-*")]:
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink(missing_ok=True)


def ckpt(*args: str) -> list[str]:
    return [sys.executable, "-m", "ckptsurgeon", *args]


def case_inspect(repeat: int, env: dict[str, str]) -> list[dict]:
    rows = []
    for label, folder in (("DCP", DCP_DIR), ("safetensors shards", ST_DIR)):
        name = f"inspect {label} folder"
        say(name)
        outcome = try_measure("ckptsurgeon", ckpt("inspect", str(folder)), repeat, env, warming(None, folder))
        rows.append({"name": name, "ours": outcome})
        target = f"wall < {INSPECT_WALL_S} s"
        if ok(outcome):
            check(name, target, outcome.wall_s < INSPECT_WALL_S,
                  f"{outcome.wall_s:.2f} s (cpu {outcome.cpu_s:.2f} s, peak {outcome.peak_anon_mb:.0f} MiB)")
        else:
            fail(name, target, failure(outcome))
    return rows


def failure(outcome: Outcome) -> str:
    lines = [line.strip() for line in str(outcome).splitlines() if line.strip()]
    return f"the command failed: {lines[-1][:150]}"


def case_stream(kind: str, copy: Outcome | None, repeat: int, env: dict[str, str]) -> dict:
    """``convert`` or ``transfer`` of the DCP folder to ``--format safetensors-sharded``; OUT checked once."""
    out = WORK_DIR / f"scale-{kind}-out"
    if kind == "convert":
        cmd = ckpt("convert", str(DCP_DIR), str(out), "--format", "safetensors-sharded")
        name, inputs = "convert DCP -> safetensors-sharded", (DCP_DIR,)
    else:
        cmd = ckpt("transfer", str(DCP_DIR), "--target", str(TEMPLATE), "-o", str(out),
                   "--format", "safetensors-sharded")
        name, inputs = "transfer DCP -> template (+1 block), safetensors-sharded", (DCP_DIR, TEMPLATE)
    say(name)
    ours = try_measure("ckptsurgeon", cmd, repeat, env, warming(out, *inputs))
    verified = None
    if ok(ours):
        verified = verify_out(out, shifted=kind == "transfer", env=env)
    remove(out)
    largest = max(4 * r * c for r, c in (s for s in layer_shapes().values() if len(s) == 2)) / MIB
    limit = STREAM_PEAK_BASE_MB + 2 * largest
    peak_target = f"peak < {STREAM_PEAK_BASE_MB:.0f} MiB + 2 x largest tensor"
    wall_target = f"wall <= {COPY_WALL_RATIO}x cp -r"
    if not ok(ours):
        fail(name, peak_target, failure(ours))
        fail(name, wall_target, failure(ours))
    else:
        check(name, peak_target, ours.peak_anon_mb < limit,
              f"{ours.peak_anon_mb:.0f} MiB < {limit:.0f} MiB (largest {largest:.0f} MiB)")
        if ok(copy):
            w = ours.wall_s / copy.wall_s
            check(name, wall_target, w <= COPY_WALL_RATIO,
                  f"{w:.2f}x ({ours.wall_s:.1f} s vs {copy.wall_s:.1f} s; cpu {ours.cpu_s:.1f} s vs {copy.cpu_s:.1f} s)")
        else:
            fail(name, wall_target, "cp -r was not measured or failed")
        if verified is False:
            fail(name, "OUT holds the expected tensors", "it differs or could not be read: see the errors below")
        elif verified:
            check(name, "OUT holds the expected tensors", True, "keys, first and last row of every tensor")
    return {"name": name, "ours": ours, "verified": verified, "big": True}


def verify_out(out: Path, *, shifted: bool, env: dict[str, str]) -> bool:
    expected = {}
    for i, key in enumerate(layer_shapes()):
        layer, field = int(key.split(".")[1]), key.split(".")[2]
        layer = layer + 1 if shifted and layer >= INSERT_AT else layer
        expected[f"layers.{layer}.{field}"] = i
    inserted = [f"layers.{INSERT_AT}.weight", f"layers.{INSERT_AT}.bias"] if shifted else []
    code = VERIFY.format(out=str(out), expected=expected, inserted=inserted)
    return run_checked("checking OUT (untimed)", py(code), env) is not None


def case_copy(repeat: int, env: dict[str, str]) -> dict:
    out = WORK_DIR / "scale-cp-out"
    say("cp -r of the DCP folder (yardstick)")
    outcome = try_measure("cp", ["cp", "-r", "--reflink=never", str(DCP_DIR), str(out)], repeat, env,
                          warming(out, DCP_DIR))
    remove(out)
    return {"name": "cp -r --reflink=never DCP folder", "ours": outcome, "big": True}


def case_baseline(repeat: int, env: dict[str, str]) -> list[dict]:
    """dcp_to_torch_save, then torch.load + save_file: two processes; skipped without the memory for them."""
    pt, out = WORK_DIR / "scale-base.pt", WORK_DIR / "scale-base.safetensors"
    size = folder_bytes(DCP_DIR) / MIB
    if available_memory_mb() < 2 * size + 2048:
        say(f"baseline skipped: {available_memory_mb():.0f} MiB available, needs {2 * size + 2048:.0f} MiB")
        return [{"name": "baseline: skipped (too little free memory)", "ours": None}]
    say("baseline: dcp_to_torch_save, then torch.load + safetensors save_file")
    first = try_measure("dcp_to_torch_save", py(BASELINE_DCP_TO_PT.format(dcp=str(DCP_DIR), pt=str(pt))),
                        repeat, env, warming(pt, DCP_DIR))
    second = (try_measure("torch.load + save_file", py(BASELINE_PT_TO_ST.format(pt=str(pt), out=str(out))),
                          repeat, env, warming(out, pt)) if ok(first) else None)
    remove(pt)
    remove(out)
    return [{"name": "baseline 1/2: dcp_to_torch_save -> .pt", "ours": first, "big": True, "baseline": True},
            {"name": "baseline 2/2: torch.load + save_file", "ours": second, "big": True, "baseline": True}]


def case_live(repeat: int, env: dict[str, str]) -> list[dict]:
    name = "live: fp16 1.5 GB safetensors -> fp32 big model (+1 module)"
    fp16 = ensure_fp16(env)
    say(name)
    build = try_measure("build the model alone", py(LIVE_BUILD), repeat, env)
    ours = (try_measure("ckptsurgeon.transfer", py(LIVE_OURS.format(src=str(fp16))), repeat, env, warming(None, fp16))
            if fp16 else None)
    target = f"peak <= model + 2 x largest tensor + {LIVE_PEAK_BASE_MB:.0f} MiB"
    tpl = WORK_DIR / "xfer-big-tpl.safetensors"   # the fp32 model's state dict: its own size
    from ckptsurgeon.io import read_specs  # no torch

    specs, _ = read_specs(tpl)
    model_mb = sum(s.nbytes for s in specs.values()) / MIB
    largest_name, largest = largest_tensor_mb(tpl)
    limit = model_mb + 2 * largest + LIVE_PEAK_BASE_MB
    if not ok(ours):
        fail(name, target, failure(ours) if ours is not None else "no fp16 source: the cast failed")
    else:
        check(name, target, ours.peak_anon_mb <= limit,
              f"{ours.peak_anon_mb:.0f} MiB <= {limit:.0f} MiB (model {model_mb:.0f} MiB, largest {largest:.0f} "
              f"MiB {largest_name}; building the model alone {peak(build)} MiB)")
        print(f"live transfer counts: {ours.stdout_tail.strip().splitlines()[-1][:300]}")
    return [{"name": "live: build the fp32 model alone (reference)", "ours": build},
            {"name": name, "ours": ours}]


def available_memory_mb() -> float:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 0.0


def table(rows: Sequence[dict], copy: Outcome | None) -> str:
    """One row a command; the 8 GiB commands' wall against ``cp -r`` and the baseline's two steps together."""
    steps = [r["ours"] for r in rows if r.get("baseline")]
    base_wall = sum(o.wall_s for o in steps) if steps and all(ok(o) for o in steps) else None

    def versus(r: dict, reference: float | None) -> str:
        return ratio(r["ours"].wall_s, reference) if r.get("big") and ok(r["ours"]) and reference else "-"
    return format_table([{
        "command": r["name"],
        "wall s": wall(r["ours"]) if r["ours"] is not None else "-",
        "cpu s": cpu(r["ours"]) if r["ours"] is not None else "-",
        "peak MiB": peak(r["ours"]) if r["ours"] is not None else "-",
        "vs cp -r": versus(r, copy.wall_s if ok(copy) else None),
        "vs baseline": versus(r, base_wall),
        "OUT": {None: "-", True: "checked", False: "WRONG"}[r.get("verified")],
    } for r in rows]) + (f"\nbaseline, both steps: {base_wall:.2f} s wall, peak {max(o.peak_anon_mb for o in steps):.0f} MiB"
                         if base_wall else "")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per 8 GiB command (default 1: each reads and writes 8 GiB); inspect and the "
                             "live case run 3 times")
    parser.add_argument("--only", choices=CASES, help="one case (convert and transfer include cp -r)")
    parser.add_argument("--build-only", action="store_true", help="build the cached data, measure nothing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    cases = [args.only] if args.only else list(CASES)
    env = child_env()
    if set(cases) - {"live"} and not cached():
        build_scale()
    if args.build_only:
        if "live" in cases:
            ensure_fp16(env)
        return 0
    load_before, rows = os.getloadavg()[0], []
    copy = None
    if "inspect" in cases:
        rows += case_inspect(max(3, args.repeat), env)
    if {"convert", "transfer"} & set(cases):
        rows.append(case_copy(args.repeat, env))
        copy = rows[-1]["ours"]
        rows += [case_stream(kind, copy, args.repeat, env) for kind in ("convert", "transfer") if kind in cases]
    if "baseline" in cases:
        rows += case_baseline(args.repeat, env)
    if "live" in cases:
        rows += case_live(max(3, args.repeat), env)
    print(f"\nwhole-process wall and CPU time (median), peak private memory (max RssAnon of the process tree, MiB); "
          f"page cache warm; 8 GiB commands run {args.repeat} time(s), inspect and live 3")
    print(load_line(load_before))
    print(f"input: {folder_bytes(DCP_DIR) / MIB:.0f} MiB DCP ({len(list(DCP_DIR.glob('*.distcp')))} .distcp files), "
          f"{folder_bytes(ST_DIR) / MIB:.0f} MiB safetensors ({SHARDS} shards + index); "
          f"{len(layer_shapes())} tensors, largest 128 MiB")
    print(table(rows, copy))
    return finish([{"case": c.case, "status": c.status, "target": c.target, "figures": c.figures} for c in CHECKS],
                  ERRORS, started)


if __name__ == "__main__":
    sys.exit(main())
