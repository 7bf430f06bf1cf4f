"""The one scale on which rcdm states how faithful samples are to their representation.

Faithfulness is measured by re-encoding each sample and ranking its conditioning image among the
reference images (``rcdm evaluate``: mean rank, MRR). The verdict is read off the MRR on a fixed,
documented scale, and is always printed beside chance (and beside the retrieval baseline when the
evaluation reports one), so neither the report nor the terminal ever says more than the numbers.
The scale applies to the chance-corrected MRR, (MRR - chance) / (1 - chance), which is the MRR
itself for a large reference set and does not flatter a small one (24 images: chance 0.157):

    corrected MRR below 0.2: weak;  0.2 to 0.6: partial;  above 0.6: faithful;
    not above chance (MRR <= 1.1 x chance MRR, or mean rank >= chance): no better than chance.

No torch, no numpy: the CLI and the report both use it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "SCALE",
    "SCALE_TEXT",
    "Verdict",
    "corrected",
    "grade",
    "metrics_summary",
    "retrieval_baseline",
    "verdict",
    "verdict_of_metrics",
]

# (lowest MRR, word), best first: 0.6 itself is "partial", 0.2 itself is "partial".
SCALE: tuple[tuple[float, str], ...] = ((0.6, "faithful"), (0.2, "partial"), (0.0, "weak"))
SCALE_TEXT = (
    f"scale on the chance-corrected MRR: < {SCALE[1][0]:g} {SCALE[2][1]}, "
    f"{SCALE[1][0]:g}-{SCALE[0][0]:g} {SCALE[1][1]}, > {SCALE[0][0]:g} {SCALE[0][1]}"
)
CHANCE_MARGIN = 1.1  # an MRR within 10% of chance is not read as better than chance


@dataclass(frozen=True)
class Verdict:
    word: str  # "no better than chance" | "weak" | "partial" | "faithful"
    sentence: str  # the word, then the numbers it was read from (chance, baseline, scale)

    def __str__(self) -> str:
        return self.sentence


def grade(mrr: float, chance_mrr: float, mean_rank: float | None = None, chance_rank: float | None = None) -> str:
    """The verdict's word for an MRR (and, when given, a mean rank) against chance."""
    if mrr <= CHANCE_MARGIN * chance_mrr or (
        mean_rank is not None and chance_rank is not None and mean_rank >= chance_rank
    ):
        return "no better than chance"
    c = corrected(mrr, chance_mrr)
    if c > SCALE[0][0]:
        return SCALE[0][1]
    return SCALE[1][1] if c >= SCALE[1][0] else SCALE[2][1]


def corrected(mrr: float, chance_mrr: float) -> float:
    """(MRR - chance) / (1 - chance): 0 at chance, 1 when every conditioning image ranks first."""
    return (mrr - chance_mrr) / max(1e-12, 1.0 - chance_mrr)


def verdict(
    mean_rank: float,
    chance_rank: float,
    mrr: float,
    chance_mrr: float,
    n_reference: int | None = None,
    baseline: dict | None = None,
) -> Verdict:
    """The verdict with its numbers: ``Weak: MRR 0.154 (chance 0.030), mean rank 32.0 of 192
    (chance 96.5); scale: ...``. ``baseline`` (optional) is a retrieval baseline the evaluation
    reports, ``{"name": ..., "mrr": ..., "mean_rank": ...}``, printed beside the numbers."""
    word = grade(mrr, chance_mrr, mean_rank, chance_rank)
    of = f" of {n_reference}" if n_reference else ""
    parts = [
        f"MRR {mrr:.3f} (chance {chance_mrr:.3f}; chance-corrected {corrected(mrr, chance_mrr):.3f}), "
        f"mean rank {mean_rank:.1f}{of} (chance {chance_rank:.1f})"
    ]
    if baseline and baseline.get("mrr") is not None:
        b = f"{baseline.get('name') or 'retrieval baseline'}: MRR {float(baseline['mrr']):.3f}"
        if baseline.get("mean_rank") is not None:
            b += f", mean rank {float(baseline['mean_rank']):.1f}"
        parts.append(b)
    hint = {
        "no better than chance": " The model does not use the representation yet: train longer.",
        "weak": " Train longer for faithful samples.",
    }.get(word, "")
    return Verdict(word, f"{word[0].upper() + word[1:]}: {'; '.join(parts)} ({SCALE_TEXT}).{hint}")


def retrieval_baseline(m: dict) -> dict | None:
    """The retrieval baseline of an evaluation's ``metrics.json`` in the conditioning space, when
    ``rcdm evaluate`` computed one (``evaluate.train_store``): the nearest training image to each
    condition, scored as if it were the sample (``faithfulness.spaces[0].baseline``)."""
    spaces = (m.get("faithfulness") or {}).get("spaces") or []
    b = spaces[0].get("baseline") if spaces and isinstance(spaces[0], dict) else None
    if not isinstance(b, dict) or b.get("mrr") is None:
        return None
    return {"name": "retrieval baseline (nearest training image)", "mrr": b["mrr"], "mean_rank": b.get("mean_rank")}


def verdict_of_metrics(m: dict) -> Verdict | None:
    """The verdict of an evaluation's ``metrics.json`` (``rank.in_reference``, beside its
    retrieval baseline), or None when no sample was conditioned on a reference image."""
    rank = (m.get("rank") or {}).get("in_reference") or {}
    if rank.get("mrr") is None or rank.get("mean_rank") is None:
        return None
    return verdict(
        rank["mean_rank"],
        rank["chance_mean_rank"],
        rank["mrr"],
        rank["chance_mrr"],
        rank.get("N"),
        retrieval_baseline(m),
    )


def metrics_summary(m: dict) -> list[str]:
    """What ``rcdm evaluate`` / ``rcdm run`` end with: the verdict and its numbers, then FID / IS
    or why they were not computed. ``m`` is an evaluation's ``metrics.json``."""
    lines = []
    v = verdict_of_metrics(m)
    if v is not None:
        n = ((m.get("rank") or {}).get("in_reference") or {}).get("n")
        lines.append(f"faithfulness ({n} samples): {v.sentence}")
        spaces = (m.get("faithfulness") or {}).get("spaces") or []
        px = next((s for s in spaces if isinstance(s, dict) and s.get("space") == "pixels"), None)
        if px and px.get("mrr") is not None:
            lines.append(
                f"  in pixel space (no encoder to fool): mean rank {float(px['mean_rank']):.1f} of {px['N']}, "
                f"MRR {float(px['mrr']):.3f} (chance {float(px['chance_mrr']):.3f})"
            )
    else:
        lines.append("faithfulness: no sample was conditioned on a reference image, so no rank / MRR")
    fid, is_ = m.get("fid") or {}, m.get("is") or {}
    if fid.get("value") is not None:
        txt = f"FID {fid['value']:.2f}"
        if is_.get("mean") is not None:
            txt += f", IS {is_['mean']:.2f} ± {is_.get('std', 0.0):.2f}"
        lines.append(txt + f" ({m.get('n_samples')} samples)")
    else:
        lines.append(f"FID / IS not computed: {fid.get('reason') or 'not asked for'}")
        if fid.get("how_to_enable"):
            lines.append(f"  to compute them: {fid['how_to_enable']}")
    return lines
