"""``rcdm run``: the stages in order, skipping those whose manifest says they finished.

The CLI is the only other place that imports the stages; this module does so inside functions.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from rcdm.config import ExtractConfig, PipelineConfig
from rcdm.errors import InvalidInput

STAGES = ("data", "extract", "train", "sample", "evaluate", "analyze")


def parse_stages(text: str | None) -> tuple[str, ...]:
    if not text:
        return STAGES
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [n for n in names if n not in STAGES]
    if bad:
        raise InvalidInput(f"unknown stage(s) {', '.join(bad)}; choose from {','.join(STAGES)}")
    return tuple(s for s in STAGES if s in names)  # always in pipeline order


def extract_jobs(cfg: PipelineConfig, both_splits: bool = True) -> list[ExtractConfig]:
    """The stores to extract: data.train and data.val into <workdir>/stores/{train,val} by
    default (what ``rcdm run`` and a bare ``rcdm extract`` do), else the one configured."""
    ex = cfg.extract
    if not both_splits:
        return [ex]
    mine = {k: ex.origin[k] for k in ("source", "out") if not ex.derived(k, unknown=True)}
    if mine:
        set_by = "; ".join(f"extract.{k} from {v}" for k, v in mine.items())
        raise InvalidInput(
            f"the pipeline extracts both splits into {Path(cfg.data.workdir) / 'stores'}/{{train,val}}, "
            f"so it cannot honour {set_by}: set data.workdir to move every output, data.train / "
            "data.val to change the images, or run `rcdm extract --source ... --out ...` for one store"
        )
    if not cfg.data.train or not cfg.data.val:
        raise InvalidInput(
            "data.train and data.val are not set: give your image folders in pipeline.yaml (or "
            "--set data.train=/data/imagenet/train --set data.val=/data/imagenet/val); for the "
            "embedded demo, run `rcdm demo`"
        )
    w = Path(cfg.data.workdir) / "stores"
    return [
        replace(ex, source=cfg.data.train, out=str(w / "train")),
        replace(ex, source=cfg.data.val, out=str(w / "val")),
    ]


def _outputs(cfg: PipelineConfig, stage: str) -> list[Path]:
    """A stage's finished markers."""
    if stage == "data":
        return [Path(p) for p in (cfg.data.train, cfg.data.val) if p]
    if stage == "extract":
        return [Path(j.out) / "manifest.json" for j in extract_jobs(cfg)]
    section = getattr(cfg, stage)
    return [Path(section.out) / "manifest.json"]


def _finished(cfg: PipelineConfig, stage: str) -> bool:
    if stage == "data":
        if not cfg.data.demo:
            return True  # user data: nothing to build
        from rcdm.data import demo

        return demo.is_built(cfg.data)
    return all(p.exists() for p in _outputs(cfg, stage))


def plan(cfg: PipelineConfig, stages: tuple[str, ...], force: bool = False) -> list[str]:
    lines = []
    for s in stages:
        state = "skip (finished)" if (not force and _finished(cfg, s)) else "run"
        outs = ", ".join(str(p) for p in _outputs(cfg, s))
        lines.append(f"{s:9s} {state:16s} -> {outs}")
    return lines


def run(cfg: PipelineConfig, stages: tuple[str, ...] = STAGES, force: bool = False) -> Path:
    """Run ``stages`` in order; returns the report path (or the last stage's output)."""
    last: Path = Path(cfg.data.workdir)
    for stage in stages:
        if not force and _finished(cfg, stage):
            print(f"[rcdm run] {stage}: finished earlier, skipping (use --force to redo)", flush=True)
            last = _outputs(cfg, stage)[0].parent
            continue
        print(f"[rcdm run] {stage}: starting", flush=True)
        t0 = time.time()
        last = _run_stage(cfg, stage, force)
        print(f"[rcdm run] {stage}: done in {time.time() - t0:.0f}s -> {last}", flush=True)
    if "analyze" in stages:
        return Path(cfg.analyze.out) / "report.html"  # also when the stage was skipped
    return last


