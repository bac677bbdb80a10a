"""The NextFlow-shaped VAR family: a decoder-only transformer over text and next-scale codebook tokens."""

from .configuration_var import NEXTFLOW_1024_SCALE_SIDES, VQ_CONFIG_DEFAULTS, VARConfig, nextflow_7b_config
from .modeling_var import VARForImageGeneration, VARGenerationOutput, VARModelOutput, VARSamplingState
from .multiscale_vq import MultiScaleVQModel
