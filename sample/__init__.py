"""rcdm.sample (under construction)."""
