#!/usr/bin/env python
"""Benchmark the surgery commands on 1.5 GB checkpoints against load-everything scripts.

    python benchmarks/bench_surgery.py [--repeat N] [--only average|cast|extract|fuse-bn] [--build-only]

1. ``ckptsurgeon average IN0..IN4 -o OUT`` (``.safetensors`` and ``.pt`` outputs) over 5 distinct ~1.5 GB fp32
   checkpoints vs ``torch.load`` of all 5, a per-key mean and ``torch.save``;
2. ``cast --dtype fp16``, ``extract --prefix backbone --strip`` and ``fuse-bn --pairs FILE`` on a ~1.5 GB
   Conv2d(1024, 1024, 3) + BatchNorm2d checkpoint vs ``torch.load`` + the same edit + ``torch.save``.

Every command is a whole process (measure.py: median wall and CPU time, max peak RssAnon of the process tree),
inputs read just before every run (page cache warm). Each OUT is checked once, untimed, against the baseline's
output. Checkpoints are built once and cached in benchmarks/_work/ (~9 GB). Exit status 0 even when targets
are missed; 1 when a measured command or a check failed (a command that does not exist yet is a FAIL row).
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
from checkpoints import CheckpointSpec, build_big
from measure import MIB, finish, format_table, warm_cache

WORK_DIR = Path(__file__).resolve().parent / "_work"
VERSION = 1                    # bump when a builder below changes
AVERAGED = 5                   # inputs of the average case
CONV_PAIRS = {"backbone": 32, "head": 8}   # Conv2d(1024, 1024, 3) + BatchNorm2d blocks: 40 x 36 MiB
CHANNELS = 1024
CASES = ("average", "cast", "extract", "fuse-bn")

# targets
AVERAGE_PEAK_BASE_MB = 300.0   # the issue: average peak < 300 MiB + 3 x the largest tensor
STREAM_PEAK_BASE_MB = 300.0    # one-checkpoint commands streamed like transfer (bench_transfer case 2):
STREAM_WALL_RATIO = 0.5        # peak < 300 MiB + 2 x largest, wall <= 0.5 x the naive script's


# --------------------------------------------------------------------------- checkpoints


def build_filled(index: int) -> dict:
    """``checkpoints.build_big``'s shapes (~1.5 GB, largest 84 MiB), every element ``index + 1``."""
    state = build_big()
    for tensor in state.values():
        tensor.fill_(float(index + 1))
    return state


def build_conv_bn() -> dict:
    """Conv2d(1024, 1024, 3, bias=False) + BatchNorm2d blocks under ``backbone.<i>`` and ``head.<i>``, seeded."""
    import torch

    generator = torch.Generator().manual_seed(0)
    state: dict = {}
    for prefix, count in CONV_PAIRS.items():
        for i in range(count):
            p = f"{prefix}.{i}"
            state[f"{p}.conv.weight"] = torch.randn(CHANNELS, CHANNELS, 3, 3, generator=generator) * 0.01
            state[f"{p}.bn.weight"] = torch.rand(CHANNELS, generator=generator) + 0.5
            state[f"{p}.bn.bias"] = torch.randn(CHANNELS, generator=generator)
            state[f"{p}.bn.running_mean"] = torch.randn(CHANNELS, generator=generator)
            state[f"{p}.bn.running_var"] = torch.rand(CHANNELS, generator=generator) + 0.5
            state[f"{p}.bn.num_batches_tracked"] = torch.tensor(1000)
    return state


