"""fuse-bn: fold each BatchNorm into the convolution before it (a thin layer over ``surgery.fuse.fuse_bn``)."""

from __future__ import annotations

import click

from . import cli
from .options import model_options
from .surgery_cmds import finish, surgery_options


@cli.command("fuse-bn")
@click.argument("source", metavar="IN", type=click.Path(exists=True))
@click.argument("out", metavar="OUT")
@model_options
@click.option("--pairs", "pairs_path", metavar="FILE", type=click.Path(exists=True, dir_okay=False),
              help='Instead of --model: a JSON list of ["conv", "bn"] pairs (or {"conv", "bn", "eps", '
                   '"transposed", "groups"} objects).')
@click.option("--eps", type=float, help="With --pairs: the BatchNorm eps of pairs that give none (default 1e-5).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs of the check.")
@surgery_options
def fuse_bn_command(source: str, out: str, model_spec: str | None, model_kwargs: str | None, model_path: str | None,
                    pairs_path: str | None, eps: float | None, seed: int, dry_run: bool, as_json: bool,
                    report_path: str | None, verbose: bool, force: bool, container: str | None, trust: bool,
                    output_format: str | None, max_shard_size: int | None) -> None:
    """Fold each BatchNorm into the convolution before it (W * gamma/sqrt(var+eps) per output channel, a new
    bias), for deployment. Pairs come from a torch.fx trace of --model (nn.Sequential order when tracing
    fails) or from --pairs FILE. The BatchNorm keys are left out of OUT, the convs get fused weight and bias;
    the report lists every pair with its largest relative difference against conv+BN on a random input,
    and every BatchNorm left unfused with why. OUT loads into the model with each fused BatchNorm replaced by
    nn.Identity and each fused conv given a bias.

    Example: ckptsurgeon fuse-bn resnet50.pt resnet50_fused.safetensors --model mypkg.models:build_resnet
    """
    from ..surgery.fuse import fuse_bn

    if (model_spec is None) == (pairs_path is None):
        raise click.UsageError("give the pairs as either --model MODULE:CALLABLE or --pairs FILE")
    if pairs_path is not None and (model_kwargs or model_path):
        raise click.UsageError("--model-kwargs and --model-path go with --model, not --pairs")
    if model_spec is not None and eps is not None:
        raise click.UsageError("--eps goes with --pairs; with --model each BatchNorm's own eps is used")
    model = None
    if model_spec is not None:
        from ..model.build import load_model

        model = load_model(model_spec, model_kwargs, model_path)
    report = fuse_bn(source, out, model=model, pairs=pairs_path, eps=eps, dry_run=dry_run, force=force,
                     container=container, trust=trust, seed=seed, format=output_format,
                     max_shard_size=max_shard_size)
    finish(report, as_json=as_json, report_path=report_path, verbose=verbose)
