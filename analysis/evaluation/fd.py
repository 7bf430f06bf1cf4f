"""Frechet distance and precision / recall in the feature spaces of torch-fidelity's other
extractors (DINOv2 ViTs, VGG16), computed only when their weights are present locally, like FID:
nothing is downloaded, and a missing file is a note naming it and the fix (also with
``evaluate.fid=on``, which is about Inception FID: the default extractor list is not a demand).

DINOv2 FD is the metric Stein et al. (2023) found to agree with human judgement better than
Inception FID; VGG16 fc2 features are those of the precision / recall paper (Kynkaanniemi et al.
2019). Reference features come from ``evaluate.reference_images`` (ADM center crop at the
samples' resolution, ``evaluate.fid_reference_limit`` images evenly spaced), as FID's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rcdm.analysis.evaluation import feature_stats as F
from rcdm.analysis.evaluation import metrics
from rcdm.errors import InvalidInput

__all__ = ["EXTRACTORS", "weights_files", "plan_fd", "make_extractor", "extract", "fd_and_pr", "compute"]

# name -> (torch-fidelity feature, hub model name or torchvision file)
DINOV2 = {
    "dinov2-vit-s-14": "dinov2_vits14",
    "dinov2-vit-b-14": "dinov2_vitb14",
    "dinov2-vit-l-14": "dinov2_vitl14",
    "dinov2-vit-g-14": "dinov2_vitg14",
}
VGG16_FILE = "vgg16-397923af.pth"  # torchvision's VGG16 ImageNet weights
EXTRACTORS = (*DINOV2, "vgg16")


def weights_files(name: str) -> list[Path]:
    """The local files extractor ``name`` loads (torch hub's cache: $TORCH_HOME/hub)."""
    import torch

    hub = Path(torch.hub.get_dir())
    if name in DINOV2:
        return [
            hub / "facebookresearch_dinov2_main" / "hubconf.py",
            hub / "checkpoints" / f"{DINOV2[name]}_pretrain.pth",
        ]
    if name == "vgg16":
        return [hub / "checkpoints" / VGG16_FILE]
    raise InvalidInput(f"evaluate.fd_extractors: unknown extractor {name!r}; choose from {', '.join(EXTRACTORS)}")


def missing_message(name: str, missing: list[Path]) -> str:
    how = (
        f"run `torch.hub.load('facebookresearch/dinov2', '{DINOV2[name]}')` once on a machine with network "
        "access and copy $TORCH_HOME/hub here"
        if name in DINOV2
        else f"download torchvision's VGG16 weights ({VGG16_FILE}) into {missing[0].parent}"
    )
    return (
        f"{name} weights for FD / precision-recall are missing: expected {', '.join(map(str, missing))}. "
        f"To compute them, {how} (or set TORCH_HOME); or --set evaluate.fd_extractors=[] to skip them."
    )


def plan_fd(mode: str, names: tuple[str, ...]) -> tuple[list[str], dict[str, dict]]:
    """Decide before heavy work: (extractors to run, {name: skipped record}). ``mode`` is
    ``evaluate.fid``: off skips them all."""
    run, skipped = [], {}
    for name in names:
        missing = [p for p in weights_files(name) if not p.is_file()]
        if mode == "off":
            skipped[name] = {
                "skipped": True,
                "reason": "evaluate.fid=off",
                "how_to_enable": "set evaluate.fid=auto (or on) with the extractor's weights",
            }
        elif missing:
            msg = missing_message(name, missing)
            skipped[name] = {"skipped": True, "reason": "weights missing", "how_to_enable": msg}
        else:
            run.append(name)
    return run, skipped


def make_extractor(name: str, device: Any) -> Callable[[np.ndarray], np.ndarray]:
    """torch-fidelity's extractor as ``(N, H, W, 3) uint8 -> (N, F) float32``."""
    import torch

    if name in DINOV2:
        from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2

        net = FeatureExtractorDinoV2(name, ["dinov2"])
    else:
        from torch_fidelity.feature_extractor_vgg16 import FeatureExtractorVGG16

        net = FeatureExtractorVGG16(name, ["fc2_relu"])
    net = net.to(device).eval()

    @torch.no_grad()
    def run(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(device)
        return net(x)[0].float().cpu().numpy()

    return run


def extract(fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([fn(images[s : s + batch_size]) for s in range(0, len(images), batch_size)])


def fd_and_pr(fake: np.ndarray, real: np.ndarray, k: int = 3) -> dict:
    """FD (exact, also with fewer samples than dimensions) and precision / recall of ``fake``
    features against ``real`` features."""
    mu, sigma = metrics.feature_statistics(real)
    return {"fd": metrics.frechet_distance_from_features(fake, mu, sigma), **F.precision_recall(real, fake, k)}


def reference_images(source: str, resolution: int, limit: int | None, batch_size: int) -> Iterator[np.ndarray]:
    """FID's reference images (:func:`rcdm.analysis.evaluation.fid.reference_batches`: the same images in the
    same order), streamed in uint8 batches; fewer than 2 readable ones is an error naming ``source``."""
    from rcdm.analysis.evaluation.fid import reference_batches

    n = 0
    for batch in reference_batches(source, resolution, limit, batch_size):
        n += len(batch)
        yield batch
    if n < 2:
        raise InvalidInput(f"FD needs at least 2 readable reference images in {source}")


def compute(
    names: list[str],
    samples: np.ndarray,
    reference: np.ndarray | Iterable[np.ndarray],
    *,
    batch_size: int,
    device: Any,
    extractor: Callable[[str], Callable[[np.ndarray], np.ndarray]] | None = None,
) -> dict[str, dict]:
    """``{name: {fd, precision, recall, ...}}`` for each extractor (``extractor`` builds one from its
    name; default: torch-fidelity's). ``reference``: the reference images, ``(N, H, W, 3)`` uint8
    or an iterable of such batches (:func:`reference_images`), read once for every extractor, so
    the whole set is never held in memory, only its features."""
    from tqdm.auto import tqdm

    build = extractor or (lambda n: make_extractor(n, device))
    fns = {name: build(name) for name in names}
    batches = reference
    if isinstance(reference, np.ndarray):
        batches = (reference[s : s + batch_size] for s in range(0, len(reference), batch_size))
    real: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for batch in tqdm(batches, desc="FD / precision-recall: reference features", unit="batch"):
        for name, fn in fns.items():
            real[name].append(fn(batch))
    out = {}
    for name in tqdm(names, desc="FD / precision-recall", unit="extractor"):
        fake, ref = extract(fns[name], samples, batch_size), np.concatenate(real.pop(name))
        out[name] = {**fd_and_pr(fake, ref), "n_reference": int(len(ref)), "feature_dim": int(fake.shape[1])}
    return out
