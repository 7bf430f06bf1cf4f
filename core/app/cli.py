"""The ``rcdm`` command line: one click command per stage, each a thin layer over
:func:`rcdm.app.commandline.stage` (load the config, show it with its origins, honour
--dry-run, call the stage's one entry point). Stages are imported inside the commands, so
``rcdm --help`` never imports torch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rcdm.app import results
from rcdm.app.commandline import call, common_options, entry, load, show, stage
from rcdm.app.config import EXPERIMENTS, EXTRA_EXPERIMENTS, PipelineConfig, check_experiments
from rcdm.app.load import resolve
from rcdm.encoders.registry import REGISTRY
from rcdm.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rcdm")
def cli() -> None:
    """rcdm: Representation-Conditional Diffusion Models.

    \b
    Stages (each reads pipeline.yaml; see --help of each):
      extract   images + frozen encoder -> feature store
      store     inspect or verify a feature store
      train     feature store + images -> RCDM checkpoints
      train-prior  feature store -> a prior over representations (sampling with no image)
      sample    checkpoint + conditions -> images
      evaluate  samples -> FID, IS, rank / MRR tables
      analyze   the paper's analyses as figures and an HTML report
      run       the whole pipeline on your data (pipeline.yaml)
      demo      the whole pipeline on the embedded demo set (= run --profile demo)
    """


# ----------------------------------------------------------------------------------- extract
def _extract_plan(cfg: PipelineConfig, jobs: list) -> str:
    from rcdm.data.preprocess import describe_preprocess, effective_preprocess
    from rcdm.encoders.registry import get_spec

    lines = []
    for job in jobs:
        pp = effective_preprocess(get_spec(job.encoder).preprocess, job.preprocess, job.input_size)
        lines.append(
            f"would write store {job.out} from {job.source}: encoder {job.encoder} ({job.layer}), "
            f"encoder input {describe_preprocess(pp)}"
        )
    return "\n".join(lines)


@cli.command()
@click.option(
    "--encoder",
    type=click.Choice(list(REGISTRY)),
    help="Encoder (--list-encoders shows layers, preprocessing and weights URLs).",
)
@click.option("--weights", type=click.Path(), help="Local checkpoint file for the encoder.")
@click.option(
    "--layer",
    type=click.Choice(["trunk", "cls", "mean", "tokens", "head"]),
    help="Which layer to store (ViTs: cls, mean, tokens).",
)
@click.option("--source", type=click.Path(), help="ImageFolder tree, text file of paths, or .tar shards.")
@click.option("--out", type=click.Path(), help="Output store directory.")
@click.option("--format", "format", type=click.Choice(["h5", "wds"]), help="Shard format.")
@click.option(
    "--preprocess",
    type=click.Choice(["default", "rcdm", "imagenet", "imagenet-bicubic", "clip", "siglip"]),
    help="Encoder input convention (default: the encoder's own).",
)
@click.option("--input-size", type=click.IntRange(min=16), help="Encoder input crop (default: the encoder's own, 224).")
@click.option("--batch-size", type=click.IntRange(min=1))
@click.option("--workers", type=click.IntRange(min=0))
@click.option("--device")
@click.option(
    "--decode",
    type=click.Choice(["auto", "cpu", "gpu"]),
    help="JPEG decoding: PIL in workers, or batched on the GPU (auto: gpu on CUDA).",
)
@click.option("--include-images", is_flag=True, help="wds: store the image bytes too.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store made with other settings.")
@click.option("--repair", is_flag=True, help="Re-encode only the damaged or missing shards of an existing store.")
@click.option("--trust-checkpoint", is_flag=True, help="Allow pickle when loading weights (trusted files only).")
@click.option("--allow-download", is_flag=True, help="Download the registry's public weights if --weights is missing.")
@click.option("--list-encoders", is_flag=True, help="List the registered encoders and exit.")
@common_options
@click.pass_context
def extract(ctx: click.Context, list_encoders: bool, **_: Any) -> None:
    """Run a frozen encoder over images and write a feature store.

    Name the encoder with --encoder (`rcdm extract --list-encoders` lists them with their layers,
    preprocessing and weights URLs). Without --source/--out (and none in the config) it extracts
    both data.train and data.val into <workdir>/stores/{train,val}.
    """
    if list_encoders:
        from rcdm.encoders.registry import describe_registry

        click.echo(describe_registry())
        return
    from rcdm.app.pipeline import extract_jobs

    raw = load(ctx, "extract", skip=("list_encoders",), resolved=False)
    # Nothing named a source or an output: extract both splits into <workdir>/stores.
    both = raw.extract.source is None and raw.extract.out is None
    jobs = call(extract_jobs, resolve(raw), both)
    for job in jobs:
        show(f"extract {job.source} -> {job.out}", job, full=ctx.params["dry_run"], prefix="extract.")
    if ctx.params["dry_run"]:
        click.echo("dry run: " + call(_extract_plan, raw, jobs))
        return
    run = entry("rcdm.extract")
    for job in jobs:
        click.echo(f"store written: {call(run, job)}")


# ------------------------------------------------------------------------------------- store
@cli.group()
def store() -> None:
    """Inspect or verify a feature store."""


@store.command("info")
@click.argument("path", type=click.Path())
def store_info(path: str) -> None:
    """Summarise a store: encoder, layer, dimension, rows, shards."""
    from rcdm import store as S

    click.echo(call(S.info, path))


@store.command("verify")
@click.argument("path", type=click.Path())
def store_verify(path: str) -> None:
    """Re-check counts, shapes, dtypes and sha256s; exit 1 on any mismatch."""
    from rcdm import store as S

    problems = call(S.verify, path)
    for p in problems:
        click.secho(f"FAIL {p}", fg="red", err=True)
    if any(p.startswith("shard-") for p in problems):
        click.echo(f"fix: {S.REPAIR}", err=True)
    if problems:
        sys.exit(1)
    click.echo(f"OK {path}")


# ------------------------------------------------------------------------------------- train
@cli.command()
@click.option("--store", type=click.Path(), help="Training feature store.")
@click.option("--out", type=click.Path(), help="Run directory.")
@click.option(
    "--preset",
    type=click.Choice(["tiny", "adm64", "adm128", "adm256"]),
    help="UNet architecture (ADM's for 64/128/256 px; tiny for CPU).",
)
@click.option(
    "--cond",
    type=click.Choice(["embed", "cbn", "both", "xattn"]),
    help="How h enters the UNet (embed: the RCDM code; cbn: the paper's conditional norm; both: an rcdm addition; xattn: cross-attention to a tokens store's patch grid).",
)
@click.option(
    "--threads", type=click.IntRange(min=0), help="Torch CPU threads (0: auto, the cores minus the loader workers)."
)
@click.option(
    "--source",
    type=click.Path(),
    help="Image source of the store's keys, when the images moved since extraction (default: the store's own).",
)
@click.option("--init-from", type=click.Path(), help="Start from an official RCDM/ADM checkpoint or ours.")
@click.option("--kimg", type=click.FloatRange(min=0, min_open=True), help="Total training images, thousands.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Global batch size.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Learning rate (the paper: 1e-4).")
@click.option("--compile", is_flag=True, help="torch.compile the model.")
@common_options
@click.pass_context
def train(ctx: click.Context, **_: Any) -> None:
    """Train RCDM on a feature store (resumes when re-run with the same command)."""
    stage(
        ctx,
        "train",
        lambda t: f"would train {t.preset} ({t.cond}, lr {t.lr:g}) on {t.store} -> {t.out}",
        entry("rcdm.train"),
        "run written",
    )


@cli.command("train-prior")
@click.option("--store", type=click.Path(), help="Feature store whose representations the prior learns.")
@click.option("--out", type=click.Path(), help="Prior folder (default: <workdir>/prior).")
@click.option("--iters", type=click.IntRange(min=1), help="Optimiser steps.")
@click.option("--batch-size", type=click.IntRange(min=1))
@click.option("--device")
@click.option("--overwrite", is_flag=True, help="Replace a finished prior in --out.")
@common_options
@click.pass_context
def train_prior(ctx: click.Context, **_: Any) -> None:
    """Train a prior over representations (RCG's MLP diffusion), for `rcdm sample --condition prior`."""
    stage(
        ctx,
        "prior",
        lambda p: f"would train a {p.blocks}-block, {p.width}-wide prior for {p.iters} steps on {p.store} -> {p.out}",
        entry("rcdm.train.prior", "train_prior"),
        "prior written",
    )


# ------------------------------------------------------------------------------------ sample
_CONDITIONS = "store, images, interpolate, class-mean, kde, algebra, manipulate, prior"


@cli.command(
    epilog="\b\nConditions (--condition):\n"
    "  store        rows of --store (--indices, --keys, or a seeded --subset)\n"
    "  images       your image files (--images), encoded with the store's encoder\n"
    "  interpolate  a path between two store rows (--keys A B)\n"
    "  class-mean   the mean representation of a class (sample.labels)\n"
    "  kde          draws from a kernel density estimate over the store (sample.kde_sigma)\n"
    "  algebra      a - b + c of three store rows (--keys A B C)\n"
    "  manipulate   a row with the dimensions common to its neighbours zeroed or replaced\n"
    "  prior        draws from a learned prior over representations (rcdm train-prior; sample.prior)"
)
@click.option("--checkpoint", type=click.Path(), help="Run directory or weights file.")
@click.option("--out", type=click.Path())
@click.option("--store", type=click.Path(), help="Store whose encoder and entries condition sampling.")
@click.option(
    "--condition", type=click.Choice(_CONDITIONS.split(", ")), help="What the samples are conditioned on (see below)."
)
@click.option("--images", multiple=True, help="Image files, folders or globs (repeatable).")
@click.option("--indices", multiple=True, type=int, help="Store rows (repeatable).")
@click.option("--keys", multiple=True, help="Store keys (repeatable).")
@click.option("--subset", type=click.IntRange(min=1), help="Random store rows to condition on.")
@click.option("--n-per-condition", type=click.IntRange(min=1))
@click.option("--steps", help='Respacing: "100" (the paper), "1000", "10,20,30" or "ddim50".')
@click.option("--ddim", is_flag=True, help="DDIM update on the respaced steps.")
@click.option("--eta", type=click.FloatRange(min=0))
@click.option(
    "--guidance",
    type=click.FloatRange(min=0),
    help="Classifier-free guidance scale (1: none, RCDM's sampler; needs train.cond_drop > 0).",
)
@click.option("--seed", type=int)
@click.option("--batch-size", type=click.IntRange(min=1))
@common_options
@click.pass_context
def sample(ctx: click.Context, **_: Any) -> None:
    """Draw images from representations."""
    stage(
        ctx,
        "sample",
        lambda s: f"would sample ({s.sampler.label()}) from {s.checkpoint} conditioned on {s.condition} -> {s.out}",
        entry("rcdm.sample"),
        "samples written",
        after=results.sample_lines,
    )


# ---------------------------------------------------------------------------------- evaluate
@cli.command()
@click.argument("runs", nargs=-1, type=click.Path())
@click.option("--samples", type=click.Path(), help="Sample directory (samples.npz + index.jsonl).")
@click.option("--reference", type=click.Path(), help="Reference feature store (validation).")
@click.option("--out", type=click.Path())
@click.option("--fid", type=click.Choice(["auto", "on", "off"]))
@click.option("--inception-weights", type=click.Path())
@click.option("--table", is_flag=True, help="Assemble the evaluated RUNS (folders of rcdm evaluate) into one table.")
@click.option(
    "--curve",
    is_flag=True,
    help="Plot rank / MRR against kimg of the training RUNS (their faithfulness checks) into --out.",
)
@common_options
@click.pass_context
def evaluate(ctx: click.Context, runs: tuple[str, ...], table: bool, curve: bool, **_: Any) -> None:
    """Compute FID, IS and rank / MRR of --samples; or, with --table RUNS..., assemble tables.

    \b
    rcdm evaluate --samples samples/dino --reference stores/dino-val --out eval/dino
    rcdm evaluate --table eval/dino eval/simclr eval/supervised --out eval/table
    rcdm evaluate --curve runs/paper runs/fast --out eval/curve
    """
    if runs and not (table or curve):
        raise click.UsageError(f"unexpected argument(s) {' '.join(runs)}: evaluated runs go after --table")
    if not (table or curve):
        stage(
            ctx,
            "evaluate",
            lambda e: f"would evaluate {e.samples} against {e.reference} -> {e.out}",
            entry("rcdm.analysis", "evaluate"),
            "metrics written",
            after=results.evaluate_lines,
        )
        return
    kind, what, fn = (
        ("table", "assemble", ("rcdm.analysis", "table"))
        if table
        else ("curve", "plot the faithfulness curves of", ("rcdm.analysis.curve", "curve"))
    )
    if not runs:
        example = "eval/a eval/b --out eval/table" if table else "runs/a runs/b --out eval/curve"
        raise click.UsageError(f"--{kind} needs the runs: rcdm evaluate --{kind} {example}")
    out = ctx.params["out"] or str(Path(load(ctx, None).data.workdir) / kind)
    if ctx.params["dry_run"]:
        click.echo(f"dry run: would {what} {len(runs)} run(s) ({', '.join(runs)}) into {out}")
        return
    click.echo(f"{kind} written: {call(entry(*fn), list(runs), out)}")


# ----------------------------------------------------------------------------------- analyze
@cli.command(
    help="Run the paper's analyses into report.html.\n\n"
    "EXPERIMENTS (default: all of analyze.experiments):\n\n\b\n  " + "\n  ".join(EXPERIMENTS + EXTRA_EXPERIMENTS)
)
@click.argument("experiments", nargs=-1, type=click.Choice(EXPERIMENTS + EXTRA_EXPERIMENTS), metavar="[EXPERIMENT]...")
@click.option(
    "--checkpoint", "checkpoints", multiple=True, type=click.Path(), help="RCDM run(s) to analyse (repeatable)."
)
@click.option("--train-store", type=click.Path())
@click.option("--val-store", type=click.Path())
@click.option("--out", type=click.Path())
@click.option("--steps", help="Respacing of every sample drawn (as rcdm sample --steps).")
@click.option("--guidance", type=click.FloatRange(min=0), help="Classifier-free guidance scale (1: none).")
@click.option("--seed", type=int)
@common_options
@click.pass_context
def analyze(ctx: click.Context, experiments: tuple[str, ...], **_: Any) -> None:
    cfg = load(ctx, "analyze")
    if experiments:
        from rcdm.app.load import set_value

        cfg = set_value(cfg, "analyze", "experiments", experiments, "command-line EXPERIMENTS")
    stage(ctx, "analyze", _analyze_plan, entry("rcdm.analysis", "analyze"), "report", cfg=cfg)


def _analyze_plan(a: Any) -> str:
    check_experiments(a.experiments, a.origin.get("experiments", "analyze.experiments"))
    return f"would run {', '.join(a.experiments)} ({a.sampler.label()}) on {', '.join(a.checkpoints)} -> {a.out}"


# --------------------------------------------------------------------------------------- run
def _run_pipeline(ctx: click.Context, stages: str | None, force: bool) -> None:
    from rcdm.app import pipeline

    cfg = load(ctx, None)
    try:
        names = pipeline.parse_stages(stages)
    except UserError as e:
        raise click.BadParameter(str(e), param_hint="--stages") from e
    show("pipeline", cfg, full=ctx.params["dry_run"])
    if ctx.params["dry_run"]:
        for line in call(pipeline.plan, cfg, names, force):
            click.echo(line)
        return
    path = call(pipeline.run, cfg, names, force)
    click.echo("")
    for line in results.run_lines(cfg, names):
        click.echo(line)
    click.echo(f"done. open the report: {path}" if "analyze" in names else f"done: {path}")


_STAGES_HELP = "Comma-separated subset of data,extract,train,sample,evaluate,analyze."
_FORCE_HELP = "Re-run stages that already finished."


@cli.command()
@click.option("--stages", help=_STAGES_HELP)
@click.option("--force", is_flag=True, help=_FORCE_HELP)
@common_options
@click.pass_context
def run(ctx: click.Context, stages: str | None, force: bool, **_: Any) -> None:
    """Run the pipeline end to end on your data (set data.train / data.val in pipeline.yaml).

    Finished stages are skipped. `rcdm run --profile demo` (or `rcdm demo`) runs the embedded demo.
    """
    _run_pipeline(ctx, stages, force)


@cli.command()
@click.option("--stages", help=_STAGES_HELP)
@click.option("--force", is_flag=True, help=_FORCE_HELP)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="A config applied on top of the demo profile.",
)
@click.option(
    "--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="Override one config value (repeatable)."
)
@click.option("-n", "--dry-run", is_flag=True, help="Print the resolved config and plan; do nothing.")
@click.pass_context
def demo(ctx: click.Context, stages: str | None, force: bool, **_: Any) -> None:
    """The embedded demo, end to end on a CPU in about 10 minutes (= rcdm run --profile demo).

    Works from any directory: it builds a small image set from photographs shipped with
    scikit-image and scikit-learn, and writes everything under ./runs/demo. Its shortcuts
    (32 px encoder input, guidance 5, ...) are the demo profile's, never the recipe's.
    """
    ctx.params["profile"] = "demo"
    _run_pipeline(ctx, stages, force)


@cli.command("config-reference")
@click.option(
    "--update",
    "update_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Rewrite the generated sections of this README instead of printing.",
)
def config_reference(update_path: str | None) -> None:
    """Print the config reference (Markdown), generated from the dataclasses."""
    from rcdm.app.readme import config_reference as reference

    if update_path:
        from rcdm.app import readme

        changed = readme.update(update_path)
        click.echo(f"{update_path}: " + ("updated" if changed else "already up to date"))
        return
    click.echo(reference())


def main() -> None:
    cli(prog_name="rcdm")


if __name__ == "__main__":
    main()
