"""`rtk finetune` options (the card's defaults and ranges live in toolkit.card)."""

from __future__ import annotations

import click

from .card import AUGMENT_LEVELS, RANGES


def _range_help(name: str, text: str) -> str:
    default, low, high = RANGES[name]
    return f"{text} Default {default:g}; range {low:g} to {high:g}."


@click.command()
@click.argument("data_dir", type=click.Path())
@click.option("--out", "-o", required=True, type=click.Path(), help="Run directory to create.")
@click.option("--val-dir", type=click.Path(), help="Validation folder (else a split of DATA_DIR).")
@click.option("--val-split", default=0.2, show_default=True, help="Seeded stratified fraction.")
@click.option("--arch", help="torchvision classification model. Default resnet50.")
@click.option("--weights", default="imagenet", show_default=True, help="imagenet, none or PATH.")
@click.option("--image-size", type=int, help="Crop size in pixels (resize scales with it).")
@click.option("--batch-size", type=int, help=_range_help("batch_size", "Images per step."))
@click.option("--epochs", type=int, help=_range_help("epochs", "Passes over the data."))
@click.option("--lr", type=float, help=_range_help("lr", "Peak learning rate (AdamW)."))
@click.option("--eval-steps", type=int, default=1, help=_range_help("eval_steps",
              "Evaluate every N epochs (the last epoch always)."))
@click.option("--preset", type=click.Choice(["auto", "none"]), default="none", show_default=True,
              help="auto: the card's settings for this data set size (explicit flags win).")
@click.option("--augment", type=click.Choice(AUGMENT_LEVELS), help="Default: by data set size.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--decode", type=click.Choice(["cpu", "gpu"]),
              help="Where images are decoded and augmented: gpu (nvJPEG, batched) or cpu "
                   "(PIL in DataLoader workers). Default: gpu on CUDA, else cpu.")
@click.option("--amp/--no-amp", default=True, show_default=True,
              help="Mixed precision (bf16/fp16 autocast).")
@click.option("--compile/--no-compile", "compile_", default=None,
              help="torch.compile. Default: on for CUDA, off on CPU.")
@click.option("--seed", default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out from last.pt.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def finetune(data_dir, out, compile_, no_progress, **options) -> None:
    """Fine-tune a classifier on DATA_DIR and write a run bundle to --out."""
    from .cli import handled

    handled(_finetune)(data_dir, out, compile_, no_progress, options)


def _finetune(data_dir, out, compile_, no_progress, options) -> None:
    from .card import check_range
    from .train import TrainConfig, fit

    for name in RANGES:  # range errors before any slow work
        if options.get(name) is not None:
            check_range(name, options[name])
    cfg = TrainConfig(data_dir=data_dir, out=out, compile=compile_, **options)
    from .lock import bundle_lock  # an existing run (--resume) has one writer at a time

    with bundle_lock(out, "rtk finetune"):
        bundle = fit(cfg, progress=not no_progress, echo=lambda m: click.echo(m, err=True))
    if bundle.manifest.get("metrics"):
        click.echo(f"{bundle.root}  val_accuracy={bundle.manifest['metrics']['val_accuracy']:.4f}")
        from .cli_report import refreshed

        refreshed(bundle.root)
