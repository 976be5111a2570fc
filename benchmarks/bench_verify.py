"""verify on the YOLOv7-size stand-in (width 32, 80 classes, SE blocks in the head), in-process.

Both models are built and loaded before timing; one 1x3x640x640 batch is given. The baseline is the two
forward passes alone (original, then modified, eval mode, ``torch.no_grad()``) in the same run; verify
(planning the module pairs included) must stay within 3x of it. Each figure is the median of --repeat runs.

    python benchmarks/bench_verify.py [--repeat 3] [--size 640] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from measure import finish  # noqa: E402

import ckptsurgeon as cs  # noqa: E402
from ckptsurgeon.examples.yolov7 import YoloBody  # noqa: E402
from ckptsurgeon.model.verify import verify  # noqa: E402

TARGET_RATIO = 3.0


def median_seconds(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    original = YoloBody(num_classes=80, width=32).eval()
    modified = YoloBody(num_classes=80, width=32, head_attention="se").eval()
    cs.transfer(original.state_dict(), modified, init=["feat*_att.fc.2.weight=zeros"])
    return original, modified


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    original, modified = models()
    batch = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))

    def forwards() -> None:
        with torch.no_grad():
            original(batch)
            modified(batch)

    forwards()   # warm-up: allocator and kernels
    baseline = median_seconds(forwards, args.repeat)
    result = verify(original, modified, inputs=[batch])
    measured = median_seconds(lambda: verify(original, modified, inputs=[batch]), args.repeat)
    ratio = measured / baseline
    print(f"YOLOv7 stand-in (width 32, {sum(p.numel() for p in modified.parameters()) / 1e6:.1f}M parameters), "
          f"1x3x{args.size}x{args.size}, {args.threads} threads, median of {args.repeat}")
    print(f"  two forward passes: {baseline:.3f} s")
    print(f"  verify:             {measured:.3f} s  ({ratio:.2f}x; {len(result.modules)} module calls compared, "
          f"first divergence {result.first_divergence.name if result.first_divergence else None})")
    check = {"target": f"verify within {TARGET_RATIO:g}x of the two forward passes", "measured": f"{ratio:.2f}x",
             "status": "PASS" if ratio <= TARGET_RATIO else "MISS"}
    return finish([check], [], started)


if __name__ == "__main__":
    sys.exit(main())
