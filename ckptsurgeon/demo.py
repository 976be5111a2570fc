"""``ckptsurgeon demo``: the main job on built-in YOLOv7-shaped networks, offline, in seconds.

1. "Pretrained" weights in the naming of the widely used ``nets/yolo.py`` (a plain state dict), moved into
   a variant with SE blocks in the head and a CBAM block inserted into ``backbone.dark3``.
2. An official-layout YOLOv7 ``.pt`` (a whole pickled fp16 model, read without its classes and without
   running its code) into a variant with one layer inserted, so every later ``model.N`` shifts.
Each part prints the report and what the usual exact-name loop would have done with the same pair.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import tempfile
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from .specs import TensorSpec

Echo = Callable[[str], None]
WIDTH = 4


@contextlib.contextmanager
def _workdir(keep: str | None) -> Iterator[str]:
    if keep:
        os.makedirs(keep, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="ckptsurgeon-demo-") as folder:
        yield folder


def run_demo(keep: str | None = None, *, echo: Echo = print) -> None:
    """Run both parts; with ``keep`` the checkpoints, outputs and reports stay in that folder."""
    import torch

    torch.manual_seed(0)
    with _workdir(keep) as folder:
        _part_netsyolo(folder, echo)
        echo("")
        _part_official(folder, echo)
        echo("")
        echo("Your own models: ckptsurgeon transfer PRETRAINED.pth --model mypkg.models:build_model "
             "--model-kwargs '{\"num_classes\": 20}' -o new.safetensors --report report.json  (add --dry-run to "
             "see the plan first)")
        if keep:
            echo(f"files kept in {keep}")


def _title(echo: Echo, text: str) -> None:
    echo(text)
    echo("=" * len(text))


def _part_netsyolo(folder: str, echo: Echo) -> None:
    import torch

    from .examples.yolov7 import build_yolov7
    from .io.writer import write_state_dict
    from .report import report_metadata
    from .engine import transfer

    _title(echo, "1. yolov7_weights.pth -> YOLOv7 + SE blocks in the head + CBAM inserted into backbone.dark3")
    pretrained = build_yolov7(num_classes=80, width=WIDTH)
    source = os.path.join(folder, "yolov7_weights.pth")
    torch.save(pretrained.state_dict(), source)
    model = build_yolov7(num_classes=80, width=WIDTH, head_attention="se", backbone_insert="cbam")
    target_specs = _specs(model)
    report = transfer(source, model)
    echo(report.render(color=sys.stdout.isatty()))
    _echo_exact_name(echo, report, pretrained, target_specs)
    _check_forward(model, echo)
    out = os.path.join(folder, "yolov7_se_cbam.safetensors")
    write_state_dict(out, model.state_dict(), metadata=report_metadata(report), force=True)
    report.save_json(os.path.join(folder, "yolov7_se_cbam.report.json"))
    moved = torch.equal(model.state_dict()["backbone.dark3.2.cv1.conv.weight"],
                        pretrained.state_dict()["backbone.dark3.1.cv1.conv.weight"])
    echo(f"check: backbone.dark3.2 holds the pretrained backbone.dark3.1 weights: {'yes' if moved else 'NO'}")


def _part_official(folder: str, echo: Echo) -> None:
    import torch

    from .examples.official_yolov7 import Model
    from .inspect import inspect_checkpoint
    from .engine import transfer

    _title(echo, "2. official yolov7.pt (whole fp16 model) -> the same model with an SE layer inserted as model.10")
    official = Model(num_classes=80, width=WIDTH)
    source = os.path.join(folder, "yolov7.pt")
    torch.save({"epoch": -1, "best_fitness": None, "training_results": None, "model": copy.deepcopy(official).half(),
                "ema": None, "updates": None, "optimizer": None, "wandb_id": None}, source)
    found = inspect_checkpoint(source)
    info = found.info
    assert info is not None   # a checkpoint's inspection carries what its reader found
    classes = sorted({g.rsplit(".", 1)[-1] for g in info.stubbed_globals})
    echo(f"read safely: {found.total_tensors} tensors from container '{info.container}'; classes stood in "
         f"for, never run: {', '.join(classes)}")
    model = Model(num_classes=80, width=WIDTH, insert_at=10, insert="se")
    target_specs = _specs(model)
    report = transfer(source, model)
    echo(report.headline())
    _echo_exact_name(echo, report, official, target_specs)
    _check_forward(model, echo)


def _specs(model: Any) -> dict[str, TensorSpec]:
    from .specs import specs_of

    return specs_of(model.state_dict())


def _echo_exact_name(echo: Echo, report: Any, source_model: Any, target_specs: dict[str, TensorSpec]) -> None:
    from .baseline import exact_name_outcome

    outcome = exact_name_outcome(report.plan, _specs(source_model), target_specs)
    transferred = sum(1 for s in report.plan.steps if s.is_transferred and not s.target.endswith("num_batches_tracked"))
    echo(f"the usual exact-name loop on the same pair: loaded {len(outcome.loaded)} tensors, of which "
         f"{len(outcome.wrong_layer)} from the wrong layer; missed {len(outcome.missed)} that ckptsurgeon loads "
         f"(ckptsurgeon: {transferred} loaded, all from their own layer)")
    for name in outcome.wrong_layer[:3]:
        step = report.plan.step_for(name)
        truth = step.source if step.is_transferred else "none: it is a new layer"
        echo(f"  e.g. {name} would get {name}; its weights are {truth}")


def _check_forward(model: Any, echo: Echo) -> None:
    import torch

    model.eval()
    with torch.no_grad():
        outputs = model(torch.zeros(1, 3, 64, 64))
    finite = all(torch.isfinite(o).all() for o in outputs)
    echo(f"check: forward pass on a 64x64 image {'gives finite outputs' if finite else 'gives NON-FINITE outputs'}")
