"""adversarial (Fig. 4, 29): a linear probe trained on the train store; FGSM on the image through
encoder + probe at each epsilon (untargeted, or toward ``analyze.target_class``); the attacked
representations decoded by the RCDM; a red border marks the inputs and samples whose probe
prediction differs from the clean image's."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from rcdm.analysis.experiments.common import Context, describe_encoder
from rcdm.analysis.experiments.figures import display_size, labelled
from rcdm.analysis.experiments.probe import cached_probe
from rcdm.analysis.probe import fgsm
from rcdm.analysis.report import Entry, Table
from rcdm.errors import InvalidInput
from rcdm.viz import grid, red_border

TITLE = "Adversarial attacks on a linear probe, decoded (Fig. 4, 29)"


def pixels_and_normalise(img, pp) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """The encoder input as pixels ``(1, 3, S, S)`` in [0, 1] and the differentiable map from
    pixels to the encoder's normalised input (value range, then mean / std)."""
    from rcdm.data.images import encoder_input

    lo, hi = pp.value_range
    mean = torch.tensor(pp.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pp.std, dtype=torch.float32).view(1, 3, 1, 1)
    xn = encoder_input(img, pp)[None]  # (1, 3, S, S) normalised
    x01 = (((xn * std + mean) - lo) / (hi - lo)).clamp(0, 1)

    def normalise(x: torch.Tensor) -> torch.Tensor:
        return ((x * (hi - lo) + lo) - mean.to(x.device)) / std.to(x.device)

    return x01, normalise


@dataclass
class _Attack:
    """What every image's attack and its figures share."""

    val: Any  # the val store: the attacked images
    enc: Any  # the encoder
    probe: Any  # the linear probe on its features
    pp: Any  # the store's preprocessing
    eps_list: list[float]  # epsilon 0 first
    targeted: bool
    name: Callable[[int], str]  # class label -> name
    res: Any  # the probe's ProbeResult
    rcdms: list
    seeds: list[int]


@dataclass
class _Results:
    records: list = field(default_factory=list)
    figures: list = field(default_factory=list)
    changed_inputs: Any = None  # (E,) attacked inputs whose prediction changed, summed over images
    changed_samples: dict = field(default_factory=dict)  # checkpoint label -> (E,) changed fractions, summed


def run(ctx: Context) -> Entry:
    """The probe and its checks, then each picked image attacked and decoded (:func:`_image`),
    then the fractions of predictions changed, per epsilon."""
    cfg = ctx.cfg
    train, val = ctx.store("train"), ctx.store("val")
    res = cached_probe(ctx, train, val)  # checks labels and that both stores match
    probe = res.probe.to(ctx.device).eval()
    _check_settings(cfg, res.n_classes)
    info = val.encoder_info
    enc = ctx.encoder(info)
    rcdms, notes = ctx.store_rcdms(val, "adversarial")
    rows = ctx.pick(val, cfg.n_images, "adversarial")
    seeds = ctx.noise_seeds()
    # epsilon 0 is always drawn: the samples' own disagreement with the clean prediction is the
    # baseline every other epsilon is read against (noise alone changes many predictions)
    eps_list = [0.0] + sorted({float(e) for e in cfg.epsilons} - {0.0})
    name = functools.partial(ctx.class_name, train)
    at = _Attack(val, enc, probe, val.preprocess, eps_list, cfg.target_class is not None, name, res, rcdms, seeds)
    out = _Results(changed_inputs=np.zeros(len(eps_list)))
    out.changed_samples = {r.label: np.zeros(len(eps_list)) for r in rcdms}
    for n_img, i in enumerate(rows):
        _image(ctx, at, n_img, i, out)
    n = max(1, len(rows))
    probe_table = Table(
        "Probe",
        ["encoder", "layer", "val accuracy", "train accuracy"],
        [[info.get("name"), val.layer, res.val_accuracy, res.train_accuracy]],
    )
    numbers = {
        "seed": cfg.seed,
        "noise_seeds": seeds,
        "probe": res.to_dict(),
        "epsilons": eps_list,
        "target_class": cfg.target_class,
        "images": out.records,
    }
    return ctx.finish(
        "adversarial",
        TITLE,
        numbers,
        out.figures,
        [probe_table, _changed_table(at, out, n)],
        f"Encoder {describe_encoder(info)}; FGSM (one signed-gradient step) in pixel space.",
        notes,
        _summary(at, out, n),
    )


