import ast
import inspect
import json
import os

import pytest
import torch
from conftest import tiny_var_config
from transformers import AutoConfig, AutoModel, AutoTokenizer, GenerationConfig

from trl_var import MultiScaleVQModel, VARConfig, VARForImageGeneration, VARPipeline, nextflow_7b_config
from trl_var.models.sampling import SAMPLING_ARGUMENTS, guidance_at, sampling_settings
from trl_var.models.var import configuration_var
from trl_var.models.var.configuration_var import VQ_CONFIG_DEFAULTS


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_MODEL = os.path.join(ROOT, "recipes", "models", "var-tiny-text-render")


def _prompts(tokenizer, texts=("a red square", 'the word "CAT"', "x")):
    batch = tokenizer(list(texts), padding=True, return_tensors="pt", add_special_tokens=False)
    return batch["input_ids"], batch["attention_mask"]


@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_kv_cached_sampling_matches_teacher_forced_logprobs(tiny_model, char_tokenizer, guidance_scale):
    input_ids, attention_mask = _prompts(char_tokenizer)
    out = tiny_model.generate(
        input_ids,
        attention_mask,
        guidance_scale=guidance_scale,
        top_k=5,
        top_p=0.9,
        temperature=0.8,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.image_ids.shape == (3, tiny_model.num_image_tokens) == (3, 85)
    logprobs, entropy = tiny_model.image_token_logprobs(
        input_ids, out.image_ids, attention_mask, temperature=0.8, compute_entropy=True
    )
    torch.testing.assert_close(logprobs, out.logprobs, atol=1e-5, rtol=0)
    assert entropy.shape == (3, 85) and (entropy > 0).all()


def test_left_padding_does_not_change_logprobs(tiny_model, char_tokenizer):
    input_ids, attention_mask = _prompts(char_tokenizer)
    image_ids = tiny_model.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(0)).image_ids
    batched, _ = tiny_model.image_token_logprobs(input_ids, image_ids, attention_mask)
    row = 2  # the shortest prompt, the most padded row
    alone = char_tokenizer(["x"], return_tensors="pt", add_special_tokens=False)
    single, _ = tiny_model.image_token_logprobs(alone["input_ids"], image_ids[row : row + 1], alone["attention_mask"])
    torch.testing.assert_close(batched[row : row + 1], single, atol=1e-5, rtol=0)


def test_block_causality_across_scales(tiny_model, char_tokenizer):
    input_ids, attention_mask = _prompts(char_tokenizer)
    image_ids = tiny_model.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(0)).image_ids
    offsets = [0, 1, 5, 21, 85]  # scales 1x1, 2x2, 4x4, 8x8
    for scale in range(3):  # change one token of `scale`; the last scale has no later scale to influence
        changed = image_ids.clone()
        changed[:, offsets[scale]] = (changed[:, offsets[scale]] + 1) % 16
        diff = (
            (
                tiny_model(input_ids, image_ids, attention_mask).logits
                - tiny_model(input_ids, changed, attention_mask).logits
            )
            .abs()
            .amax(dim=(0, 2))
        )
        assert diff[: offsets[scale + 1]].max() == 0, "a scale's logits must not depend on its own or later tokens"
        assert diff[offsets[scale + 1] :].max() > 0, "later scales must see the changed token"


def test_prompt_conditions_the_image_logits(tiny_model, char_tokenizer):
    input_ids, attention_mask = _prompts(char_tokenizer, ["aaaa", "bbbb"])
    image_ids = torch.zeros(1, 85, dtype=torch.long).repeat(2, 1)
    logits = tiny_model(input_ids, image_ids, attention_mask).logits
    assert (logits[0] - logits[1]).abs().max() > 1e-4


def test_sampling_is_reproducible_with_a_seeded_generator(tiny_model, char_tokenizer):
    input_ids, attention_mask = _prompts(char_tokenizer)
    first = tiny_model.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(3)).image_ids
    second = tiny_model.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(3)).image_ids
    third = tiny_model.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(4)).image_ids
    assert torch.equal(first, second) and not torch.equal(first, third)


