"""Frozen image encoders: the registry and the modules it builds.

registry.py   names -> architecture, checkpoint reader, layers, preprocessing, URL (no torch)
build.py      Encoder modules, strict weight loading, ``encode``
readers.py    checkpoint formats (VISSL, DINO, VICReg, torchvision, timm) -> state dicts
heads.py      projector MLPs
vit.py        the ViT trunk
"""
