"""
The policy protocol's conformance suite: every model family of trl-var must pass it (see
`trl_var/models/protocol.py`). Each test builds a tiny random policy of the family and its text tokenizer.
"""

import pytest
import torch
from conftest import randomize_infinity_, tiny_infinity_config, tiny_var_config
from transformers import AutoModel

from trl_var.models.protocol import NextScalePolicy, SamplingState, check_policy


PROMPTS = ["a red square", 'the word "CAT"', "x"]


def _tiny_var(char_tokenizer):
    from trl_var import VARForImageGeneration

    torch.manual_seed(0)
    config = tiny_var_config(vocab_size=len(char_tokenizer), pad_token_id=char_tokenizer.pad_token_id)
    return VARForImageGeneration(config).eval(), char_tokenizer


def _tiny_infinity(char_tokenizer):
    from trl_var.models.infinity import InfinityForImageGeneration

    torch.manual_seed(0)
    return randomize_infinity_(InfinityForImageGeneration(tiny_infinity_config())).eval(), char_tokenizer


FAMILIES = {"var": _tiny_var, "infinity": _tiny_infinity}


@pytest.fixture(params=sorted(FAMILIES))
def policy(request, char_tokenizer):
    model, tokenizer = FAMILIES[request.param](char_tokenizer)
    batch = tokenizer(PROMPTS, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False)
    return model, batch["input_ids"], batch["attention_mask"]


def _scale_offsets(model):
    offsets = [0]
    for h, w in model.scale_schedule:
        offsets.append(offsets[-1] + h * w)
    return offsets


def test_family_implements_the_protocol(policy):
    model, _, _ = policy
    assert isinstance(model, NextScalePolicy)
    check_policy(model)  # does not raise
    assert model.num_image_tokens == sum(h * w for h, w in model.scale_schedule)
    offsets = _scale_offsets(model)
    expected = torch.cat([torch.full((b - a,), t) for t, (a, b) in enumerate(zip(offsets, offsets[1:]))])
    assert torch.equal(model.image_scale_index.cpu(), expected)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_cached_sampling_logprobs_equal_teacher_forced_ones(policy, guidance_scale):
    model, input_ids, attention_mask = policy
    out = model.generate(
        input_ids,
        attention_mask,
        guidance_scale=guidance_scale,
        temperature=0.8,
        top_p=0.9,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.image_ids.shape == out.logprobs.shape == (len(PROMPTS), model.num_image_tokens)
    assert out.image_ids.dtype == torch.long
    logprobs, entropies = model.image_token_logprobs(
        input_ids, out.image_ids, attention_mask, temperature=0.8, compute_entropy=True
    )
    torch.testing.assert_close(logprobs, out.logprobs, atol=1e-5, rtol=0)
    assert entropies.shape == logprobs.shape and (entropies > 0).all()
    assert (logprobs <= 0).all()


def test_continuations_share_their_prefix(policy):
    model, input_ids, attention_mask = policy
    prefix = model.generate(input_ids, attention_mask, num_scales=2, guidance_scale=3.0)
    num_prefix = _scale_offsets(model)[2]
    assert prefix.image_ids.shape == (len(PROMPTS), num_prefix)
    assert isinstance(prefix.state, SamplingState) and prefix.state.next_scale == 2
    state = prefix.state.repeat_interleave_(2)
    full = model.generate(state=state, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    assert full.image_ids.shape == (2 * len(PROMPTS), model.num_image_tokens)
    assert torch.equal(full.image_ids[:, :num_prefix], prefix.image_ids.repeat_interleave(2, dim=0))
    assert not torch.equal(full.image_ids[0, num_prefix:], full.image_ids[1, num_prefix:])
    logprobs, _ = model.image_token_logprobs(
        input_ids.repeat_interleave(2, 0), full.image_ids, attention_mask.repeat_interleave(2, 0)
    )
    torch.testing.assert_close(logprobs, full.logprobs, atol=1e-5, rtol=0)


def test_selected_rows_continue_their_source_row(policy):
    model, input_ids, attention_mask = policy
    prefix = model.generate(input_ids, attention_mask, num_scales=1)
    index = torch.tensor([2, 2, 0])
    full = model.generate(state=prefix.state.select_rows_(index), generator=torch.Generator().manual_seed(1))
    num_prefix = _scale_offsets(model)[1]
    assert torch.equal(full.image_ids[:, :num_prefix], prefix.image_ids[index])
    logprobs, _ = model.image_token_logprobs(input_ids[index], full.image_ids, attention_mask[index])
    torch.testing.assert_close(logprobs, full.logprobs, atol=1e-5, rtol=0)


def test_prefix_only_pass_equals_the_prefix_of_a_full_pass(policy):
    model, input_ids, attention_mask = policy
    image_ids = model.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(0)).image_ids
    full, full_entropy = model.image_token_logprobs(input_ids, image_ids, attention_mask, compute_entropy=True)
    for num_scales in (1, 2):
        end = _scale_offsets(model)[num_scales]
        prefix, prefix_entropy = model.image_token_logprobs(
            input_ids, image_ids[:, :end], attention_mask, compute_entropy=True
        )
        torch.testing.assert_close(prefix, full[:, :end], atol=1e-5, rtol=0)
        torch.testing.assert_close(prefix_entropy, full_entropy[:, :end], atol=1e-5, rtol=0)


def test_greedy_sampling_without_guidance_follows_the_conditional_branch(policy):
    # With guidance 1 and top-k 1 every sampled token is the most likely one of the conditional policy. A scale's
    # tokens are inputs of later scales only, so changing the last scale's tokens changes nothing but their own
    # log-probs, which can only go down.
    model, input_ids, attention_mask = policy
    out = model.generate(input_ids, attention_mask, guidance_scale=1.0, top_k=1)
    greedy, _ = model.image_token_logprobs(input_ids, out.image_ids, attention_mask)
    start = _scale_offsets(model)[-2]
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        other = out.image_ids.clone()
        other[:, start:] = torch.randint(0, 2**62, other[:, start:].shape, generator=generator) % (
            int(out.image_ids.max()) + 1
        )
        changed, _ = model.image_token_logprobs(input_ids, other, attention_mask)
        torch.testing.assert_close(changed[:, :start], greedy[:, :start], atol=1e-5, rtol=0)
        assert (changed[:, start:] <= greedy[:, start:] + 1e-5).all()


def test_decoded_images_are_in_range(policy):
    model, input_ids, attention_mask = policy
    image_ids = model.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(0)).image_ids
    images = model.decode_image_tokens(image_ids)
    assert images.shape[:2] == (len(PROMPTS), 3)
    assert images.min() >= -1 and images.max() <= 1


