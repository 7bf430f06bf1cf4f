"""The network: ADM's UNet with representation conditioning, and its weight files.

config.py    UNetConfig, the presets, architecture inference from a state dict (no torch)
blocks.py    ResBlocks, attention, conditional normalisation
unet.py      UNetModel (guided-diffusion key names)
weights.py   safetensors + meta files, official .pt files, strict loading
"""
