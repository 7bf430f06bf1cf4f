"""The configuration: the bottom layer every stage stands on (no torch; imports only
``rcdm.errors`` and ``rcdm.utils``).

    schema.py     how a key is declared (``setting``: default, help, bounds, path role), converted
                  and checked: the one schema the loader, the command line and the README read
    sampler.py    the sampling spec: ``Steps`` (respacing) and ``Sampler`` (update rule, guidance)
    sections.py   one frozen dataclass per section of pipeline.yaml (the paper's recipe by default)
    io.py         a config's plain data (``to_dict``) and its YAML with origins (``dump_yaml``,
                  ``save_resolved``: the ``config.yaml`` beside every output)

Layers (profiles, ``pipeline.yaml``, ``--config``, options, ``--set``) are loaded by the
application on top (``rcdm.app.load``).
"""

from __future__ import annotations

from rcdm.config.io import dump_yaml, save_resolved, to_dict
from rcdm.config.sampler import Sampler, SamplerSettings, Steps
from rcdm.config.schema import ConfigError, Setting, coerce, field_default, setting, setting_of, type_name
from rcdm.config.sections import (
    EXPERIMENTS,
    EXTRA_EXPERIMENTS,
    PAPER_DIFFUSION,
    RECIPES,
    SECTIONS,
    AnalyzeConfig,
    DataConfig,
    EvaluateConfig,
    ExtractConfig,
    PipelineConfig,
    PretrainConfig,
    PriorConfig,
    SampleConfig,
    Section,
    TrainConfig,
    section_fields,
)

__all__ = [
    "AnalyzeConfig",
    "ConfigError",
    "DataConfig",
    "EXPERIMENTS",
    "EXTRA_EXPERIMENTS",
    "EvaluateConfig",
    "ExtractConfig",
    "PAPER_DIFFUSION",
    "PipelineConfig",
    "PretrainConfig",
    "PriorConfig",
    "RECIPES",
    "SECTIONS",
    "SampleConfig",
    "Sampler",
    "SamplerSettings",
    "Section",
    "Setting",
    "Steps",
    "TrainConfig",
    "coerce",
    "dump_yaml",
    "field_default",
    "save_resolved",
    "section_fields",
    "setting",
    "setting_of",
    "to_dict",
    "type_name",
]
