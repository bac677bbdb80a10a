import math

import pytest
import torch
from conftest import randomize_infinity_, tiny_infinity_config
from transformers import AutoModel

from trl_var import build_char_tokenizer
from trl_var.models.infinity import InfinityConfig, InfinityForImageGeneration
from trl_var.models.infinity.configuration_infinity import INFINITY_256_SCALE_SIDES, rope_grid_for
from trl_var.models.infinity.modeling_infinity import bits_to_ids, ids_to_bits, image_token_layout, sample_bits


PROMPTS = ['a sign "OPEN"', "cat", "x"]
SCHEDULE = [[1, 1], [2, 2], [3, 3], [4, 4]]  # 30 tokens
OFFSETS = [0, 1, 5, 14, 30]


@pytest.fixture
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture
def tiny_infinity():
    torch.manual_seed(0)
    return randomize_infinity_(InfinityForImageGeneration(tiny_infinity_config())).eval()


def _prompts(tokenizer, texts=PROMPTS):
    batch = tokenizer(list(texts), padding=True, padding_side="left", return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def test_config_round_trip_and_defaults():
    config = InfinityConfig()
    assert config.scale_schedule == [[s, s] for s in INFINITY_256_SCALE_SIDES] and config.num_image_tokens == 521
    assert config.rope_grid_size == [64, 64]  # the 1M grid, also at 256 px
    assert config.intermediate_size == 3072 and config.text_hidden_size == 2048
    assert InfinityConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    assert rope_grid_for(64, 32) == (90, 45) and rope_grid_for(32, 64) == (45, 90)
    with pytest.raises(ValueError, match="multiple of 4"):
        InfinityConfig(hidden_size=96, num_attention_heads=16)  # head_dim 6


def test_rope_positions_live_on_the_rope_grid():
    config = tiny_infinity_config(scale_schedule=[[1, 1], [2, 2], [6, 6]], rope_grid_size=[64, 64])
    scale_index, cos, sin = image_token_layout(config)
    assert scale_index.tolist() == [0] + [1] * 4 + [2] * 36
    head_dim = 16
    # pair 0 turns by the row at frequency 1, pair head_dim / 4 by the column at frequency 1
    rows_of_6 = torch.tensor([0, 11, 21, 32, 43, 53]).float()  # round(i * 64 / 6)
    angles = torch.atan2(sin, cos)
    torch.testing.assert_close(angles[5:, 0].reshape(6, 6)[:, 0], torch.atan2(rows_of_6.sin(), rows_of_6.cos()))
    torch.testing.assert_close(
        angles[5:, head_dim // 4].reshape(6, 6)[0], torch.atan2(rows_of_6.sin(), rows_of_6.cos())
    )
    assert angles[1:5, 0].tolist() == pytest.approx([0, 0, 32 - 10 * math.pi, 32 - 10 * math.pi], abs=1e-4)


def test_token_id_bit_j_is_classifier_j():
    bits = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 1]])
    assert bits_to_ids(bits).tolist() == [0b1001, 0b1110]
    assert torch.equal(ids_to_bits(bits_to_ids(bits), 4), bits)
    big = torch.tensor([2**32 - 1])
    assert bits_to_ids(ids_to_bits(big, 32)).item() == 2**32 - 1