def test_save_and_load_round_trip(policy, tmp_path):
    model, input_ids, attention_mask = policy
    model.generation_config.guidance_scale = 2.5
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert loaded.generation_config.guidance_scale == 2.5
    image_ids = model.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(0)).image_ids
    torch.testing.assert_close(
        loaded.image_token_logprobs(input_ids, image_ids, attention_mask)[0],
        model.image_token_logprobs(input_ids, image_ids, attention_mask)[0],
        atol=0,
        rtol=0,
    )


def test_a_language_model_is_refused_with_the_supported_types():
    from transformers import Qwen2Config, Qwen2Model

    model = Qwen2Model(Qwen2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(TypeError, match=r"Qwen2Model \(model type 'qwen2'\) is not a next-scale image policy.*'var'"):
        check_policy(model)


def test_no_attention_call_sees_a_sequence_by_sequence_mask(policy, monkeypatch):
    # Block-causal attention is one SDPA call per scale over its key prefix: a mask is at most a key-padding row
    # (B, 1, 1, K) or the small causal mask of the text prefix, never (S, S) for the whole sequence.
    model, input_ids, attention_mask = policy
    calls, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(query, key, value, attn_mask=None, **kwargs):
        calls.append((query.shape[-2], key.shape[-2], None if attn_mask is None else tuple(attn_mask.shape)))
        return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    out = model.generate(input_ids, attention_mask, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    model.image_token_logprobs(input_ids, out.image_ids, attention_mask)
    num_text = input_ids.shape[1]
    assert calls
    assert max(num_keys for _, num_keys, _ in calls) >= model.num_image_tokens  # the full pass went through SDPA
    for num_queries, _, mask_shape in calls:
        if mask_shape is not None:
            assert mask_shape[-2] == 1 or mask_shape[-2] == mask_shape[-1] <= num_text, (num_queries, mask_shape)