def _check_settings(cfg, n_classes: int) -> None:
    if cfg.target_class is not None and not 0 <= cfg.target_class < n_classes:
        raise InvalidInput(f"analyze.target_class {cfg.target_class} is not a class of the probe (0..{n_classes - 1})")
    if not cfg.epsilons or min(cfg.epsilons) < 0:
        raise InvalidInput(f"analyze.epsilons must be a non-empty list of numbers >= 0, got {list(cfg.epsilons)}")


def _image(ctx: Context, at: _Attack, n_img: int, i: int, out: _Results) -> None:
    """Image ``i``: FGSM at each epsilon, the probe's predictions and its record, then each
    checkpoint's samples from the attacked representations (:func:`_decode`)."""
    val, name = at.val, at.name
    x01, normalise = pixels_and_normalise(ctx.image(val, i), at.pp)
    x01 = x01.to(ctx.device)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return at.probe(at.enc(normalise(x)))

    with torch.no_grad():
        clean_pred = int(forward(x01).argmax(1))
    y = torch.tensor([ctx.cfg.target_class if at.targeted else int(val.labels[i])], device=ctx.device)
    advs, h_adv, preds, losses = _attack(forward, normalise, at, x01, y)
    changed = [p != clean_pred for p in preds]
    out.changed_inputs += np.array(changed, float)
    rec = {
        "key": val.keys[i],
        "label": int(val.labels[i]),
        "class": name(int(val.labels[i])),
        "clean_prediction": clean_pred,
        "clean_prediction_class": name(clean_pred),
        "attack": [
            {
                "epsilon": eps,
                "prediction": p,
                "prediction_class": name(p),
                "changed": bool(ch),
                "probe_loss": losses[e],
                "repr_squared_distance": float(((h_adv[e] - h_adv[0]) ** 2).sum()),
                "samples": {},
            }
            for e, (eps, p, ch) in enumerate(zip(at.eps_list, preds, changed, strict=True))
        ],
    }
    for r in at.rcdms:
        _decode(ctx, at, r, (n_img, i, clean_pred), (advs, h_adv, preds, changed), rec, out)
    out.records.append(rec)


