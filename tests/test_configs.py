import os

import pytest
import yaml
from conftest import load_script
from transformers import GenerationConfig
from trl import TrlParser

from trl_var import VARGRPOConfig


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "name",
    [
        "text_render_tiny.yaml",
        "text_render_nextflow.yaml",
        "text_render_infinity_125m.yaml",
        "text_render_infinity_2b.yaml",
    ],
)
def test_recipe_configs_parse_into_the_recipe_arguments(name, tmp_path):
    ScriptArguments = load_script("recipes/train_text_render.py").ScriptArguments

    path = os.path.join(ROOT, "recipes", "configs", name)
    parser = TrlParser((ScriptArguments, VARGRPOConfig))
    # (the GPU config asks for bf16, which a CPU machine refuses: the command line overrides the file)
    cli = ["--config", path, "--output_dir", str(tmp_path), "--bf16", "false"]
    script_args, args = parser.parse_args_and_config(cli)
    # both turn the paper's full method on
    assert args.vmr_prefix_scales is None and args.vmr_num_continuations == 2 and args.panw_alpha == 0.6
    assert args.mask_propagation is True
    if name == "text_render_nextflow.yaml":
        assert (args.guidance_scale, args.top_k, args.top_p, args.num_generations) == (5.0, 2, 0.9, 16)
        assert script_args.model_name_or_path is not None
    if name.startswith("text_render_infinity"):  # Infinity's released sampler: guidance 3, every bit at top-p 0.97
        assert (args.guidance_scale, args.top_k, args.top_p) == (3.0, 0, 0.97)
        assert script_args.model_name_or_path.startswith("models/infinity-")  # what the converter wrote
        assert (
            args.per_device_train_batch_size
            * args.gradient_accumulation_steps
            * (8 if name.endswith("2b.yaml") else 1)
            == 256
        )  # the paper's 256 images per update


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "recipes", "accelerate_configs"))))
def test_accelerate_configs_are_valid(name):
    with open(os.path.join(ROOT, "recipes", "accelerate_configs", name)) as f:
        config = yaml.safe_load(f)
    assert config["distributed_type"] in {"NO", "MULTI_GPU", "DEEPSPEED", "FSDP"}
    assert config["num_processes"] >= 1


def test_training_passes_every_sampling_argument_of_generate(tmp_path):
    import inspect

    from trl_var import VARForImageGeneration
    from trl_var.models import SAMPLING_ARGUMENTS

    args = VARGRPOConfig(output_dir=str(tmp_path), top_k=0, eval_top_k=2)
    assert tuple(args.sampling_kwargs()) == tuple(args.sampling_kwargs(evaluation=True)) == SAMPLING_ARGUMENTS
    assert (args.sampling_kwargs()["top_k"], args.sampling_kwargs(evaluation=True)["top_k"]) == (0, 2)
    # all of them are sampling arguments of `generate` (its `**sampling`, resolved by `sampling_settings`, which
    # refuses any other name), so the model's generation config never overrides training's
    from trl_var.models.infinity import InfinityForImageGeneration
    from trl_var.models.sampling import sampling_settings

    for policy in (VARForImageGeneration, InfinityForImageGeneration):
        assert inspect.signature(policy.generate).parameters["sampling"].kind is inspect.Parameter.VAR_KEYWORD
    assert sampling_settings(GenerationConfig(), **args.sampling_kwargs()) == args.sampling_kwargs()
    with pytest.raises(TypeError, match=r"Unknown sampling argument\(s\) \['top_n'\]"):
        sampling_settings(GenerationConfig(), top_n=3)
