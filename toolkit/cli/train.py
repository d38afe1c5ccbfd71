"""`rtk finetune` options (the card's defaults and ranges live in toolkit.train.presets)."""

from __future__ import annotations

import click

from ..data.transforms import AUGMENT
from ..train.presets import RANGES
from .common import handled


class BatchSize(click.ParamType):
    """An integer, or "auto" (the largest that fits, found by a probe)."""

    name = "INTEGER|auto"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int) or value == "auto":
            return value
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is neither an integer nor 'auto'.", param, ctx)


def _load_config(ctx, param, path):
    """--config FILE.yaml: every option's default from the file (flags given still win)."""
    if not path:
        return path
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a mapping of option names to values.")
    names = {p.name for p in ctx.command.params}
    mapped = {str(k).lstrip("-").replace("-", "_"): v for k, v in data.items()}
    mapped = {("compile_" if k == "compile" else k): v for k, v in mapped.items()}
    unknown = sorted(set(mapped) - names - {"data_dir"})
    if unknown:
        raise click.BadParameter(f"{path}: unknown option(s) {', '.join(unknown)}.")
    ctx.default_map = {**(ctx.default_map or {}), **mapped}
    return path


def _range_help(name: str, text: str) -> str:
    default, low, high = RANGES[name]
    return f"{text} Default {default:g}; range {low:g} to {high:g}."


@click.command()
@click.argument("data_dir", type=click.Path())
@click.option("--config", "config_file", type=click.Path(dir_okay=False), is_eager=True,
              callback=_load_config, expose_value=True,
              help="YAML file of finetune options (names as the flags, e.g. label-smoothing: "
                   "0.1); flags on the command line win. The resolved config is in the "
                   "manifest.")
@click.option("--out", "-o", required=True, type=click.Path(), help="Run directory to create.")
@click.option("--val-dir", type=click.Path(), help="Validation folder (else a split of DATA_DIR).")
@click.option("--val-split", default=0.2, show_default=True, help="Seeded stratified fraction.")
@click.option("--arch", help="torchvision classification model: resnet50 (default), the card's "
              "resnet18 and resnet101, or vit_b_16 (ViT Base: any --image-size that is a "
              "multiple of 16; its position embeddings are interpolated to it).")
@click.option("--weights", default="imagenet", show_default=True, help="imagenet, none or PATH.")
@click.option("--image-size", type=int, help="Crop size in pixels (resize scales with it).")
@click.option("--batch-size", type=BatchSize(), help=_range_help("batch_size", "Images per step.")
              + " auto: on CUDA the largest that trains without running out of memory (a short "
                "probe); on the CPU picked by memory. The log says which.")
@click.option("--epochs", type=int, help=_range_help("epochs", "Passes over the data."))
@click.option("--lr", type=float, help=_range_help("lr", "Peak learning rate (AdamW), used "
              "as given.") + " Not given: the card's rate at batch 4 scaled to the effective "
              "batch (batch x --accumulate x processes) by the square-root rule; the log and "
              "the manifest say which.")
@click.option("--eval-steps", type=int, default=1, help=_range_help("eval_steps",
              "Evaluate every N epochs, not optimizer steps (the card's name; the last "
              "epoch always)."))
@click.option("--preset", type=click.Choice(["auto", "none"]), default="none", show_default=True,
              help="auto: the card's settings for this data set size (explicit flags win).")
@click.option("--augment", type=click.Choice(list(AUGMENT)),
              help="Default: by data set size. randaugment: standard's crop and flip with "
                   "torchvision's RandAugment (2 ops, magnitude 9) in place of TrivialAugmentWide.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--decode", type=click.Choice(["cpu", "gpu"]),
              help="Where images are decoded and augmented: gpu (nvJPEG, batched) or cpu "
                   "(PIL in DataLoader workers). Default: gpu on CUDA, else cpu.")
@click.option("--amp/--no-amp", default=True, show_default=True,
              help="Mixed precision (bf16/fp16 autocast).")
@click.option("--compile/--no-compile", "compile_", default=None,
              help="torch.compile. Default: on for CUDA, off on CPU.")