def test_top_k_one_is_greedy(tiny_model, char_tokenizer):
    input_ids, attention_mask = _prompts(char_tokenizer)
    out = tiny_model.generate(input_ids, attention_mask, guidance_scale=1.0, top_k=1)  # greedy on the prompt's logits
    logits = tiny_model(input_ids, out.image_ids, attention_mask).logits
    assert torch.equal(out.image_ids, logits.argmax(-1))


def test_continuations_share_the_prefix_and_reuse_its_cache(tiny_model, char_tokenizer):
    input_ids, attention_mask = _prompts(char_tokenizer)
    prefix = tiny_model.generate(input_ids, attention_mask, num_scales=2, guidance_scale=3.0)
    assert prefix.image_ids.shape == (3, 5)
    state = prefix.state.repeat_interleave_(2)
    full = tiny_model.generate(state=state, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    assert full.image_ids.shape == (6, 85)
    assert torch.equal(full.image_ids[:, :5], prefix.image_ids.repeat_interleave(2, dim=0))
    assert not torch.equal(full.image_ids[0, 5:], full.image_ids[1, 5:])  # two different continuations
    logprobs, _ = tiny_model.image_token_logprobs(
        input_ids.repeat_interleave(2, 0), full.image_ids, attention_mask.repeat_interleave(2, 0)
    )
    torch.testing.assert_close(logprobs, full.logprobs, atol=1e-5, rtol=0)


def test_sampling_does_not_cache_the_last_scale(tiny_model, char_tokenizer):
    input_ids, attention_mask = _prompts(char_tokenizer)
    out = tiny_model.generate(input_ids, attention_mask, guidance_scale=3.0)
    # the text and every scale but the last (64 tokens): nothing reads the last scale's keys and values
    assert out.state.cache.get_seq_length() == input_ids.shape[1] + 85 - 64
    assert out.state.cache.layers[0].keys.shape[0] == 6  # both guidance branches


def test_non_square_schedule(char_tokenizer):
    config = tiny_var_config(sample_size=[16, 32], scale_schedule=((1, 2), (2, 3), (4, 8), (8, 16)))
    model = VARForImageGeneration(config).eval()
    input_ids, attention_mask = _prompts(char_tokenizer, ["ab"])
    out = model.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(0))
    assert out.image_ids.shape == (1, 2 + 6 + 32 + 128)
    logprobs, _ = model.image_token_logprobs(input_ids, out.image_ids, attention_mask)
    torch.testing.assert_close(logprobs, out.logprobs, atol=1e-5, rtol=0)
    assert model.decode_image_tokens(out.image_ids).shape == (1, 3, 16, 32)


def test_save_and_auto_model_round_trip(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), VARConfig)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, VARForImageGeneration)
    assert loaded.config.vq_config == tiny_model.config.vq_config
    assert loaded.config.text_config.to_diff_dict() | {
        "dtype": None
    } == tiny_model.config.text_config.to_diff_dict() | {"dtype": None}
    original, reloaded = tiny_model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    assert all(torch.equal(original[k], reloaded[k]) for k in original)
    # non-persistent buffers (the image token layout) are rebuilt, not left uninitialized
    reloaded_buffers = dict(loaded.named_buffers())
    assert all(torch.equal(buffer, reloaded_buffers[name]) for name, buffer in tiny_model.named_buffers())


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model, char_tokenizer):
    input_ids, attention_mask = _prompts(char_tokenizer)
    image_ids = tiny_model.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(0)).image_ids
    tiny_model.train()

    def grads():
        tiny_model.zero_grad()
        logprobs, _ = tiny_model.image_token_logprobs(input_ids, image_ids, attention_mask)
        logprobs.sum().backward()
        return tiny_model.image_head.weight.grad.clone()

    plain = grads()
    tiny_model.gradient_checkpointing_enable()
    assert tiny_model.is_gradient_checkpointing
    torch.testing.assert_close(grads(), plain, atol=1e-5, rtol=1e-4)


