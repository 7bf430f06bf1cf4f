"""rcdm.train (under construction)."""