def ensure_pth(spec: CheckpointSpec) -> Path:
    """The cached ``<name>.pth`` (torch zip only: the ``.safetensors`` twin of checkpoints.py would double the
    ~9 GB), rebuilt when its manifest's version or size does not match."""
    path, manifest = WORK_DIR / f"{spec.name}.pth", WORK_DIR / f"{spec.name}.manifest.json"
    try:
        recorded = json.loads(manifest.read_text())
        if recorded["version"] == spec.version and path.stat().st_size == recorded["bytes"]:
            return path
    except (OSError, ValueError, KeyError, TypeError):
        pass
    import torch

    say(f"building {spec.name} ({spec.description}) ...")
    start = time.perf_counter()
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    manifest.unlink(missing_ok=True)
    state = spec.build()
    torch.save(state, path.with_name(path.name + ".tmp"))
    os.replace(path.with_name(path.name + ".tmp"), path)
    manifest.write_text(json.dumps({"version": spec.version, "tensors": len(state), "bytes": path.stat().st_size}))
    say(f"  built in {time.perf_counter() - start:.1f} s")
    return path


def pairs_file() -> Path:
    path = WORK_DIR / "surg-convbn.pairs.json"
    path.write_text(json.dumps([[f"{p}.{i}.conv", f"{p}.{i}.bn"] for p, n in CONV_PAIRS.items() for i in range(n)]))
    return path


def free_disk_gb() -> float:
    return shutil.disk_usage(WORK_DIR if WORK_DIR.exists() else WORK_DIR.parent).free / 2**30


def available_memory_mb() -> float:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 0.0


# --------------------------------------------------------------------------- scripts

NAIVE_AVERAGE = """
import torch
paths = {paths!r}
states = [torch.load(p, weights_only=True) for p in paths]
mean = {{k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
        for k, v in states[0].items()}}
torch.save(mean, {out!r})
"""

NAIVE_EDIT = {
    "cast": "sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}",
    "extract": "sd = {k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')}",
    "fuse-bn": """
for conv, bn in json.load(open({pairs!r})):
    w, var = sd[bn + ".weight"], sd[bn + ".running_var"]
    scale = w / torch.sqrt(var + 1e-5)
    sd[conv + ".weight"] = sd[conv + ".weight"] * scale.reshape(-1, 1, 1, 1)
    sd[conv + ".bias"] = sd[bn + ".bias"] - sd[bn + ".running_mean"] * scale
    for field in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        del sd[bn + "." + field]
""",
}

NAIVE_LOAD_EDIT_SAVE = """
import json, torch
sd = torch.load({src!r}, weights_only=True)
{edit}
torch.save(sd, {out!r})
"""

# OUT against the naive script's output, key by key (both read lazily); exact unless a tolerance is given
VERIFY = """
import torch
from ckptsurgeon.io import open_checkpoint
with open_checkpoint({ours!r}) as ours, open_checkpoint({naive!r}) as naive:
    assert sorted(ours.specs) == sorted(naive.specs), (len(ours.specs), len(naive.specs))
    for key in naive.specs:
        a, b = ours[key], naive[key]
        assert a.dtype == b.dtype and a.shape == b.shape, key
        assert torch.allclose(a.double(), b.double(), rtol={rtol}, atol={atol}), key
print("equal to the naive output:", len(naive.specs), "tensors")
"""


# --------------------------------------------------------------------------- cases


def measured_pair(name: str, ours_cmd: list[str], naive_cmd: list[str] | None, inputs: Sequence[Path],
                  outs: tuple[Path, Path], repeat: int, env: dict[str, str], tolerance: tuple[float, float]) -> dict:
    """Measure ckptsurgeon and the naive script (None: its output is already there), then check OUT against
    the naive output; OUT is deleted, the naive output kept (the caller deletes it)."""
    out, naive_out = outs

    def setup(path: Path) -> Callable[[], None]:
        def run() -> None:
            path.unlink(missing_ok=True)
            for source in inputs:
                warm_cache(source)
        return run
    say(f"{name}")
    ours = try_measure("ckptsurgeon", ours_cmd, repeat, env, setup(out))
    base = try_measure("naive", naive_cmd, repeat, env, setup(naive_out)) if naive_cmd else None
    verified = None
    if ok(ours) and naive_out.exists():
        done = run_checked("checking OUT against the naive output (untimed)",
                           py(VERIFY.format(ours=str(out), naive=str(naive_out), rtol=tolerance[0],
                                            atol=tolerance[1])), env)
        verified = done is not None
    out.unlink(missing_ok=True)
    return {"name": name, "ours": ours, "base": base, "verified": verified}


