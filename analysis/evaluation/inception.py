"""A thin wrapper around torch-fidelity's Inception-v3 (``inception-v3-compat``).

torch-fidelity's network reproduces the TensorFlow Inception used by the original FID / IS code:
uint8 input, TF1-exact bilinear resize to 299, (x - 128) / 128. We take the 2048-d pool features
for FID and the ``logits_unbiased`` (pool @ fc.weight^T, no bias: the original IS code's
``softmax`` input, and torch-fidelity's default layer for ``isc``) for IS.

Weights: one file, ``weights-inception-2015-12-05-6726825d.pth``. torch-fidelity downloads it with
``torch.hub.load_state_dict_from_url``, which caches it at
``torch.hub.get_dir()/checkpoints/<file>`` = ``$TORCH_HOME/hub/checkpoints/<file>`` (TORCH_HOME
defaults to ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``). We look there (or at the path the
config gives) and download only when the user allows it. The file is read once, by rcdm, with
``torch.load(weights_only=True)`` (``--set evaluate.trust_checkpoint=true`` allows pickle), and
torch-fidelity's network is given that state dict (:func:`fidelity_inception`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rcdm.errors import InvalidInput, MissingInput

__all__ = [
    "INCEPTION_URL",
    "INCEPTION_FILENAME",
    "default_weights_path",
    "resolve_weights",
    "missing_weights_message",
    "InceptionV3",
    "fidelity_inception",
]

INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
FEATURE_EXTRACTOR = "inception-v3-compat"
POOL, LOGITS = "2048", "logits_unbiased"


def default_weights_path() -> Path:
    """Where torch-fidelity's own download would put (and look for) the weights file."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME


def missing_weights_message(path: Path, configured: bool) -> str:
    where = "evaluate.inception_weights points to" if configured else "expected at"
    return (
        f"Inception weights for FID / IS are missing: {where} {path}. Download {INCEPTION_URL} "
        f"and save it as {path}"
        + ("" if configured else " (or set TORCH_HOME, or evaluate.inception_weights=FILE)")
        + "; or pass --set evaluate.allow_download=true to fetch it; or --set evaluate.fid=off "
        "to skip FID and IS."
    )


def resolve_weights(configured: str | None, *, allow_download: bool = False) -> Path | None:
    """The weights file to use, or None when it is absent and may not be downloaded.

    A configured path that does not exist is always an error (the user asked for that file).
    """
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise MissingInput(missing_weights_message(path, configured=True))
        return path
    path = default_weights_path()
    if path.is_file():
        return path
    if allow_download:
        import torch

        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(INCEPTION_URL, str(path), progress=True)
        return path
    return None


def fidelity_inception(state_dict: dict):
    """torch-fidelity's ``inception-v3-compat`` network holding ``state_dict``.

    Its constructor loads the weights itself: from a path with ``torch.load(weights_only=False)``,
    or, given no path, from its URL with ``torch.hub.load_state_dict_from_url``. We give no path
    and answer that download with the state dict we already read and checked, so the file is read
    once, never unpickled, and nothing is downloaded.
    """
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    asked: list[str] = []

    def checked_weights(url: str, *args, **kwargs) -> dict:
        asked.append(url)
        return state_dict

    if not callable(getattr(fe, "load_state_dict_from_url", None)):
        raise ImportError("this torch-fidelity version loads its Inception weights another way; rcdm needs updating")
    original, fe.load_state_dict_from_url = fe.load_state_dict_from_url, checked_weights
    try:
        model = fe.FeatureExtractorInceptionV3(FEATURE_EXTRACTOR, [POOL, LOGITS])
    finally:
        fe.load_state_dict_from_url = original
    assert len(asked) == 1, f"torch-fidelity asked for its weights {len(asked)} times, expected once"
    return model


class InceptionV3:
    """uint8 images (N, H, W, 3) -> pool features (N, 2048) and unbiased logits (N, 1008)."""

    def __init__(self, weights: str | Path, device=None, trust_checkpoint: bool = False):
        import torch
        from rcdm.torchload import load_weights_only

        self.weights = Path(weights)
        # Read once, without pickle (unless the user vouches for the file), and checked here;
        # torch-fidelity's model then gets this state dict, not the file.
        sd = load_weights_only(
            self.weights,
            trust_checkpoint=trust_checkpoint,
            trust_hint="--set evaluate.trust_checkpoint=true",
            fix=f"replace it with {INCEPTION_URL}",
        )
        if not isinstance(sd, dict) or "fc.weight" not in sd:
            raise InvalidInput(
                f"{self.weights} is not torch-fidelity's Inception-v3 state dict (no fc.weight); "
                f"expected {INCEPTION_URL}"
            )
        try:
            self.model = fidelity_inception(sd)
        except RuntimeError as e:  # load_state_dict: missing / unexpected / mis-shaped keys
            raise InvalidInput(
                f"{self.weights} does not match torch-fidelity's Inception-v3: {' '.join(str(e).split())}; "
                f"expected the file {INCEPTION_URL}"
            ) from e
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model.to(self.device)

    def __call__(self, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """images (N, H, W, 3) uint8 -> (pool (N, 2048) float64, logits (N, 1008) float64)."""
        import torch

        x = np.asarray(images)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise InvalidInput(f"Inception expects uint8 (N, H, W, 3) images, got {x.dtype} {x.shape}")
        pools, logits = [], []
        with torch.inference_mode():
            for s in range(0, len(x), batch_size):
                b = torch.from_numpy(np.ascontiguousarray(x[s : s + batch_size]))
                b = b.permute(0, 3, 1, 2).to(self.device)  # (B, 3, H, W) uint8
                pool, logit = self.model(b)
                pools.append(pool.double().cpu().numpy())
                logits.append(logit.double().cpu().numpy())
        if not pools:
            return np.zeros((0, 2048)), np.zeros((0, 1008))
        return np.concatenate(pools), np.concatenate(logits)
