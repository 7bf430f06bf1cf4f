"""rcdm.analysis (under construction)."""
