"""The ``rcdm`` command line: one click command per stage, each a thin layer over
:func:`rcdm.app.commandline.stage` (load the config, show it with its origins, honour
--dry-run, check the inputs exist, call the stage's one entry point). The options are made from
the config's fields (:mod:`rcdm.app.options`). Stages are imported inside the commands, so
``rcdm --help`` never imports torch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rcdm.app import results
from rcdm.app.commandline import call, common_options, entry, inputs, load, show, stage
from rcdm.app.load import resolve, set_value
from rcdm.app.options import options, sampler_fields
from rcdm.config import EXPERIMENTS, EXTRA_EXPERIMENTS
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
      pretrain  images -> a small SimCLR encoder (the demo's)
      sample    checkpoint + conditions -> images
      evaluate  samples -> FID, IS, rank / MRR tables
      analyze   the paper's analyses as figures and an HTML report
      run       the whole pipeline on your data (pipeline.yaml)
      demo      the whole pipeline on the embedded demo set (= run --profile demo)
    """


# ----------------------------------------------------------------------------------- extract
def _extract_plan(jobs: list) -> str:
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
@options(
    "extract",
    "encoder",
    "weights",
    "layer",
    "source",
    "out",
    "format",
    "preprocess",
    "input_size",
    "batch_size",
    "workers",
    "device",
    "decode",
    "include_images",
    "overwrite",
    "repair",
    "trust_checkpoint",
    "allow_download",
    names={"encoder": list(REGISTRY)},
)
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
        inputs(job, ctx.params["dry_run"])
    if ctx.params["dry_run"]:
        click.echo("dry run: " + call(_extract_plan, jobs))
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
    if any(p.startswith("shard-") and "non-finite" not in p and "finite;" not in p for p in problems):
        click.echo(f"fix: {S.REPAIR}", err=True)  # a damaged or missing shard: --repair re-encodes it
    if problems:
        sys.exit(1)
    click.echo(f"OK {path}")


# ------------------------------------------------------------------------------------- train
@cli.command()
@options(
    "train", "store", "out", "preset", "cond", "threads", "source", "init_from", "kimg", "batch_size", "lr", "compile"
)
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
@options("prior", "store", "out", "iters", "batch_size", "device", "overwrite")
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


@cli.command()
@options("pretrain", "source", "val", "out", "steps", "batch_size", "seed", "threads", "overwrite")
@common_options
@click.pass_context
def pretrain(ctx: click.Context, **_: Any) -> None:
    """Train a small self-supervised encoder (SimCLR) on --source: the demo's simclr-mini encoder.

    The shipped weights were made with `rcdm pretrain --profile demo` (docs/encoder.md); with the
    demo profile the embedded demo set is built first, as `rcdm demo` builds it."""
    cfg = load(ctx, "pretrain")
    if cfg.data.demo and not ctx.params["dry_run"]:
        from rcdm.data import demo as demo_data

        demo_data.build(cfg.data)  # a no-op when built and intact
    stage(
        ctx,
        "pretrain",
        lambda p: f"would train a SimCLR resnet-mini (width {p.width}) for {p.steps} steps on {p.source} -> {p.out}",
        entry("rcdm.train.pretrain", "pretrain"),
        "encoder written",
        cfg=cfg,
    )


# ------------------------------------------------------------------------------------ sample
@cli.command()
@options(
    "sample",
    "checkpoint",
    "out",
    "store",
    "condition",
    "images",
    "indices",
    "keys",
    "subset",
    "n_per_condition",
    *sampler_fields(),
    "seed",
    "batch_size",
)
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
@options("evaluate", "samples", "reference", "out", "fid", "inception_weights")
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
@options(
    "analyze",
    "checkpoints",
    "train_store",
    "val_store",
    "out",
    *sampler_fields(),
    "seed",
    flags={"checkpoints": "--checkpoint"},
)
@common_options
@click.pass_context
def analyze(ctx: click.Context, experiments: tuple[str, ...], **_: Any) -> None:
    cfg = load(ctx, "analyze")
    if experiments:
        cfg = set_value(cfg, "analyze", "experiments", experiments, "command-line EXPERIMENTS")
    stage(ctx, "analyze", _analyze_plan, entry("rcdm.analysis", "analyze"), "report", cfg=cfg)


def _analyze_plan(a: Any) -> str:
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
@click.option(
    "--compare",
    is_flag=True,
    help="Run the demo through the encoder's trunk, its head and a random network, and compare them in one report.",
)
@click.pass_context
def demo(ctx: click.Context, stages: str | None, force: bool, compare: bool, **_: Any) -> None:
    """The embedded demo, end to end on a CPU in about 20-25 minutes (= rcdm run --profile demo).

    Works from any directory: it builds a small image set from photographs shipped with
    scikit-image and scikit-learn, and writes everything under ./runs/demo. Its shortcuts
    (32 px encoder input, the tiny UNet, guidance 1.5, ...) are the demo profile's, never the recipe's.
    """
    ctx.params["profile"] = "demo"
    if compare:
        _compare(ctx, force)
        return
    _run_pipeline(ctx, stages, force)


def _compare(ctx: click.Context, force: bool) -> None:
    from rcdm.app import pipeline

    cfg = load(ctx, None, resolved=False)  # each compared run derives its paths from its own workdir
    if ctx.params["dry_run"]:
        for name, c in pipeline.compare_configs(cfg):
            click.echo(f"{name}: {c.extract.encoder} {c.extract.layer} -> {c.data.workdir}")
        return
    path = call(pipeline.compare, cfg, force)
    click.echo(f"done. open the comparison: {path}")


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
