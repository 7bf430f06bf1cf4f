"""A learned prior over representations (after RCG, Li, Katabi & He 2023): a small diffusion
model over h, so RCDM can sample with no input image.

``model.py`` holds the network (an MLP with residual blocks modulated by the time step) and the
vector diffusion (training loss, DDIM sampler); ``folder.py`` owns the prior's output folder
(``prior.safetensors`` + ``prior.json``), written by ``rcdm train-prior`` (:mod:`rcdm.train.prior`)
and read by ``rcdm sample --condition prior`` and the report.
"""