def test_schedule_must_end_at_the_tokenizers_latent_grid():
    with pytest.raises(ValueError, match=r"scale_schedule.*\(8, 8\)"):
        tiny_var_config(scale_schedule=((1, 1), (2, 2), (4, 4)))


def test_teacher_forcing_on_the_first_scales_matches_the_full_pass(tiny_model, char_tokenizer):
    input_ids, attention_mask = _prompts(char_tokenizer)
    image_ids = tiny_model.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(0)).image_ids
    full = tiny_model(input_ids, image_ids, attention_mask).logits
    for num_tokens in (1, 5, 21):  # the first 1, 2 and 3 scales
        prefix = tiny_model(input_ids, image_ids[:, :num_tokens], attention_mask).logits
        torch.testing.assert_close(prefix, full[:, :num_tokens], atol=1e-5, rtol=0)


def test_wrong_number_of_image_tokens_is_a_clear_error(tiny_model, char_tokenizer):
    input_ids, attention_mask = _prompts(char_tokenizer)
    with pytest.raises(ValueError, match="image_ids"):
        tiny_model(input_ids, torch.zeros(3, 80, dtype=torch.long), attention_mask)


def test_nextflow_7b_preset_builds_on_the_meta_device():
    config = nextflow_7b_config()
    assert config.num_image_tokens == 10_084
    assert len(config.scale_schedule) == 18 and config.scale_schedule[11] == (16, 16)
    with torch.device("meta"):
        model = VARForImageGeneration(config)
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 7.0e9 < num_params < 8.0e9  # Qwen2.5-7B backbone (7.07B) + image embeddings and head


# ---------------------------------------------------------------------------------------------------------------------
# Sampling settings: one home, the generation config
# ---------------------------------------------------------------------------------------------------------------------


def test_generation_config_holds_the_papers_evaluation_sampling(tiny_model):
    config = tiny_model.generation_config
    assert {name: getattr(config, name) for name in SAMPLING_ARGUMENTS} == {
        "guidance_scale": 5.0,
        "guidance_schedule": "constant",
        "temperature": 1.0,
        "top_k": 2,
        "top_p": 0.9,
    }
    text_config = tiny_model.config.text_config  # TRL reads and writes the pad and eos ids here
    assert (config.pad_token_id, config.eos_token_id) == (text_config.pad_token_id, text_config.eos_token_id)


def test_generate_takes_every_setting_not_given_from_the_generation_config(tiny_model, char_tokenizer):
    input_ids, attention_mask = _prompts(char_tokenizer)
    explicit = {"guidance_scale": 3.0, "guidance_schedule": "linear", "temperature": 0.7, "top_k": 4, "top_p": 0.8}
    expected = tiny_model.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(0), **explicit)
    tiny_model.generation_config.update(**explicit)
    defaults = tiny_model.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(defaults.image_ids, expected.image_ids) and torch.equal(defaults.logprobs, expected.logprobs)
    # an argument given wins over the generation config
    plain = tiny_model.generate(input_ids, attention_mask, guidance_scale=1.0, top_k=1)
    assert not plain.state.guided


def test_sampling_settings_fill_in_the_generation_config_and_name_a_wrong_argument():
    config = GenerationConfig(guidance_scale=5.0, guidance_schedule="constant", temperature=1.0, top_k=2, top_p=0.9)
    assert sampling_settings(config, top_k=0, top_p=None) == {
        "guidance_scale": 5.0,
        "guidance_schedule": "constant",
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 0.9,
    }
    with pytest.raises(TypeError, match=r"Unknown sampling argument\(s\) \['top_n'\]"):
        sampling_settings(config, top_n=3)
    with pytest.raises(ValueError, match="`guidance_schedule` must be one of"):
        sampling_settings(config, guidance_schedule="cosine")
    with pytest.raises(ValueError, match="`temperature` must be > 0"):
        sampling_settings(config, temperature=0.0)
    with pytest.raises(ValueError, match=r"No `guidance_scale`.*model.generation_config.guidance_scale"):
        sampling_settings(GenerationConfig(), temperature=1.0)