def case_average(files: list[Path], env: dict[str, str], baseline: bool) -> list[dict]:
    """Both output formats, each run once (7.5 GB read a run); the naive script once, beside the first."""
    rows = []
    naive_out = WORK_DIR / "surg-avg-naive.pth"
    naive_out.unlink(missing_ok=True)
    naive = py(NAIVE_AVERAGE.format(paths=[str(f) for f in files], out=str(naive_out))) if baseline else None
    for suffix in (".safetensors", ".pt"):
        out = WORK_DIR / f"surg-avg-out{suffix}"
        cmd = [sys.executable, "-m", "ckptsurgeon", "average", *map(str, files), "-o", str(out), "--force"]
        rows.append(measured_pair(f"average of {len(files)}, OUT{suffix}", cmd, naive, files, (out, naive_out),
                                  1, env, (1e-6, 1e-6)))
        naive = None
    naive_out.unlink(missing_ok=True)
    if not baseline:
        rows[0]["skipped"] = "naive: not run, too little free memory to load every input"
    largest_name, largest = largest_tensor_mb(files[0])
    for row in rows:
        target = f"peak < {AVERAGE_PEAK_BASE_MB:.0f} MiB + 3 x largest tensor"
        verdict(row, target, AVERAGE_PEAK_BASE_MB + 3 * largest, largest_name, largest)
    return rows


def case_edit(name: str, src: Path, pairs: Path, repeat: int, env: dict[str, str]) -> dict:
    out, naive_out = WORK_DIR / f"surg-{name}-out.safetensors", WORK_DIR / f"surg-{name}-naive.pth"
    args = {"cast": ["--dtype", "fp16"], "extract": ["--prefix", "backbone", "--strip"],
            "fuse-bn": ["--pairs", str(pairs)]}[name]
    cmd = [sys.executable, "-m", "ckptsurgeon", name, str(src), str(out), *args, "--force"]
    naive = py(NAIVE_LOAD_EDIT_SAVE.format(src=str(src), out=str(naive_out),
                                           edit=NAIVE_EDIT[name].replace("{pairs!r}", repr(str(pairs)))))
    tolerance = (1e-5, 1e-6) if name == "fuse-bn" else (0.0, 0.0)
    row = measured_pair(f"{name} of the conv/BN checkpoint, OUT.safetensors", cmd, naive, [src],
                        (out, naive_out), repeat, env, tolerance)
    naive_out.unlink(missing_ok=True)
    largest_name, largest = largest_tensor_mb(src)
    verdict(row, f"peak < {STREAM_PEAK_BASE_MB:.0f} MiB + 2 x largest tensor", STREAM_PEAK_BASE_MB + 2 * largest,
            largest_name, largest)
    if ok(row["ours"]) and ok(row["base"]):
        w = row["ours"].wall_s / row["base"].wall_s
        check(row["name"], f"wall <= {STREAM_WALL_RATIO}x naive", w <= STREAM_WALL_RATIO,
              f"{w:.2f}x ({row['ours'].wall_s:.2f} s vs {row['base'].wall_s:.2f} s; cpu "
              f"{ratio(row['ours'].cpu_s, row['base'].cpu_s)})")
    return row