def test_head_output_2j_2j_plus_1_is_bit_j(tiny_infinity, tokenizer):
    input_ids, attention_mask = _prompts(tokenizer)
    with torch.no_grad():  # classifier 2 prefers 1, all others 0, whatever the input
        tiny_infinity.head.weight.zero_()
        tiny_infinity.head.bias.copy_(torch.tensor([9.0, -9.0, 9.0, -9.0, -9.0, 9.0, 9.0, -9.0]))
    out = tiny_infinity.generate(input_ids, attention_mask, guidance_scale=1.0, top_k=1)
    assert (out.image_ids == 1 << 2).all()


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_kv_cached_sampling_matches_teacher_forced_logprobs(tiny_infinity, tokenizer, guidance_scale):
    input_ids, attention_mask = _prompts(tokenizer)
    out = tiny_infinity.generate(
        input_ids,
        attention_mask,
        guidance_scale=guidance_scale,
        temperature=0.8,
        top_p=0.9,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.image_ids.shape == out.logprobs.shape == (3, 30) and out.image_ids.dtype == torch.long
    assert out.image_ids.min() >= 0 and out.image_ids.max() < 2**4
    logprobs, entropy = tiny_infinity.image_token_logprobs(
        input_ids, out.image_ids, attention_mask, temperature=0.8, compute_entropy=True
    )
    torch.testing.assert_close(logprobs, out.logprobs, atol=1e-5, rtol=0)
    assert (entropy > 0).all() and (entropy <= 4 * math.log(2) + 1e-6).all()


def test_logprob_and_entropy_are_sums_over_bits(tiny_infinity, tokenizer):
    input_ids, attention_mask = _prompts(tokenizer)
    image_ids = tiny_infinity.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(0)).image_ids
    logits = tiny_infinity(input_ids, image_ids, attention_mask).logits / 0.7
    log_p0, log_p1 = logits.log_softmax(-1).unbind(-1)  # (B, L, d) each
    bits = ids_to_bits(image_ids, 4).float()
    expected = (bits * log_p1 + (1 - bits) * log_p0).sum(-1)
    bit_entropy = -(log_p0.exp() * log_p0 + log_p1.exp() * log_p1)
    logprobs, entropy = tiny_infinity.image_token_logprobs(
        input_ids, image_ids, attention_mask, temperature=0.7, compute_entropy=True
    )
    torch.testing.assert_close(logprobs, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, bit_entropy.sum(-1), atol=1e-5, rtol=0)


def test_prefix_only_pass_equals_the_prefix_of_a_full_pass(tiny_infinity, tokenizer):
    input_ids, attention_mask = _prompts(tokenizer)
    image_ids = tiny_infinity.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(0)).image_ids
    full, full_entropy = tiny_infinity.image_token_logprobs(input_ids, image_ids, attention_mask, compute_entropy=True)
    for num_scales in (1, 2, 3):
        end = OFFSETS[num_scales]
        prefix, prefix_entropy = tiny_infinity.image_token_logprobs(
            input_ids, image_ids[:, :end], attention_mask, compute_entropy=True
        )
        torch.testing.assert_close(prefix, full[:, :end], atol=1e-5, rtol=0)
        torch.testing.assert_close(prefix_entropy, full_entropy[:, :end], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="whole"):
        tiny_infinity.image_token_logprobs(input_ids, image_ids[:, :3], attention_mask)


def test_block_causality_across_scales(tiny_infinity, tokenizer):
    input_ids, attention_mask = _prompts(tokenizer)
    image_ids = tiny_infinity.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(0)).image_ids
    reference = tiny_infinity(input_ids, image_ids, attention_mask).logits
    for scale in range(3):  # flip one bit of one token of `scale`
        changed = image_ids.clone()
        changed[:, OFFSETS[scale]] ^= 0b10
        diff = (tiny_infinity(input_ids, changed, attention_mask).logits - reference).abs().amax(dim=(0, 2, 3))
        assert diff[: OFFSETS[scale + 1]].max() == 0, "a scale's logits must not depend on its own or later tokens"
        assert diff[OFFSETS[scale + 1] :].min() > 0, "the next scale's input changes everywhere"


def test_left_padding_does_not_change_logprobs(tiny_infinity, tokenizer):
    input_ids, attention_mask = _prompts(tokenizer)
    image_ids = tiny_infinity.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(0)).image_ids
    batched, _ = tiny_infinity.image_token_logprobs(input_ids, image_ids, attention_mask)
    alone_ids, alone_mask = _prompts(tokenizer, ["x"])
    single, _ = tiny_infinity.image_token_logprobs(alone_ids, image_ids[2:], alone_mask)
    torch.testing.assert_close(batched[2:], single, atol=1e-5, rtol=0)
    right = tokenizer(PROMPTS, padding=True, padding_side="right", return_tensors="pt")
    right_padded, _ = tiny_infinity.image_token_logprobs(right["input_ids"], image_ids, right["attention_mask"])
    torch.testing.assert_close(right_padded, batched, atol=1e-5, rtol=0)


