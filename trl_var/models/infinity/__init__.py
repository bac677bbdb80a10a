"""
FoundationVision's Infinity (bitwise next-scale text-to-image) as a trl-var policy: configuration, modeling, the
BSQ-VAE decoder and the conversion of the released checkpoints. Importing it registers `InfinityConfig` /
`InfinityForImageGeneration` with transformers' `AutoConfig` / `AutoModel`.
"""

from transformers import AutoConfig, AutoModel

from .configuration_infinity import InfinityConfig
from .convert import convert_infinity_checkpoint
from .modeling_infinity import (
    InfinityForImageGeneration,
    InfinityGenerationOutput,
    InfinityModelOutput,
    InfinitySamplingState,
)


AutoConfig.register("infinity", InfinityConfig, exist_ok=True)
AutoModel.register(InfinityConfig, InfinityForImageGeneration, exist_ok=True)

__all__ = [
    "InfinityConfig",
    "InfinityForImageGeneration",
    "InfinityGenerationOutput",
    "InfinityModelOutput",
    "InfinitySamplingState",
    "convert_infinity_checkpoint",
]
