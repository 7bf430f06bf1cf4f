"""The ``rcdm`` command line.

Each command parses its options into ``--set`` overrides, loads ``pipeline.yaml``, prints the
resolved section, honours ``--dry-run``, and calls one typed entry point of its stage. Stages are
imported inside the command functions so that ``rcdm --help`` never imports torch.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import click
from rcdm.app import config as C


def _common(fn):
    """--config, --set and --dry-run, shared by every stage command."""

    @click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="Pipeline config (default: ./pipeline.yaml if present, else built-in defaults).",
    )
    @click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help="Override one config value, e.g. --set train.kimg=10 (repeatable).",
    )
    @click.option("-n", "--dry-run", is_flag=True, help="Print the resolved config and plan; do nothing.")
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


def _overrides(section: str, **options: Any) -> list[str]:
    """Turn command-line options that were given into ``section.key=value`` strings."""
    out = []
    for key, value in options.items():
        if value is None or value == () or value is False:
            continue
        if isinstance(value, tuple):
            value = "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
        elif value is True:
            value = "true"
        else:
            value = _yaml_scalar(value)
        out.append(f"{section}.{key}={value}")
    return out


def _yaml_scalar(v: Any) -> str:
    import json

    return json.dumps(v) if isinstance(v, str) else str(v)


def _load(
    config_path: str | None, sets: tuple[str, ...], extra: list[str], resolved: bool = True
) -> C.PipelineConfig:
    """Config file, then command-line options, then --set (the most explicit wins)."""
    try:
        cfg = C.load_config(config_path, [*extra, *sets])
        return C.resolve(cfg) if resolved else cfg
    except C.ConfigError as e:
        raise click.UsageError(str(e)) from e


def _show(title: str, section: Any) -> None:
    click.echo(f"# {title}\n" + C.dump_yaml(section), err=True)


def _fail(e: Exception) -> None:
    """Print a user-facing error without a traceback and exit non-zero."""
    click.secho(f"error: {e}", fg="red", err=True)
    sys.exit(1)


# Errors the stages raise for bad input; anything else is a bug and keeps its traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, RuntimeError)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rcdm")
def cli() -> None:
    """rcdm: Representation-Conditional Diffusion Models.

    \b
    Stages (each reads pipeline.yaml; see --help of each):
      extract   images + frozen encoder -> feature store
      store     inspect or verify a feature store
      train     feature store + images -> RCDM checkpoints
      sample    checkpoint + conditions -> images
      evaluate  samples -> FID, IS, rank / MRR tables
      analyze   the paper's analyses as figures and an HTML report
      run       the whole pipeline (default: the embedded demo)
    """


# ----------------------------------------------------------------------------------- extract
@cli.command()
@click.option("--encoder", help="Encoder registry name (see --list-encoders).")
@click.option("--weights", type=click.Path(), help="Local checkpoint file for the encoder.")
@click.option("--layer", type=click.Choice(["trunk", "head"]), help="Which layer to store.")
@click.option("--source", type=click.Path(), help="ImageFolder tree, text file of paths, or .tar shards.")
@click.option("--out", type=click.Path(), help="Output store directory.")
@click.option("--format", "format_", type=click.Choice(["h5", "wds"]), help="Shard format.")
@click.option("--preprocess", type=click.Choice(["default", "rcdm", "imagenet"]), help="Encoder input convention.")
@click.option("--batch-size", type=click.IntRange(min=1))
@click.option("--workers", type=click.IntRange(min=0))
@click.option("--device")
@click.option("--include-images", is_flag=True, help="wds: store the image bytes too.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store made with other settings.")
@click.option("--trust-checkpoint", is_flag=True, help="Allow pickle when loading weights (trusted files only).")
@click.option("--allow-download", is_flag=True, help="Download the registry's public weights if --weights is missing.")
@click.option("--list-encoders", is_flag=True, help="List the registered encoders and exit.")
@_common
def extract(config_path, sets, dry_run, list_encoders, format_, **opts):
    """Run a frozen encoder over images and write a feature store.

    Without --source/--out (and none in the config) it extracts both data.train and data.val
    into <workdir>/stores/{train,val}.
    """
    if list_encoders:
        from rcdm.encoders.registry import describe_registry

        click.echo(describe_registry())
        return
    opts["format"] = format_
    raw = _load(config_path, sets, _overrides("extract", **opts), resolved=False)
    from rcdm.app.pipeline import extract_jobs

    # Nothing named a source or an output: extract both splits into <workdir>/stores.
    both = raw.extract.source is None and raw.extract.out is None
    jobs = extract_jobs(C.resolve(raw), both_splits=both)
    for job in jobs:
        _show(f"extract {job.source} -> {job.out}", job)
    if dry_run:
        click.echo(f"dry run: would write {len(jobs)} store(s): " + ", ".join(j.out for j in jobs))
        return
    import rcdm.extract

    try:
        for job in jobs:
            path = rcdm.extract.run(job)
            click.echo(f"store written: {path}")
    except _USER_ERRORS as e:
        _fail(e)


# ------------------------------------------------------------------------------------- store
@cli.group()
def store() -> None:
    """Inspect or verify a feature store."""


@store.command("info")
@click.argument("path", type=click.Path())
def store_info(path):
    """Summarise a store: encoder, layer, dimension, rows, shards."""
    from rcdm import store as S

    try:
        click.echo(S.info(path))
    except _USER_ERRORS as e:
        _fail(e)


@store.command("verify")
@click.argument("path", type=click.Path())
def store_verify(path):
    """Re-check counts, shapes, dtypes and sha256s; exit 1 on any mismatch."""
    from rcdm import store as S

    try:
        problems = S.verify(path)
    except _USER_ERRORS as e:
        _fail(e)
    if problems:
        for p in problems:
            click.secho(f"FAIL {p}", fg="red", err=True)
        sys.exit(1)
    click.echo(f"OK {path}")


# ------------------------------------------------------------------------------------- train
@cli.command()
@click.option("--store", type=click.Path(), help="Training feature store.")
@click.option("--out", type=click.Path(), help="Run directory.")
@click.option("--preset", type=click.Choice(["tiny", "adm64", "adm128", "adm256"]))
@click.option("--cond", type=click.Choice(["embed", "cbn"]))
@click.option("--init-from", type=click.Path(), help="Start from an official RCDM/ADM checkpoint or ours.")
@click.option("--kimg", type=click.FloatRange(min=0), help="Total training images, thousands.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Global batch size.")
@click.option("--lr", type=float)
@click.option("--compile", is_flag=True, help="torch.compile the model.")
@_common
def train(config_path, sets, dry_run, **opts):
    """Train RCDM on a feature store (resumes when re-run with the same command)."""
    cfg = _load(config_path, sets, _overrides("train", **opts))
    _show("train", cfg.train)
    if dry_run:
        click.echo(f"dry run: would train {cfg.train.preset} on {cfg.train.store} -> {cfg.train.out}")
        return
    import rcdm.train

    try:
        path = rcdm.train.run(cfg.train)
    except _USER_ERRORS as e:
        _fail(e)
    click.echo(f"run written: {path}")


# ------------------------------------------------------------------------------------ sample
@cli.command()
@click.option("--checkpoint", type=click.Path(), help="Run directory or weights file.")
@click.option("--out", type=click.Path())
@click.option("--store", type=click.Path(), help="Store whose encoder and entries condition sampling.")
@click.option("--condition", type=click.Choice(["store", "images", "interpolate", "class-mean", "kde", "algebra", "manipulate"]))
@click.option("--images", multiple=True, help="Image files, folders or globs (repeatable).")
@click.option("--indices", multiple=True, type=int, help="Store rows (repeatable).")
@click.option("--keys", multiple=True, help="Store keys (repeatable).")
@click.option("--subset", type=click.IntRange(min=1), help="Random store rows to condition on.")
@click.option("--n-per-condition", type=click.IntRange(min=1))
@click.option("--steps", help='Respacing: "100", "1000", "ddim50".')
@click.option("--ddim", is_flag=True)
@click.option("--eta", type=float)
@click.option("--guidance", type=click.FloatRange(min=0), help="Classifier-free guidance scale (1: none; needs train.cond_drop > 0).")
@click.option("--seed", type=int)
@click.option("--batch-size", type=click.IntRange(min=1))
@_common
def sample(config_path, sets, dry_run, **opts):
    """Draw images from representations."""
    cfg = _load(config_path, sets, _overrides("sample", **opts))
    _show("sample", cfg.sample)
    if dry_run:
        click.echo(f"dry run: would sample from {cfg.sample.checkpoint} -> {cfg.sample.out}")
        return
    import rcdm.sample

    try:
        path = rcdm.sample.run(cfg.sample)
    except _USER_ERRORS as e:
        _fail(e)
    click.echo(f"samples written: {path}")


# ---------------------------------------------------------------------------------- evaluate
@cli.command()
@click.option("--samples", type=click.Path(), help="Sample directory (samples.npz + index.jsonl).")
@click.option("--reference", type=click.Path(), help="Reference feature store (validation).")
@click.option("--out", type=click.Path())
@click.option("--fid", type=click.Choice(["auto", "on", "off"]))
@click.option("--inception-weights", type=click.Path())
@click.option("--table", "tables", multiple=True, type=click.Path(), help="Assemble evaluated runs into one table.")
@_common
def evaluate(config_path, sets, dry_run, tables, **opts):
    """Compute FID, IS and rank / MRR; or assemble tables with --table."""
    cfg = _load(config_path, sets, _overrides("evaluate", **opts))
    if tables:
        out = opts.get("out") or str(Path(cfg.data.workdir) / "table")
        if dry_run:
            click.echo(f"dry run: would assemble {len(tables)} run(s) into {out}")
            return
        import rcdm.analysis

        try:
            path = rcdm.analysis.table(list(tables), out)
        except _USER_ERRORS as e:
            _fail(e)
        click.echo(f"table written: {path}")
        return
    _show("evaluate", cfg.evaluate)
    if dry_run:
        click.echo(f"dry run: would evaluate {cfg.evaluate.samples} -> {cfg.evaluate.out}")
        return
    import rcdm.analysis

    try:
        path = rcdm.analysis.evaluate(cfg.evaluate)
    except _USER_ERRORS as e:
        _fail(e)
    click.echo(f"metrics written: {path}")


# ----------------------------------------------------------------------------------- analyze
@cli.command()
@click.argument("experiments", nargs=-1)
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(), help="RCDM run(s) to analyse (repeatable).")
@click.option("--train-store", type=click.Path())
@click.option("--val-store", type=click.Path())
@click.option("--out", type=click.Path())
@click.option("--guidance", type=click.FloatRange(min=0), help="Classifier-free guidance scale (1: none).")
@click.option("--seed", type=int)
@_common
def analyze(config_path, sets, dry_run, experiments, **opts):
    """Run the paper's analyses (default: all in analyze.experiments) into report.html."""
    cfg = _load(config_path, sets, _overrides("analyze", experiments=tuple(experiments), **opts))
    _show("analyze", cfg.analyze)
    if dry_run:
        click.echo("dry run: would run " + ", ".join(cfg.analyze.experiments) + f" -> {cfg.analyze.out}")
        return
    import rcdm.analysis

    try:
        path = rcdm.analysis.analyze(cfg.analyze)
    except _USER_ERRORS as e:
        _fail(e)
    click.echo(f"report: {path}")