def test_guidance_one_samples_the_conditional_branch(tiny_infinity, tokenizer):
    input_ids, attention_mask = _prompts(tokenizer)
    greedy = tiny_infinity.generate(input_ids, attention_mask, guidance_scale=1.0, top_k=1)
    logits = tiny_infinity(input_ids, greedy.image_ids, attention_mask).logits
    assert torch.equal(ids_to_bits(greedy.image_ids, 4), logits.argmax(-1)), "every bit is the conditional argmax"
    assert greedy.state.condition.shape[0] == 3, "no unconditional branch without guidance"
    guided = tiny_infinity.generate(input_ids, attention_mask, guidance_scale=3.0, top_k=1)
    assert guided.state.condition.shape[0] == 6 and not torch.equal(guided.image_ids, greedy.image_ids)


def test_unconditional_branch_reads_the_null_text(tiny_infinity, tokenizer):
    # Guidance s mixes s * cond + (1 - s) * uncond; with the null text set to the prompt's own features the two
    # branches agree and guidance changes nothing.
    input_ids, attention_mask = _prompts(tokenizer, ["cat"])
    with torch.no_grad():
        features = tiny_infinity.text_encoder(input_ids=input_ids).last_hidden_state[0]
        tiny_infinity.cfg_uncond[: features.shape[0]] = features
    plain = tiny_infinity.generate(
        input_ids, attention_mask, guidance_scale=1.0, generator=torch.Generator().manual_seed(0)
    )
    guided = tiny_infinity.generate(
        input_ids, attention_mask, guidance_scale=4.0, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(plain.image_ids, guided.image_ids)


def test_continuations_share_their_prefix(tiny_infinity, tokenizer):
    input_ids, attention_mask = _prompts(tokenizer)
    prefix = tiny_infinity.generate(input_ids, attention_mask, num_scales=2, guidance_scale=3.0)
    assert prefix.image_ids.shape == (3, 5) and prefix.state.next_scale == 2
    full = tiny_infinity.generate(
        state=prefix.state.repeat_interleave_(2), guidance_scale=3.0, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(full.image_ids[:, :5], prefix.image_ids.repeat_interleave(2, 0))
    assert not torch.equal(full.image_ids[0, 5:], full.image_ids[1, 5:])
    logprobs, _ = tiny_infinity.image_token_logprobs(
        input_ids.repeat_interleave(2, 0), full.image_ids, attention_mask.repeat_interleave(2, 0)
    )
    torch.testing.assert_close(logprobs, full.logprobs, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="guidance"):
        tiny_infinity.generate(state=full.state, guidance_scale=1.0)


def test_sampling_does_not_cache_the_last_scale(tiny_infinity, tokenizer):
    input_ids, attention_mask = _prompts(tokenizer)
    out = tiny_infinity.generate(input_ids, attention_mask, guidance_scale=3.0)
    # every scale but the last (16 tokens): nothing reads the last scale's keys and values
    assert out.state.cache.get_seq_length() == OFFSETS[-2] == 30 - 16


def test_top_p_removes_the_less_likely_value_of_a_bit():
    logits = torch.tensor([[0.0, math.log(9.0)], [0.0, 0.0]])  # p(1) = 0.9; a tie
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_bits(logits.expand(500, 2, 2), 0, 0.85, generator) for _ in range(2)])
    assert (draws[..., 0] == 1).all(), "0.1 <= 1 - 0.85: value 0 is removed"
    assert 0.3 < draws[..., 1].float().mean() < 0.7, "0.5 > 0.15: both kept"
    kept = sample_bits(logits.expand(500, 2, 2), 0, 0.95, generator)[:, 0]
    assert 0 < kept.float().mean() < 1, "0.1 > 1 - 0.95: both kept"
    assert (sample_bits(logits.expand(50, 2, 2), 1, 1.0, generator)[:, 0] == 1).all(), "top-k 1 is the argmax"


def test_frozen_text_encoder_stays_in_eval_mode(tiny_infinity, tokenizer):
    tiny_infinity.train()  # the tiny T5 has dropout 0.1
    assert not tiny_infinity.text_encoder.training and tiny_infinity.head.training
    assert not any(p.requires_grad for p in tiny_infinity.text_encoder.parameters())
    assert not any(p.requires_grad for p in tiny_infinity.vae_decoder.parameters())
    input_ids, attention_mask = _prompts(tokenizer)
    image_ids = tiny_infinity.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(0)).image_ids
    first, _ = tiny_infinity.image_token_logprobs(input_ids, image_ids, attention_mask)
    second, _ = tiny_infinity.image_token_logprobs(input_ids, image_ids, attention_mask)
    assert torch.equal(first, second), "the text is never dropped at random"
    first.sum().backward()
    assert tiny_infinity.cfg_uncond.grad is None and tiny_infinity.head.weight.grad is not None