def _run_stage(cfg: PipelineConfig, stage: str, force: bool) -> Path:
    if stage == "data":
        if not cfg.data.demo:
            return Path(cfg.data.train or cfg.data.workdir)
        from rcdm.data import demo

        train, _ = demo.build(cfg.data)
        return train.parent
    if stage == "extract":
        import rcdm.extract

        paths = [rcdm.extract.run(replace(j, overwrite=j.overwrite or force)) for j in extract_jobs(cfg)]
        return paths[0].parent
    if stage == "train":
        # --force does not throw training away: a finished run continues only if train.kimg grew.
        # Delete the run folder (or pick another train.out) to train from scratch.
        import rcdm.train

        return rcdm.train.run(cfg.train)
    if stage == "sample":
        import rcdm.sample

        return rcdm.sample.run(replace(cfg.sample, overwrite=cfg.sample.overwrite or force))
    if stage == "evaluate":
        import rcdm.analysis

        return rcdm.analysis.evaluate(cfg.evaluate)
    if stage == "analyze":
        import rcdm.analysis

        return rcdm.analysis.analyze(cfg.analyze)
    raise AssertionError(stage)


# ``rcdm demo --compare``: the demo through each layer, then one report of them side by side.
# The trunk's run is the demo's own (``rcdm demo`` first makes --compare two runs shorter).
COMPARED = (("trunk", "simclr-mini", "trunk"), ("head", "simclr-mini", "head"), ("random", "random-rn50", "trunk"))
COMPARE_STAGES = ("data", "extract", "train", "sample", "evaluate")


def compare_root(cfg: PipelineConfig) -> Path:
    return Path(f"{cfg.data.workdir}-compare")


def compare_configs(cfg: PipelineConfig) -> list[tuple[str, PipelineConfig]]:
    """One pipeline per compared layer: the demo's own for its encoder's trunk, the others under
    ``<workdir>-compare/<name>`` (the images shared)."""
    from rcdm.app.load import resolve, set_value

    out = []
    for name, encoder, layer in COMPARED:
        c = cfg
        if (encoder, layer) != (cfg.extract.encoder, cfg.extract.layer):
            c = set_value(c, "data", "workdir", str(compare_root(cfg) / name), "rcdm demo --compare")
        c = set_value(c, "extract", "encoder", encoder, "rcdm demo --compare")
        c = set_value(c, "extract", "layer", layer, "rcdm demo --compare")
        out.append((name, resolve(c)))
    return out


def compare_analysis(cfg: PipelineConfig, runs: list[tuple[str, PipelineConfig]]):
    """The analysis of every compared run together: the layers side by side, then invariance."""
    from rcdm.app.load import set_value

    first = runs[0][1]
    a = cfg
    for key, value in (
        ("checkpoints", tuple(c.train.out for _, c in runs)),
        ("evaluations", tuple(c.evaluate.out for _, c in runs)),
        ("train_store", first.analyze.train_store),
        ("val_store", first.analyze.val_store),
        ("out", str(compare_root(cfg) / "analysis")),
        ("experiments", ("layers", "invariance")),
        ("layers", ("trunk", "head")),
        ("prior", None),
    ):
        a = set_value(a, "analyze", key, value, "rcdm demo --compare")
    return a.analyze


def compare(cfg: PipelineConfig, force: bool = False) -> Path:
    """Run the demo through each layer of ``COMPARED`` (finished stages skipped), then the joint
    analysis; returns its report."""
    import rcdm.analysis

    runs = compare_configs(cfg)
    for name, c in runs:
        print(f"[rcdm demo --compare] {name}: {c.extract.encoder} {c.extract.layer} -> {c.data.workdir}", flush=True)
        run(c, COMPARE_STAGES, force)
    a = compare_analysis(cfg, runs)
    if force or not (Path(a.out) / "manifest.json").is_file():
        rcdm.analysis.analyze(a)
    else:
        print("[rcdm demo --compare] analysis: finished earlier, skipping (use --force to redo)", flush=True)
    return Path(a.out) / "report.html"