def _attack(forward: Callable, normalise: Callable, at: _Attack, x01: torch.Tensor, y: torch.Tensor):
    """FGSM at each epsilon: the attacked inputs (uint8 HWC), their representations ``(E, D)``,
    the probe's predictions and its loss on the attacked target."""
    advs, h_adv, preds, losses = [], [], [], []
    for eps in at.eps_list:
        xa = fgsm(forward, x01, y, eps, targeted=at.targeted)
        with torch.no_grad():
            h = at.enc(normalise(xa))  # (1, D)
            logits = at.probe(h)
            preds.append(int(logits.argmax(1)))
            losses.append(float(torch.nn.functional.cross_entropy(logits, y)))  # the attacked loss
        h_adv.append(h[0].float().cpu().numpy())
        advs.append((xa[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8))
    return advs, np.stack(h_adv), preds, losses  # h_adv: (E, D)


def _decode(ctx: Context, at: _Attack, r, image: tuple, attacked: tuple, rec: dict, out: _Results) -> None:
    """Checkpoint ``r``'s samples of each attacked representation, labelled with the probe's
    prediction (red border: it differs from the clean one); the figure and the record's numbers."""
    (n_img, i, clean_pred), (advs, h_adv, preds, changed) = image, attacked
    val, name, seeds, eps_list = at.val, at.name, at.seeds, at.eps_list
    samples = ctx.sample_grid(r, h_adv, seeds)  # (E, S, H, W, 3)
    with torch.no_grad():
        s_h = torch.from_numpy(ctx.encode(at.enc, samples.reshape(-1, *samples.shape[2:]))).to(ctx.device)
        s_pred = at.probe(s_h).argmax(1).cpu().numpy().reshape(len(eps_list), len(seeds))
    frac = (s_pred != clean_pred).mean(1)  # (E,) samples whose prediction differs
    size = display_size(r.image_size, [name(int(p)) for p in (*preds, *s_pred.ravel())] + ["+100 pts"])
    grid_rows = []
    for e, eps in enumerate(eps_list):
        delta = 100 * (frac[e] - frac[0])
        first = labelled(
            advs[e],
            f"eps {eps:g}\n{name(preds[e])}\n" + (f"{100 * frac[e]:.0f}% baseline" if e == 0 else f"{delta:+.0f} pts"),
            size,
            lines=3,
        )
        row = [red_border(first) if changed[e] else first]
        for s in range(len(seeds)):
            t = labelled(samples[e, s], name(int(s_pred[e, s])), size, lines=3)
            row.append(red_border(t) if s_pred[e, s] != clean_pred else t)
        grid_rows.append(row)
        out.changed_samples[r.label][e] += float(frac[e])
        rec["attack"][e]["samples"][r.path] = {
            "predictions": s_pred[e].tolist(),
            "changed_fraction": float(frac[e]),
            "change_over_epsilon_0": float(frac[e] - frac[0]),
        }
    goal = (
        f"toward {name(ctx.cfg.target_class)}" if at.targeted else f"untargeted (true class {name(int(val.labels[i]))})"
    )
    cap = ctx.caption(
        r,
        seeds,
        f"FGSM on {val.keys[i]} through the encoder and a linear probe (val accuracy "
        f"{100 * at.res.val_accuracy:.1f}%), {goal}, epsilon {eps_list} on [0, 1] pixels; clean "
        f"prediction {name(clean_pred)}. Rows: attacked input (its epsilon, the probe's "
        "prediction, and the share of its samples whose prediction differs from the clean one: "
        f"at epsilon 0 the baseline, {100 * frac[0]:.0f}% here, which sampling noise alone causes; "
        "at larger epsilons the change over that baseline in percentage points), then samples "
        "from its representation labelled with the probe's prediction. Red border: prediction "
        "differs from the clean one",
    )
    out.figures.append(
        ctx.save_figure("adversarial", f"{r.label}_{n_img}", grid(grid_rows), cap, f"{r.title}: {val.keys[i]}")
    )


def _changed_table(at: _Attack, out: _Results, n: int) -> Table:
    """Per epsilon: the attacked inputs and each checkpoint's samples whose prediction changed."""
    cs = out.changed_samples
    rows = [
        [eps, out.changed_inputs[e] / n]
        + [x for r in at.rcdms for x in (cs[r.label][e] / n, (cs[r.label][e] - cs[r.label][0]) / n)]
        for e, eps in enumerate(at.eps_list)
    ]
    return Table(
        "Fraction of predictions changed (epsilon 0: the baseline that sampling noise alone gives)",
        ["epsilon", "attacked inputs"]
        + [c for r in at.rcdms for c in (f"samples ({r.label})", f"change over epsilon 0 ({r.label})")],
        rows,
    )


def _summary(at: _Attack, out: _Results, n: int) -> str:
    """The first checkpoint's changed share at epsilon 0 and at the largest epsilon."""
    if not at.rcdms or len(at.eps_list) < 2:
        return ""
    r, eps_list = at.rcdms[0], at.eps_list
    base, top = out.changed_samples[r.label][0] / n, out.changed_samples[r.label][-1] / n
    return (
        f"{r.label}: at epsilon 0, {100 * base:.0f}% of the samples' probe predictions already "
        f"differ from the clean image's (the baseline: sampling noise alone); at epsilon "
        f"{eps_list[-1]:g}, {100 * top:.0f}%, {100 * (top - base):+.0f} points over it."
    )