def test_decoded_images_are_in_range(tiny_infinity, tokenizer):
    input_ids, attention_mask = _prompts(tokenizer)
    image_ids = tiny_infinity.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(0)).image_ids
    images = tiny_infinity.decode_image_tokens(image_ids)
    assert images.shape == (3, 3, 8, 8) and images.min() >= -1 and images.max() <= 1
    with pytest.raises(ValueError, match="whole images"):
        tiny_infinity.decode_image_tokens(image_ids[:, :5])


def test_save_and_load_round_trip(tiny_infinity, tokenizer, tmp_path):
    import trl_var  # noqa: F401  (registers the model type with AutoModel)

    input_ids, attention_mask = _prompts(tokenizer)
    tiny_infinity.generation_config.guidance_scale = 2.5
    tiny_infinity.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is InfinityForImageGeneration and loaded.generation_config.guidance_scale == 2.5
    image_ids = tiny_infinity.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(0)).image_ids
    torch.testing.assert_close(
        loaded.image_token_logprobs(input_ids, image_ids, attention_mask)[0],
        tiny_infinity.image_token_logprobs(input_ids, image_ids, attention_mask)[0],
        atol=0,
        rtol=0,
    )
    torch.testing.assert_close(loaded.decode_image_tokens(image_ids), tiny_infinity.decode_image_tokens(image_ids))
    assert torch.equal(loaded.rope_cos, tiny_infinity.rope_cos)


def test_generate_falls_back_on_generation_config(tiny_infinity, tokenizer):
    input_ids, attention_mask = _prompts(tokenizer)
    config = tiny_infinity.generation_config
    assert (config.guidance_scale, config.temperature, config.top_p) == (3.0, 1.0, 0.97)
    assert tiny_infinity.generate(input_ids, attention_mask, num_scales=1).state.guided
    config.guidance_scale, config.top_k = 1.0, 1
    out = tiny_infinity.generate(input_ids, attention_mask)
    assert not out.state.guided
    assert torch.equal(out.image_ids, tiny_infinity.generate(input_ids, attention_mask, top_k=1).image_ids)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_infinity, tokenizer):
    input_ids, attention_mask = _prompts(tokenizer)
    image_ids = tiny_infinity.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(0)).image_ids
    tiny_infinity.train()
    gradients = []
    for checkpointing in (False, True):
        if checkpointing:
            tiny_infinity.gradient_checkpointing_enable()
        tiny_infinity.zero_grad()
        tiny_infinity.image_token_logprobs(input_ids, image_ids, attention_mask)[0].sum().backward()
        gradients.append({n: p.grad.clone() for n, p in tiny_infinity.named_parameters() if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys() and len(gradients[0]) > 10
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, atol=1e-6, rtol=0)


def test_the_text_encoder_reads_every_distinct_prompt_once(tiny_infinity, tokenizer, monkeypatch):
    input_ids, attention_mask = _prompts(tokenizer, ["cat", "a dog", "cat", "cat"])
    image_ids = tiny_infinity.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(0)).image_ids
    expected, _ = tiny_infinity.image_token_logprobs(input_ids[[0, 1]], image_ids[[0, 1]], attention_mask[[0, 1]])
    rows_read, forward = [], tiny_infinity.text_encoder.forward

    def counting_forward(input_ids, attention_mask):
        rows_read.append(len(input_ids))
        return forward(input_ids=input_ids, attention_mask=attention_mask)

    monkeypatch.setattr(tiny_infinity.text_encoder, "forward", counting_forward)
    logprobs, _ = tiny_infinity.image_token_logprobs(input_ids, image_ids, attention_mask)
    assert rows_read == [2]  # "cat" and "a dog", not four prompts
    torch.testing.assert_close(logprobs[[0, 1]], expected, atol=1e-6, rtol=0)