def verdict(row: dict, target: str, limit: float, largest_name: str, largest: float) -> None:
    if not ok(row["ours"]):
        fail(row["name"], target, f"the command failed: {str(row['ours']).splitlines()[-1].strip()[:150]}")
        return
    check(row["name"], target, row["ours"].peak_anon_mb < limit,
          f"{row['ours'].peak_anon_mb:.0f} MiB < {limit:.0f} MiB (largest {largest:.0f} MiB, {largest_name})")
    if row["verified"]:
        check(row["name"], "OUT equals the naive output", True, "key by key")
    elif row["verified"] is False:
        fail(row["name"], "OUT equals the naive output", "it differs or could not be read: see the errors below")


def table(rows: Sequence[dict]) -> str:
    return format_table([{
        "command": r["name"],
        "ckptsurgeon s": wall(r["ours"]), "cpu s": cpu(r["ours"]), "peak MiB": peak(r["ours"]),
        "naive s": wall(r["base"]) if r["base"] else "-", "cpu s ": cpu(r["base"]) if r["base"] else "-",
        "peak MiB ": peak(r["base"]) if r["base"] else "-",
        "wall ratio": ratio(r["ours"].wall_s, r["base"].wall_s) if ok(r["ours"]) and ok(r["base"]) else "-",
        "OUT vs naive": {None: "-", True: "equal", False: "DIFFERS"}[r["verified"]],
    } for r in rows])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs per command of case 2 (default 2; the average "
                                                              "case runs once: it reads 7.5 GB a run)")
    parser.add_argument("--only", choices=CASES, help="one command")
    parser.add_argument("--build-only", action="store_true", help="build the cached checkpoints, measure nothing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    cases = [args.only] if args.only else list(CASES)
    averaged = AVERAGED
    if "average" in cases:
        cached = sum((WORK_DIR / f"surg-avg-{i}.pth").exists() for i in range(AVERAGED))
        room = int((free_disk_gb() - 6.0) / 1.6) + cached    # keep 6 GB free: the outputs and others' work
        if room < AVERAGED:
            averaged = max(2, room)
            say(f"only {free_disk_gb():.0f} GB of disk free: averaging {averaged} checkpoints, not {AVERAGED}")
    avg_files = [ensure_pth(CheckpointSpec(f"surg-avg-{i}", VERSION, f"~1.5 GB, every element {i + 1}",
                                           lambda i=i: build_filled(i))) for i in range(averaged)
                 ] if "average" in cases else []
    conv = ensure_pth(CheckpointSpec("surg-convbn", VERSION, "~1.5 GB, 40 Conv2d(1024, 1024, 3) + BatchNorm2d",
                                     build_conv_bn)) if set(cases) - {"average"} else None
    if args.build_only:
        return 0
    env, load_before = child_env(), os.getloadavg()[0]
    rows: list[dict] = []
    if avg_files:
        need = sum(f.stat().st_size for f in avg_files) * 1.3 / MIB + 2048
        rows += case_average(avg_files, env, baseline=available_memory_mb() > need)
    if conv is not None:
        pairs = pairs_file()
        rows += [case_edit(name, conv, pairs, args.repeat, env) for name in cases if name != "average"]
    print(f"\nwhole-process wall and CPU time (median), peak private memory (max RssAnon of the process tree, MiB); "
          f"page cache warm; average runs once, the others {args.repeat} times")
    print(load_line(load_before))
    if averaged < AVERAGED:
        print(f"NOTE: {averaged} checkpoints averaged, not {AVERAGED}: too little disk")
    sizes = [f"average: {len(avg_files)} x {avg_files[0].stat().st_size / MIB:.0f} MiB"] if avg_files else []
    sizes += [f"cast/extract/fuse-bn: {conv.stat().st_size / MIB:.0f} MiB"] if conv else []
    print("inputs (.pth): " + "; ".join(sizes))
    print(table(rows))
    for row in rows:
        if row.get("skipped"):
            print(f"{row['name']}: {row['skipped']}")
    return finish([{"case": c.case, "status": c.status, "target": c.target, "figures": c.figures} for c in CHECKS],
                  ERRORS, started)


if __name__ == "__main__":
    sys.exit(main())