@click.option("--ema/--no-ema", default=None, help="Keep an exponential moving average of the "
              "weights and BatchNorm statistics (timm's decay warm-up). When on, the EMA weights "
              "are the model: they are validated, drive --patience and are saved as model.pt; "
              "the raw weights' validation is kept in history.csv for comparison. Default: on.")
@click.option("--ema-decay", type=float, default=0.9998, show_default=True,
              help="The EMA's final decay.")
@click.option("--label-smoothing", type=float,
              help="Cross-entropy label smoothing. Default: 0.1 for a ViT (timm's fine-tuning "
                   "recipe), else 0.")
@click.option("--layer-decay", type=float,
              help="ViTs: layer-wise learning-rate decay (each encoder block below the head "
                   "learns at this fraction of the one above; BEiT and MAE use 0.65-0.75). "
                   "Default: off.")
@click.option("--mixup", type=float, help="MixUp alpha (0: off). Default: 0.2 at --augment "
              "heavy, else off.")
@click.option("--cutmix", type=float, help="CutMix alpha (0: off); with --mixup, one of the two "
              "per batch. Default: 1.0 at --augment heavy, else off.")
@click.option("--mixup-off-epoch", type=int, default=0, show_default=True,
              help="Mix (mixup/cutmix) the first N epochs only, the rest on clean images "
                   "(timm's mixup_off_epoch); 0: every epoch.")
@click.option("--patience", type=int, help="Stop after N evaluations without improvement of the "
              "validation metric; model.pt is the best. Default 0 (off); 5 with --preset auto "
              "under 1,000 images.")
@click.option("--freeze-epochs", type=int, help="Train only the new head for N epochs, then the "
              "whole network. Default: 1 with pretrained --weights and more than one epoch, "
              "else 0.")
@click.option("--backbone-lr-mult", type=float, help="The backbone's learning rate as a "
              "fraction of --lr. Default: 0.1 with pretrained --weights, 1 from scratch.")
@click.option("--accumulate", type=int, default=1, show_default=True,
              help="Add the gradients of K batches per optimizer step (effective batch K x "
                   "--batch-size; the LR schedule counts optimizer steps).")
@click.option("--balance", type=click.Choice(["auto", "none", "weights", "sampler"]),
              default="auto", show_default=True,
              help="Class imbalance: weights (inverse-frequency loss weights), sampler (every "
                   "class equally likely per draw), auto (sampler when the largest class is over "
                   "3x the smallest, else none; the log says which). Balanced accuracy picks "
                   "model.pt when balancing.")
@click.option("--seed", default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out from last.pt. "
              "--epochs, --patience and --eval-steps may change; any other option given "
              "with another value than the run's is refused.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@handled
def finetune(data_dir, out, compile_, no_progress, **options) -> None:
    """Fine-tune a classifier on DATA_DIR and write a run bundle to --out."""
    from ..train.presets import check_range
    from ..train.config import TrainConfig
    from ..train.session import fit

    for name in RANGES:  # range errors before any slow work
        if options.get(name) is not None and options[name] != "auto":
            check_range(name, options[name])
    cfg = TrainConfig(data_dir=data_dir, out=out, compile=compile_, **options)
    ctx = click.get_current_context()  # given on the command line or in --config, not defaults
    explicit = {"data_dir"} | {("compile" if p.name == "compile_" else p.name)
                               for p in ctx.command.params if p.name in {*options, "compile_"}
                               and ctx.get_parameter_source(p.name)
                               is not click.core.ParameterSource.DEFAULT}
    from ..core.lock import bundle_lock  # an existing run (--resume) has one writer at a time

    with bundle_lock(out, "rtk finetune"):
        bundle = fit(cfg, progress=not no_progress, echo=lambda m: click.echo(m, err=True),
                     explicit=explicit)
    if bundle.manifest.metrics:
        click.echo(f"{bundle.root}  val_accuracy={bundle.manifest.metrics.val_accuracy:.4f}")
        from .report import refreshed

        refreshed(bundle.root)
