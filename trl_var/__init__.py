"""trl-var: GRPO for visual autoregressive (next-scale prediction) image generators, with the additions of
"VAR RL Done Right" (arXiv 2601.02256). Importing the package registers `VARConfig` / `VARForImageGeneration` with
transformers' `AutoConfig` / `AutoModel`. The trainer (and TRL, ~6 s to import) loads on first use, so inference and
evaluation start faster."""

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
from .trainer.credit import panw_weights, propagate_mask, soft_value


_TRAINER_NAMES = ("VARGRPOConfig", "VARGRPOTrainer")


def __getattr__(name):
    if name in _TRAINER_NAMES:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'trl_var' has no attribute {name!r}")


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
