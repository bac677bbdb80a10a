"""trl-var: GRPO for visual autoregressive (next-scale prediction) image generators, with the additions of
"VAR RL Done Right" (arXiv 2601.02256). Importing the package registers `VARConfig` / `VARForImageGeneration` with
transformers' `AutoConfig` / `AutoModel`."""

__version__ = "0.1.0.dev0"

from . import rewards
from .models import (
    MultiScaleVQModel,
    VARConfig,
    VARForImageGeneration,
    VARPipeline,
    build_char_tokenizer,
    nextflow_7b_config,
)
from .trainer import VARGRPOConfig, VARGRPOTrainer, panw_weights, propagate_mask, soft_value


__all__ = [
    "MultiScaleVQModel",
    "VARConfig",
    "VARForImageGeneration",
    "VARGRPOConfig",
    "VARGRPOTrainer",
    "VARPipeline",
    "build_char_tokenizer",
    "nextflow_7b_config",
    "panw_weights",
    "propagate_mask",
    "rewards",
    "soft_value",
]
