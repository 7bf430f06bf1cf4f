"""``rcdm evaluate``: what a sample set is measured by, and how (the paper's Table 1 and more).

stage.py          evaluate(cfg): the method in named steps, from the checks to the written folder
checks.py         the checks before any work: inputs, representation, FID / FD plan
ranking.py        rank / MRR of the conditioning image in the conditioning space (``rank``)
spaces.py         faithfulness in every space: conditioning, second encoders, pixels; the
                  retrieval baseline and diversity (``faithfulness``)
feature_stats.py  pure statistics over (N, D) features: top-k, cosine, random-pair chance
                  levels, nearest rows, diversity, precision / recall
metrics.py        pure FID, IS, token ranks; rank / MRR re-exported from rcdm.faithfulness
fid.py            FID / IS of a sample set: weights, cached reference statistics (``fid``, ``is``)
inception.py      torch-fidelity's Inception-v3, loaded from a local file
fd.py             FD and precision / recall in DINOv2 / VGG16 spaces (``fd``)
tables.py         Table 1a / 1b: one evaluation's metrics.csv / .md, and ``table`` over several

The evaluation folder (file names, writer, reader, the metrics.json schema) is
``rcdm.run.evaldir``'s; ``rcdm evaluate --curve`` is ``rcdm.analysis.curve``.
"""

from __future__ import annotations

from rcdm.analysis.evaluation.stage import evaluate
from rcdm.analysis.evaluation.tables import table

__all__ = ["evaluate", "table"]
