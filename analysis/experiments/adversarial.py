"""adversarial (Fig. 4, 29): a linear probe trained on the train store; FGSM on the image through
encoder + probe at each epsilon (untargeted, or toward ``analyze.target_class``); the attacked
representations decoded by the RCDM; a red border marks the inputs and samples whose probe
prediction differs from the clean image's."""

from __future__ import annotations

import functools
from collections.abc import Callable

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


def run(ctx: Context) -> Entry:
    cfg = ctx.cfg
    train, val = ctx.store("train"), ctx.store("val")
    res = cached_probe(ctx, train, val)  # checks labels and that both stores match
    probe = res.probe.to(ctx.device).eval()
    if cfg.target_class is not None and not 0 <= cfg.target_class < res.n_classes:
        raise InvalidInput(
            f"analyze.target_class {cfg.target_class} is not a class of the probe (0..{res.n_classes - 1})"
        )
    if not cfg.epsilons or min(cfg.epsilons) < 0:
        raise InvalidInput(f"analyze.epsilons must be a non-empty list of numbers >= 0, got {list(cfg.epsilons)}")
    info = val.encoder_info
    enc = ctx.encoder(info)
    pp = val.preprocess
    rcdms, notes = ctx.store_rcdms(val, "adversarial")
    rows = ctx.pick(val, cfg.n_images, "adversarial")
    seeds = ctx.noise_seeds()
    targeted = cfg.target_class is not None
    # epsilon 0 is always drawn: the samples' own disagreement with the clean prediction is the
    # baseline every other epsilon is read against (noise alone changes many predictions)
    eps_list = [0.0] + sorted({float(e) for e in cfg.epsilons} - {0.0})
    name = functools.partial(ctx.class_name, train)
    records, figures = [], []
    changed_inputs = np.zeros(len(eps_list))
    changed_samples = {r.label: np.zeros(len(eps_list)) for r in rcdms}
    for n_img, i in enumerate(rows):
        img = ctx.image(val, i)
        x01, normalise = pixels_and_normalise(img, pp)
        x01 = x01.to(ctx.device)

        def forward(x: torch.Tensor, normalise=normalise) -> torch.Tensor:
            return probe(enc(normalise(x)))

        with torch.no_grad():
            clean_pred = int(forward(x01).argmax(1))
        y = torch.tensor([cfg.target_class if targeted else int(val.labels[i])], device=ctx.device)
        advs, h_adv, preds, losses = [], [], [], []
        for eps in eps_list:
            xa = fgsm(forward, x01, y, eps, targeted=targeted)
            with torch.no_grad():
                h = enc(normalise(xa))  # (1, D)
                logits = probe(h)
                preds.append(int(logits.argmax(1)))
                losses.append(float(torch.nn.functional.cross_entropy(logits, y)))  # the attacked loss
            h_adv.append(h[0].float().cpu().numpy())
            advs.append((xa[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8))
        h_adv = np.stack(h_adv)  # (E, D)
        changed = [p != clean_pred for p in preds]
        changed_inputs += np.array(changed, float)
        rec = {
            "key": val.keys[i],
            "label": int(val.labels[i]),
            "class": name(int(val.labels[i])),
            "clean_prediction": clean_pred,
            "clean_prediction_class": name(clean_pred),
            "attack": [],
        }
        for e, (eps, p, ch) in enumerate(zip(eps_list, preds, changed, strict=True)):
            rec["attack"].append(
                {
                    "epsilon": eps,
                    "prediction": p,
                    "prediction_class": name(p),
                    "changed": bool(ch),
                    "probe_loss": losses[e],
                    "repr_squared_distance": float(((h_adv[e] - h_adv[0]) ** 2).sum()),
                    "samples": {},
                }
            )
        for r in rcdms:
            samples = ctx.sample_grid(r, h_adv, seeds)  # (E, S, H, W, 3)
            with torch.no_grad():
                s_h = torch.from_numpy(ctx.encode(enc, samples.reshape(-1, *samples.shape[2:]))).to(ctx.device)
                s_pred = probe(s_h).argmax(1).cpu().numpy().reshape(len(eps_list), len(seeds))
            frac = (s_pred != clean_pred).mean(1)  # (E,) samples whose prediction differs
            size = display_size(r.image_size, [name(int(p)) for p in (*preds, *s_pred.ravel())] + ["+100 pts"])
            grid_rows = []
            for e, eps in enumerate(eps_list):
                delta = 100 * (frac[e] - frac[0])
                first = labelled(
                    advs[e],
                    f"eps {eps:g}\n{name(preds[e])}\n"
                    + (f"{100 * frac[e]:.0f}% baseline" if e == 0 else f"{delta:+.0f} pts"),
                    size,
                    lines=3,
                )
                if changed[e]:
                    first = red_border(first)
                row = [first]
                for s in range(len(seeds)):
                    t = labelled(samples[e, s], name(int(s_pred[e, s])), size, lines=3)
                    row.append(red_border(t) if s_pred[e, s] != clean_pred else t)
                grid_rows.append(row)
                changed_samples[r.label][e] += float(frac[e])
                rec["attack"][e]["samples"][r.path] = {
                    "predictions": s_pred[e].tolist(),
                    "changed_fraction": float(frac[e]),
                    "change_over_epsilon_0": float(frac[e] - frac[0]),
                }
            goal = (
                f"toward {name(cfg.target_class)}"
                if targeted
                else f"untargeted (true class {name(int(val.labels[i]))})"
            )
            cap = ctx.caption(
                r,
                seeds,
                f"FGSM on {val.keys[i]} through the encoder and a linear probe (val accuracy "
                f"{100 * res.val_accuracy:.1f}%), {goal}, epsilon {eps_list} on [0, 1] pixels; clean "
                f"prediction {name(clean_pred)}. Rows: attacked input (its epsilon, the probe's "
                "prediction, and the share of its samples whose prediction differs from the clean one: "
                f"at epsilon 0 the baseline, {100 * frac[0]:.0f}% here, which sampling noise alone causes; "
                "at larger epsilons the change over that baseline in percentage points), then samples "
                "from its representation labelled with the probe's prediction. Red border: prediction "
                "differs from the clean one",
            )
            figures.append(
                ctx.save_figure("adversarial", f"{r.label}_{n_img}", grid(grid_rows), cap, f"{r.title}: {val.keys[i]}")
            )
        records.append(rec)
    n = max(1, len(rows))
    table_rows = [
        [eps, changed_inputs[e] / n]
        + [
            x
            for r in rcdms
            for x in (changed_samples[r.label][e] / n, (changed_samples[r.label][e] - changed_samples[r.label][0]) / n)
        ]
        for e, eps in enumerate(eps_list)
    ]
    table = Table(
        "Fraction of predictions changed (epsilon 0: the baseline that sampling noise alone gives)",
        ["epsilon", "attacked inputs"]
        + [c for r in rcdms for c in (f"samples ({r.label})", f"change over epsilon 0 ({r.label})")],
        table_rows,
    )
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
        "images": records,
    }
    summary = ""
    if rcdms and len(eps_list) > 1:
        r = rcdms[0]
        base, top = changed_samples[r.label][0] / n, changed_samples[r.label][-1] / n
        summary = (
            f"{r.label}: at epsilon 0, {100 * base:.0f}% of the samples' probe predictions already "
            f"differ from the clean image's (the baseline: sampling noise alone); at epsilon "
            f"{eps_list[-1]:g}, {100 * top:.0f}%, {100 * (top - base):+.0f} points over it."
        )
    return ctx.finish(
        "adversarial",
        TITLE,
        numbers,
        figures,
        [probe_table, table],
        f"Encoder {describe_encoder(info)}; FGSM (one signed-gradient step) in pixel space.",
        notes,
        summary,
    )
