"""A learned prior over representations (after RCG, Li, Katabi & He 2023): a small diffusion
model over h, so RCDM can sample with no input image.

``model.py`` holds the network (an MLP with residual blocks modulated by the time step), the
vector diffusion (training loss, DDIM sampler) and ``draw``; the prior's output folder
(``prior.safetensors`` + ``prior.json``), written by ``rcdm train-prior`` (:mod:`rcdm.train.prior`)
and read by ``rcdm sample --condition prior`` and the report, is owned by :mod:`rcdm.run.priordir`.
"""
