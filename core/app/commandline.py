"""What every ``rcdm`` command shares: the common options, typed option values with their
origin, config loading, the one stage-command body, and user errors without a traceback.

Every stage command does the same five things, in :func:`stage`: load the config from its layers
(defaults, profile or ``pipeline.yaml``, ``--config``, the command's own options typed by click,
then ``--set``), print a summary of the values that differ from the defaults with their origin
(the whole resolved section under ``--dry-run``, and stop there), call the stage's one typed entry
point, and end with its result and where its output went.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from rcdm.app.load import PROFILES, load_config, resolve
from rcdm.config import (
    SECTIONS,
    ConfigError,
    PipelineConfig,
    Section,
    dump_yaml,
    field_default,
    section_fields,
    setting_of,
    to_dict,
)
from rcdm.errors import MissingInput, UserError

__all__ = [
    "USER_ERRORS",
    "call",
    "check_inputs",
    "inputs",
    "common_options",
    "entry",
    "fail",
    "load",
    "show",
    "stage",
    "summary",
    "typed_options",
]

# Errors a user can act on: printed without a traceback. Anything else (out of memory, a bug in
# rcdm or torch) keeps its traceback. The OS errors here always name the path at fault.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)
COMMON = ("config_path", "profile", "sets", "dry_run")


def common_options(fn: Callable) -> Callable:
    """--config, --profile, --set and --dry-run, shared by every stage command."""

    @click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="Pipeline config (default: ./pipeline.yaml if present and no --profile; else the paper's recipe).",
    )
    @click.option(
        "--profile",
        type=click.Choice(PROFILES),
        default=None,
        help="A config shipped with rcdm, the same from any directory (demo: the embedded demo run).",
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
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


def typed_options(ctx: click.Context, section: str, skip: tuple[str, ...] = ()) -> dict[str, tuple[Any, str]]:
    """The command's own options that were typed on the command line, as typed values:
    ``{"section.key": (value, "--flag")}``. An option's name is its config key."""
    out = {}
    for param in ctx.command.params:
        name = param.name
        if name in COMMON or name in skip or not isinstance(param, click.Option):
            continue
        if ctx.get_parameter_source(name) != ParameterSource.COMMANDLINE:
            continue
        out[f"{section}.{name}"] = (ctx.params[name], max(param.opts, key=len))
    return out


def load(ctx: click.Context, section: str | None, skip: tuple[str, ...] = (), resolved: bool = True) -> PipelineConfig:
    p = ctx.params
    try:
        cfg = load_config(
            p["config_path"],
            p["sets"],
            profile=p["profile"],
            options=typed_options(ctx, section, skip) if section else None,
        )
        return resolve(cfg) if resolved else cfg
    except ConfigError as e:
        raise click.UsageError(str(e)) from e


def show(title: str, section: Any, full: bool = True, prefix: str = "") -> None:
    """The resolved config on stderr: in full (``--dry-run``), else :func:`summary`."""
    click.echo(f"# {title}\n" + dump_yaml(section) if full else summary(title, section, prefix), err=True)


def _origin_group(where: str) -> str:
    if where.startswith("--set "):
        return "--set"
    return "options" if where.startswith("option ") else where


def summary(title: str, obj: Any, prefix: str = "") -> str:
    """A few lines instead of the whole YAML: the values that differ from rcdm's defaults,
    grouped by where they came from (paths derived from data.workdir left out). The full config
    is written as ``config.yaml`` beside each stage's outputs and printed by ``--dry-run``."""
    if isinstance(obj, PipelineConfig):
        parts = [(f"{name}.", getattr(obj, name)) for name in SECTIONS]
    else:
        parts = [(prefix, obj)]
    groups: dict[str, list[str]] = {}
    for pre, sec in parts:
        for f in section_fields(sec):
            where = sec.origin.get(f.name)
            if where and not where.startswith("derived ") and getattr(sec, f.name) != field_default(f):
                v = to_dict(getattr(sec, f.name))
                text = v if isinstance(v, str) else json.dumps(v)
                groups.setdefault(_origin_group(where), []).append(f"{pre}{f.name}={text}")
    n = sum(len(v) for v in groups.values())
    if not n:
        return f"# {title}: rcdm's defaults (the paper's recipe); --dry-run prints the full config"
    lines = [
        f"# {title}: {n} value(s) differ from rcdm's defaults (the paper's recipe); the full config "
        "is in the config.yaml beside the outputs, or printed by --dry-run"
    ]
    for where, items in groups.items():
        lines += textwrap.wrap(
            ", ".join(items),
            110,
            initial_indent=f"#   {where}: ",
            subsequent_indent="#       ",
            break_long_words=False,
            break_on_hyphens=False,
        )
    return "\n".join(lines)


def fail(e: BaseException) -> None:
    """Print a user-facing error without a traceback and exit non-zero."""
    click.secho(f"error: {e}", fg="red", err=True)
    sys.exit(1)


def call(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except USER_ERRORS as e:
        fail(e)


def check_inputs(section: Section) -> None:
    """The section's input paths exist (``path="in"`` keys when set; ``"in?"`` keys when the user
    set them, not derived from data.workdir), checked before the stage imports torch."""
    for f in section_fields(section):
        role = setting_of(f).path
        value = getattr(section, f.name)
        if role not in ("in", "in?") or value in (None, ()):
            continue
        if role == "in?" and section.derived(f.name, unknown=False):
            continue
        for p in value if isinstance(value, tuple) else (value,):
            if not Path(p).exists():
                where = section.origin.get(f.name)
                raise MissingInput(
                    f"{section.name()}.{f.name}: {p} does not exist"
                    + (f" ({where})" if where else "")
                    + f"; give an existing path with --set {section.name()}.{f.name}=PATH"
                )


def inputs(section: Section, dry_run: bool) -> None:
    """:func:`check_inputs`: an error, or under ``--dry-run`` a note (an earlier stage may make them)."""
    try:
        check_inputs(section)
    except MissingInput as e:
        if not dry_run:
            fail(e)
        click.echo(f"note: {e}", err=True)


def stage(
    ctx: click.Context,
    section: str,
    plan: Callable[[Any], str],
    entry: Callable[[Any], Path],
    done: str,
    cfg: PipelineConfig | None = None,
    after: Callable[[Path], list[str]] | None = None,
) -> None:
    """Load, show, honour --dry-run, run the stage's entry point, print what ``after`` says of
    its output (the result the user came for), then where the output is."""
    cfg = cfg or load(ctx, section)
    sec = getattr(cfg, section)
    show(section, sec, full=ctx.params["dry_run"], prefix=f"{section}.")
    call(sec.check)  # the rules between keys, and the inputs exist: before torch is imported
    inputs(sec, ctx.params["dry_run"])
    if ctx.params["dry_run"]:
        click.echo("dry run: " + call(plan, sec))
        return
    out = call(entry, sec)
    for line in call(after, out) if after else []:
        click.echo(line)
    click.echo(f"{done}: {out}")


def entry(module: str, name: str = "run") -> Callable[..., Any]:
    """A stage's entry point, imported when called (so --help and --dry-run stay torch-free);
    the call's arguments go to it as they are."""
    return lambda *args: getattr(importlib.import_module(module), name)(*args)
