"""rcdm: Representation-Conditional Diffusion Models (Bordes, Balestriero & Vincent, TMLR 2022).

See what an image representation keeps by sampling images conditioned on it.
"""

__version__ = "0.1.0"
