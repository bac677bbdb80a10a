from transformers import AutoConfig, AutoModel

from .char_tokenizer import build_char_tokenizer
from .configuration_var import VARConfig, nextflow_7b_config
from .infinity import InfinityConfig, InfinityForImageGeneration
from .modeling_var import VARForImageGeneration, VARGenerationOutput, VARModelOutput, VARSamplingState
from .multiscale_vq import MultiScaleVQModel
from .pipeline_var import VARPipeline, VARPipelineOutput
from .protocol import NextScalePolicy, SamplingState, check_policy
from .sampling import SAMPLING_ARGUMENTS, sampling_settings


AutoConfig.register("var", VARConfig, exist_ok=True)
AutoModel.register(VARConfig, VARForImageGeneration, exist_ok=True)
