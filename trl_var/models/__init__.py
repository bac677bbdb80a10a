"""
The model families of trl-var, each in its own folder (configuration, modeling, image tokenizer, conversion), and what
they share: the policy protocol the trainer talks to, the sampling settings, the block-causal attention and one
pipeline. Importing this package registers every family with `AutoConfig` / `AutoModel`.
"""

from transformers import AutoConfig, AutoModel

from .char_tokenizer import build_char_tokenizer
from .infinity import InfinityConfig, InfinityForImageGeneration
from .pipeline import VARPipeline, VARPipelineOutput
from .protocol import NextScalePolicy, SamplingState, check_policy
from .sampling import SAMPLING_ARGUMENTS, sampling_settings
from .var import (
    MultiScaleVQModel,
    VARConfig,
    VARForImageGeneration,
    VARGenerationOutput,
    VARModelOutput,
    VARSamplingState,
    nextflow_7b_config,
)


AutoConfig.register("var", VARConfig, exist_ok=True)
AutoModel.register(VARConfig, VARForImageGeneration, exist_ok=True)
