"""Does a feature store fit a run? One comparison of what makes a conditioning vector h.

h = f(x) depends on the encoder (registry name, architecture, layer, weights file, the seed of a
random one) and on how x was made from the image (resize rule, crop = input size, value range,
mean / std). A run records all of it in ``model.json`` (``encoder`` and ``preprocess``, from the
store it was trained on); a store in its manifest. :func:`mismatches` lists what both record and
what differs; fields one side does not record (older runs, official ``.pt`` files) are not
compared. :func:`check_conditioning` raises on any mismatch, :func:`same_representation` is the
boolean form (analysis: can a store's cached features condition this run?).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rcdm.errors import InvalidInput

__all__ = [
    "Conditioning",
    "Mismatch",
    "mismatches",
    "same_representation",
    "check_conditioning",
    "extraction_for",
]

# Encoder-info fields that change h, with how a mismatch is named.
_ENCODER_FIELDS = {
    "name": "encoder",
    "arch": "encoder architecture",
    "layer": "layer",
    "weights_sha256": "encoder weights sha256",
    "seed": "random encoder seed",
}
# Preprocess fields (``Preprocess.to_dict()``) that change h; "rule" is only their description.
_PREPROCESS_FIELDS = {
    "crop": "input size",
    "resize": "resize",
    "resize_rule": "resize rule",
    "interpolation": "interpolation",
    "value_range": "value range",
    "mean": "mean",
    "std": "std",
}


@dataclass(frozen=True)
class Conditioning:
    """What a conditioning vector is: its dimension, the encoder and its input's preprocessing.

    ``hint``: an official checkpoint records no encoder, but its file name may name one
    (``rcdm_ema_dino_trunk.pt`` -> ``{"name": "dino", "layer": "trunk"}``).
    """

    dim: int | None = None
    encoder: Mapping[str, Any] = field(default_factory=dict)
    preprocess: Mapping[str, Any] | None = None
    hint: Mapping[str, Any] | None = None

    @classmethod
    def of_run(cls, meta: Mapping[str, Any]) -> Conditioning:
        """From a run's ``model.json`` / a weights file's meta (what the model was trained on)."""
        encoder = dict(meta.get("encoder") or {})
        unet = meta.get("unet") or {}
        dim = unet.get("cond_dim") if unet.get("cond_dim") is not None else encoder.get("dim")
        return cls(
            dim=None if dim is None else int(dim),
            encoder=encoder,
            preprocess=meta.get("preprocess") or encoder.get("preprocess"),
            hint=meta.get("encoder_hint") or None,
        )

    @classmethod
    def of_store(cls, store: Any) -> Conditioning:
        """From a :class:`~rcdm.store.FeatureStore` (its manifest)."""
        encoder = dict(store.encoder_info)
        encoder.setdefault("layer", store.layer)
        manifest = getattr(store, "manifest", None) or {}
        return cls(
            dim=int(store.dim), encoder=encoder, preprocess=manifest.get("preprocess") or encoder.get("preprocess")
        )

    @classmethod
    def of_encoder(cls, info: Mapping[str, Any]) -> Conditioning:
        """From an encoder info (``Encoder.info()``, a manifest's ``encoder`` field)."""
        return cls(dim=info.get("dim"), encoder=dict(info), preprocess=info.get("preprocess"))

    def describe(self) -> str:
        """e.g. ``encoder random-rn50/trunk (2048-d features)``."""
        if self.encoder.get("name"):
            who = f"encoder {self.encoder['name']}/{self.encoder.get('layer', '?')}"
        elif self.hint:
            who = f"an encoder not recorded (file named for {self.hint.get('name')}/{self.hint.get('layer')})"
        else:
            who = "an encoder not recorded"
        return f"{who} ({self.dim if self.dim is not None else '?'}-d features)"


@dataclass(frozen=True)
class Mismatch:
    """One field both sides record with different values."""

    what: str  # e.g. "random encoder seed", "input size"
    run: Any  # the run's (or the first side's) value
    store: Any

    def __str__(self) -> str:
        return f"{self.what} {_show(self.run)} vs {_show(self.store)}"


def mismatches(run: Conditioning, store: Conditioning) -> list[Mismatch]:
    """Every field recorded on both sides that differs (empty: the store's features fit)."""
    found = []
    if run.dim is not None and store.dim is not None and int(run.dim) != int(store.dim):
        found.append(Mismatch("feature dim", run.dim, store.dim))
    for key, what in _ENCODER_FIELDS.items():
        a, b = run.encoder.get(key), store.encoder.get(key)
        if a is not None and b is not None and a != b:
            found.append(Mismatch(what, a, b))
    for side, other in ((run, store), (store, run)):
        named = _hint_conflict(side, other)
        if named:
            found.append(Mismatch("encoder named by the file", named, _name_layer(other.encoder)))
    if run.preprocess and store.preprocess:
        for key, what in _PREPROCESS_FIELDS.items():
            a, b = _norm(run.preprocess.get(key)), _norm(store.preprocess.get(key))
            if a is not None and b is not None and a != b:
                found.append(Mismatch(what, a, b))
    return found


def same_representation(a: Conditioning, b: Conditioning) -> bool:
    """``a`` and ``b`` are the same representation: features of one can stand for the other's."""
    return not mismatches(a, b)


def check_conditioning(meta: Mapping[str, Any], store: Any, *, what: str = "the checkpoint") -> None:
    """Refuse a store whose features are not what the model ``meta`` describes was trained on.

    ``meta``: a run's ``model.json`` or a weights file's meta (``load_model``'s second result);
    ``store``: a :class:`~rcdm.store.FeatureStore`; ``what`` names the model in messages
    (``"checkpoint runs/a"``, ``"--init-from runs/a"``).
    Raises :class:`~rcdm.errors.InvalidInput` naming both values and the store to pass.
    """
    unet = meta.get("unet") or {}
    if unet.get("cond") == "none":
        raise InvalidInput(
            f"{what} is unconditional (cond 'none'): it takes no representation; "
            "use an RCDM checkpoint (trained with cond 'embed' or 'cbn')"
        )
    run, mine = Conditioning.of_run(meta), Conditioning.of_store(store)
    found = mismatches(run, mine)
    if not found:
        return
    layer = next((m for m in found if m.what == "layer" and "tokens" in (m.run, m.store)), None)
    if layer is not None:
        raise InvalidInput(_tokens_mismatch(what, layer.run, layer.store, store.path))
    named = [m for m in found if m.what == "encoder named by the file"]
    if named:
        raise InvalidInput(
            f"{what} is named for encoder {named[0].run} but the store {store.path} "
            f"was made with {named[0].store}; pass a store extracted with that encoder and layer"
        )
    raise InvalidInput(
        f"{what} was trained on {run.describe()} but the store {store.path} holds "
        f"{mine.describe()}: {', '.join(map(str, found))}. Pass the store extracted with "
        f"{extraction_for(run, found)}, or a checkpoint trained on this store's features"
    )


def _tokens_mismatch(what: str, run_layer: str, store_layer: str, store_path: Any) -> str:
    """The message for a token grid given to a model of pooled vectors, or the reverse."""
    if store_layer == "tokens":
        return (
            f"{what} was trained on pooled {run_layer!r} vectors, but the store {store_path} holds a "
            f"patch-token grid (layer 'tokens'): pass a store extracted with --layer {run_layer}, or "
            "train a model on this store (train.cond xattn attends to the tokens; embed / cbn use their mean)"
        )
    return (
        f"{what} was trained on a patch-token grid (layer 'tokens'), but the store {store_path} holds "
        f"pooled {store_layer!r} vectors: pass a store extracted with --layer tokens (same encoder and input size)"
    )


def extraction_for(run: Conditioning, found: list[Mismatch]) -> str:
    """The `rcdm extract` settings that make ``run``'s features, given what ``found`` differs in
    (the fix a message names; evaluation's check of its reference store uses it too)."""
    enc, pp, what = run.encoder, run.preprocess, {m.what for m in found}
    if not enc.get("name"):
        return f"the encoder and layer the checkpoint was trained on ({run.dim}-d features)"
    parts = [f"`rcdm extract --encoder {enc['name']} --layer {enc.get('layer') or 'trunk'}`"]
    if "encoder weights sha256" in what:
        parts.append(f"its weights file with sha256 {_show(enc['weights_sha256'])}")
    if "random encoder seed" in what:
        parts.append(f"extract.seed={enc['seed']}")
    if pp and what & {"resize rule", "interpolation", "value range", "mean", "std"}:
        parts.append(f"extract.preprocess={_preset_name(pp)}")
    if pp and what & {"input size", "resize"}:
        parts.append(f"extract.input_size={pp.get('crop')}")
    return ", ".join(parts)


def _preset_name(pp: Mapping[str, Any]) -> str:
    """The ``extract.preprocess`` preset whose rule ``pp`` follows (any input size)."""
    from rcdm.data.preprocess import PREPROCESS

    style = ("resize_rule", "interpolation", "value_range", "mean", "std")
    for name, preset in PREPROCESS.items():
        d = preset.to_dict()
        if all(_norm(pp.get(k)) == _norm(d.get(k)) for k in style):
            return name
    return "? (" + ", ".join(f"{k} {_show(_norm(pp.get(k)))}" for k in style) + ")"


def _hint_conflict(hinted: Conditioning, other: Conditioning) -> str | None:
    """The hinted encoder when a file-name hint names an encoder family other than ``other``'s.

    Only a side that records no encoder uses its hint, and only a hint naming an encoder of the
    registry (``dino`` -> ``dino-rn50``, ``dino-vits16``); any other file name is no hint."""
    hint = hinted.hint or {}
    name, theirs = str(hint.get("name") or ""), other.encoder.get("name")
    if not name or hinted.encoder.get("name") or not theirs or not _known_family(name):
        return None
    same = str(theirs).startswith(name) and hint.get("layer") in (None, other.encoder.get("layer"))
    return None if same else f"{name} ({hint.get('layer') or 'trunk'})"


def _known_family(name: str) -> bool:
    from rcdm.encoders.registry import REGISTRY

    return any(n.startswith(name + "-") or n == name for n in REGISTRY)


def _name_layer(encoder: Mapping[str, Any]) -> str:
    return f"{encoder.get('name')} ({encoder.get('layer')})"


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(float(x) for x in v)
    return v


def _show(v: Any) -> str:
    if isinstance(v, str) and len(v) == 64:  # a sha256
        return repr(v[:12] + "...")
    if isinstance(v, tuple):
        return str(list(v))
    return repr(v) if isinstance(v, str) else str(v)