# --------------------------------------------------------------------------------------- run
@cli.command()
@click.option("--stages", help="Comma-separated subset of data,extract,train,sample,evaluate,analyze.")
@click.option("--force", is_flag=True, help="Re-run stages that already finished.")
@_common
def run(config_path, sets, dry_run, stages, force):
    """Run the pipeline end to end (default pipeline.yaml: the embedded demo on CPU)."""
    from rcdm.app import pipeline

    cfg = _load(config_path, sets, [])
    try:
        names = pipeline.parse_stages(stages)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--stages") from e
    _show("pipeline", cfg)
    if dry_run:
        for line in pipeline.plan(cfg, names, force=force):
            click.echo(line)
        return
    try:
        path = pipeline.run(cfg, names, force=force)
    except _USER_ERRORS as e:
        _fail(e)
    click.echo(f"\ndone. open the report: {path}")


@cli.command("config-reference")
@click.option("--update", "update_path", type=click.Path(exists=True, dir_okay=False),
              help="Rewrite the generated sections of this README instead of printing.")
def config_reference(update_path):
    """Print the config reference (Markdown), generated from the dataclasses."""
    if update_path:
        from rcdm.app import readme

        changed = readme.update(update_path)
        click.echo(f"{update_path}: " + ("updated" if changed else "already up to date"))
        return
    click.echo(C.config_reference())


def main() -> None:
    cli(prog_name="rcdm")


if __name__ == "__main__":
    main()
