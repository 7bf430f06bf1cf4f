"""The diffusion process and sampling from it.

spec.py         the typed sampling spec (respacing, DDIM, eta, guidance), parsed with the config (no torch)
gaussian.py     GaussianDiffusion: schedules, q/p, the hybrid loss, ancestral and DDIM steps
losses.py       KL and discretised likelihood terms
respace.py      timestep respacing (guided-diffusion's rule)
generate.py     conditions + seeds -> images, one generator per sample, guidance
conditions.py   representation-space conditions: interpolation, KDE, class means, algebra, kNN
"""