def test_linear_guidance_ramps_from_one_at_the_first_scale_to_the_scale_at_the_last():
    assert [guidance_at(t, 5, 3.0, "linear") for t in range(5)] == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert [guidance_at(t, 5, 3.0, "constant") for t in range(5)] == [3.0] * 5
    assert guidance_at(0, 1, 3.0, "linear") == 1.0  # a single scale: no division by zero


def test_generation_config_is_saved_and_restored_with_the_model(tiny_model, tmp_path):
    tiny_model.generation_config.update(guidance_scale=3.0, guidance_schedule="linear", top_k=5)
    tiny_model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert (saved["guidance_scale"], saved["guidance_schedule"], saved["top_k"], saved["top_p"]) == (
        3.0,
        "linear",
        5,
        0.9,
    )
    loaded = AutoModel.from_pretrained(tmp_path)
    assert (loaded.generation_config.guidance_schedule, loaded.generation_config.top_k) == ("linear", 5)
    # a checkpoint saved without generation_config.json samples with the defaults
    (tmp_path / "generation_config.json").unlink()
    assert AutoModel.from_pretrained(tmp_path).generation_config.guidance_scale == 5.0


def test_shipped_tiny_model_loads_and_samples_as_it_always_has():
    model = AutoModel.from_pretrained(SHIPPED_MODEL).eval()
    assert model.generation_config.guidance_scale == 5.0 and model.generation_config.top_k == 2
    pipe = VARPipeline(model, AutoTokenizer.from_pretrained(SHIPPED_MODEL, padding_side="left"))
    image_ids = pipe(['the word "ACE"', 'the word "CAT"'], generator=torch.Generator().manual_seed(0)).image_ids
    # the first three scales (1 + 4 + 9 tokens), sampled before the sampling settings moved to the generation config
    assert image_ids[:, :14].tolist() == [
        [106, 138, 254, 475, 451, 453, 453, 69, 370, 44, 386, 85, 479, 506],
        [163, 451, 451, 16, 85, 337, 384, 345, 478, 345, 461, 475, 451, 432],
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------------


def test_vq_config_defaults_are_the_tokenizers_own():
    signature = inspect.signature(MultiScaleVQModel.__init__).parameters
    defaults = {name: parameter.default for name, parameter in signature.items() if name != "self"}

    def to_lists(value):
        return [to_lists(v) for v in value] if isinstance(value, (list, tuple)) else value

    assert VQ_CONFIG_DEFAULTS == {name: to_lists(value) for name, value in defaults.items()}
    assert VARConfig().vq_config == VQ_CONFIG_DEFAULTS


def test_configuration_imports_only_config_utilities():
    tree = ast.parse(inspect.getsource(configuration_var))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert imported == {"collections.abc", "transformers", "transformers.models.auto"}


def test_unknown_vq_config_key_and_an_indivisible_image_size_are_clear_errors():
    with pytest.raises(ValueError, match=r"`vq_config` has unknown keys \['codebook_dim'\]"):
        VARConfig(vq_config={"codebook_dim": 8})
    with pytest.raises(ValueError, match="sample_size=30 is not divisible by the downsampling factor 8"):
        VARConfig(vq_config={"sample_size": 30})


def test_shipped_config_loads_with_every_tokenizer_setting():
    config = AutoConfig.from_pretrained(SHIPPED_MODEL)
    assert config.vq_config["codebook_size"] == 512 and config.scale_schedule[-1] == (8, 8)
    assert set(config.vq_config) == set(VQ_CONFIG_DEFAULTS)
