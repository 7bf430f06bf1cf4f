"""rcdm.extract (under construction)."""
