import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_t5_config
from safetensors.torch import load_file
from test_modeling_infinity import SCHEDULE
from transformers import AutoModel, T5EncoderModel

import trl_var  # noqa: F401  (registers the model type with AutoModel)
from trl_var import build_char_tokenizer
from trl_var.models.infinity import InfinityForImageGeneration, convert_infinity_checkpoint
from trl_var.models.infinity.bsq_vae import InfinityVAEDecoder
from trl_var.models.infinity.modeling_infinity import null_text_init


FIXTURES = Path(__file__).parent / "fixtures" / "infinity"
HIDDEN, HEADS, FFN, BITS, TEXT, NULL_ROWS, POOL_HEADS = 32, 2, 64, 4, 32, 16, 2


def original_state_dict(depth=2, chunks=2, flash_layout=False, seed=0) -> dict[str, torch.Tensor]:
    """A random transformer state dict in the key layout and shapes of the original `Infinity` (`block_chunks` > 1)."""
    generator = torch.Generator().manual_seed(seed)
    C = HIDDEN
    shapes = {
        "cfg_uncond": (NULL_ROWS, TEXT),
        "pos_start": (1, 1, C),
        "text_norm.weight": (TEXT,),
        "text_proj_for_sos.ca.mat_q": (1, POOL_HEADS, C // POOL_HEADS),
        "text_proj_for_sos.ca.v_bias": (C,),
        "text_proj_for_sos.ca.mat_kv.weight": (2 * C, TEXT),
        "text_proj_for_sos.ca.proj.weight": (C, C),
        "text_proj_for_sos.ca.proj.bias": (C,),
        "text_proj_for_ca.0.weight": (C, TEXT),
        "text_proj_for_ca.0.bias": (C,),
        "text_proj_for_ca.2.weight": (C, C),
        "text_proj_for_ca.2.bias": (C,),
        "lvl_embed.weight": (15, C),
        "word_embed.weight": (C, BITS),
        "word_embed.bias": (C,),
        "shared_ada_lin.1.weight": (6 * C, C),
        "shared_ada_lin.1.bias": (6 * C,),
        "head_nm.ada_lin.1.weight": (2 * C, C),
        "head_nm.ada_lin.1.bias": (2 * C,),
        "head.weight": (2 * BITS, C),
        "head.bias": (2 * BITS,),
    }
    block = {
        "ada_gss": (1, 1, 6, C),
        "sa.scale_mul_1H11": (1, 1, HEADS, 1) if flash_layout else (1, HEADS, 1, 1),
        "sa.q_bias": (C,),
        "sa.v_bias": (C,),
        "sa.mat_qkv.weight": (3 * C, C),
        "sa.proj.weight": (C, C),
        "sa.proj.bias": (C,),
        "ca.v_bias": (C,),
        "ca.mat_q.weight": (C, C),
        "ca.mat_q.bias": (C,),
        "ca.mat_kv.weight": (2 * C, C),
        "ca.proj.weight": (C, C),
        "ca.proj.bias": (C,),
        "ffn.fc1.weight": (FFN, C),
        "ffn.fc1.bias": (FFN,),
        "ffn.fc2.weight": (C, FFN),
        "ffn.fc2.bias": (C,),
        "ca_norm.weight": (C,),
        "ca_norm.bias": (C,),
    }
    per_chunk = depth // chunks
    for i in range(depth):
        for name, shape in block.items():
            shapes[f"block_chunks.{i // per_chunk}.module.{i % per_chunk}.{name}"] = shape
    state_dict = {key: torch.randn(shape, generator=generator) * 0.3 for key, shape in shapes.items()}
    for i in range(depth):  # the original's constant buffers
        prefix = f"block_chunks.{i // per_chunk}.module.{i % per_chunk}."
        state_dict[prefix + "sa.zero_k_bias"] = torch.zeros(C)
        state_dict[prefix + "ca.zero_k_bias"] = torch.zeros(C)
    state_dict["text_proj_for_sos.ca.zero_k_bias"] = torch.zeros(C)
    return state_dict


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny T5 folder (with a tokenizer) and a VAE checkpoint in the original's `{"vae": state_dict}` layout."""
    root = tmp_path_factory.mktemp("infinity_assets")
    torch.manual_seed(0)
    T5EncoderModel(tiny_t5_config()).save_pretrained(root / "t5")
    build_char_tokenizer().save_pretrained(root / "t5")
    decoder = InfinityVAEDecoder(codebook_dim=BITS, block_out_channels=[32, 32], num_res_blocks=0, patch_size=2)
    vae = {"vae": {f"decoder.{key}": value for key, value in decoder.state_dict().items()}}
    torch.save(vae, root / "vae.pth")
    return root


def _convert(assets, tmp_path, checkpoint, **kwargs):
    return convert_infinity_checkpoint(
        checkpoint=checkpoint,
        vae=assets / "vae.pth",
        text_encoder=assets / "t5",
        output_dir=tmp_path / "converted",
        scale_schedule=SCHEDULE,
        **kwargs,
    )


def _prompts():
    batch = build_char_tokenizer()(['a sign "OPEN"', "cat"], padding=True, padding_side="left", return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def test_shapes_are_inferred_and_every_tensor_lands_under_its_name(assets, tmp_path):
    state_dict = original_state_dict(depth=4, chunks=2)
    model = _convert(assets, tmp_path, state_dict)
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (HIDDEN, 4, HEADS)
    assert (config.num_block_chunks, config.codebook_dim, config.intermediate_size) == (2, BITS, FFN)
    assert (config.text_hidden_size, config.text_pool_num_heads, config.text_max_length) == (TEXT, POOL_HEADS, 512)
    ours = model.state_dict()
    for key, value in state_dict.items():
        if not key.endswith(("zero_k_bias", "cfg_uncond")):
            assert torch.equal(ours[key].reshape(value.shape), value), key
    # the null text keeps its rows and is completed to 512 rows with the original's seeded initialization
    assert torch.equal(ours["cfg_uncond"][:NULL_ROWS], state_dict["cfg_uncond"])
    assert torch.equal(ours["cfg_uncond"][NULL_ROWS:], null_text_init(512, TEXT)[NULL_ROWS:])


def test_converted_folder_loads_in_a_fresh_process(assets, tmp_path):
    model = _convert(assets, tmp_path, original_state_dict()).eval()
    input_ids, attention_mask = _prompts()
    image_ids = model.generate(input_ids, attention_mask, generator=torch.Generator().manual_seed(0)).image_ids
    torch.save({"input_ids": input_ids, "attention_mask": attention_mask, "image_ids": image_ids}, tmp_path / "in.pt")
    script = f"""
import torch, trl_var
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained({str(tmp_path / "converted")!r}).eval()
AutoTokenizer.from_pretrained({str(tmp_path / "converted")!r})
batch = torch.load({str(tmp_path / "in.pt")!r})
logprobs, _ = model.image_token_logprobs(batch["input_ids"], batch["image_ids"], batch["attention_mask"])
torch.save({{"type": type(model).__name__, "logprobs": logprobs}}, {str(tmp_path / "out.pt")!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    result = torch.load(tmp_path / "out.pt")
    assert result["type"] == "InfinityForImageGeneration"
    expected, _ = model.image_token_logprobs(input_ids, image_ids, attention_mask)
    torch.testing.assert_close(result["logprobs"], expected, atol=0, rtol=0)


def test_both_scale_mul_layouts_and_the_training_nesting_give_the_same_model(assets, tmp_path):
    reference = _convert(assets, tmp_path / "a", original_state_dict()).state_dict()
    flash = _convert(assets, tmp_path / "b", original_state_dict(flash_layout=True)).state_dict()
    nested = _convert(assets, tmp_path / "c", {"trainer": {"gpt_fsdp": original_state_dict()}}).state_dict()
    for other in (flash, nested):
        assert other.keys() == reference.keys()
        assert all(torch.equal(other[key], reference[key]) for key in reference)
    assert reference["block_chunks.0.module.0.sa.scale_mul_1H11"].shape == (1, HEADS, 1, 1)


def test_checkpoint_file_on_disk(assets, tmp_path):
    torch.save(original_state_dict(), tmp_path / "infinity.pth")
    model = _convert(assets, tmp_path, tmp_path / "infinity.pth")
    assert isinstance(model, InfinityForImageGeneration)
    assert (tmp_path / "converted" / "model.safetensors").exists()
    assert json.loads((tmp_path / "converted" / "config.json").read_text())["model_type"] == "infinity"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.update({"blocks.0.sa.extra": torch.zeros(3)}), "unknown keys: blocks.0.sa.extra"),
        (
            lambda sd: sd.pop("block_chunks.1.module.0.ffn.fc2.bias"),
            "missing keys: block_chunks.1.module.0.ffn.fc2.bias",
        ),
        (lambda sd: sd.update({"head.bias": torch.zeros(7)}), r"mis-shaped keys: head.bias \(7,\)"),
        (
            lambda sd: sd.update({"text_proj_for_sos.ca.zero_k_bias": torch.ones(HIDDEN)}),
            "non-zero zero_k_bias buffers: text_proj_for_sos.ca.zero_k_bias",
        ),
        (lambda sd: sd.pop("word_embed.weight"), "missing keys"),
    ],
)
def test_unknown_missing_or_mis_shaped_keys_are_errors_that_name_them(assets, tmp_path, edit, message):
    state_dict = original_state_dict()
    edit(state_dict)
    with pytest.raises(ValueError, match=message):
        _convert(assets, tmp_path, state_dict)


def test_command_line_help():
    result = subprocess.run(
        [sys.executable, "-m", "trl_var.models.infinity.convert", "--help"], capture_output=True, text=True, check=True
    )
    assert "--checkpoint" in result.stdout and "--scale_schedule" in result.stdout


@pytest.mark.skipif(not (FIXTURES / "reference.safetensors").exists(), reason="no reference fixtures")
def test_converted_original_checkpoint_matches_the_original_outputs(tmp_path, monkeypatch):
    # tests/scripts/make_infinity_reference.py ran the ORIGINAL implementation on these tiny random checkpoints.
    summary = json.loads((FIXTURES / "reference.json").read_text())
    reference = load_file(FIXTURES / "reference.safetensors")
    convert_infinity_checkpoint(
        checkpoint=FIXTURES / "transformer.pth",
        vae=FIXTURES / "vae.pth",
        text_encoder=FIXTURES / "t5",
        output_dir=tmp_path / "converted",
        scale_schedule=summary["scale_schedule_hw"],
    )
    model = AutoModel.from_pretrained(tmp_path / "converted").eval()
    input_ids, attention_mask, image_ids = reference["input_ids"], reference["attention_mask"], reference["image_ids"]

    logprobs, _ = model.image_token_logprobs(input_ids, image_ids, attention_mask)
    torch.testing.assert_close(logprobs, reference["logprobs"], atol=1e-4, rtol=0)
    logits = model(input_ids, image_ids, attention_mask).logits
    torch.testing.assert_close(logits.flatten(-2), reference["logits"], atol=1e-4, rtol=0)
    summed_codes = model.image_ids_to_summed_codes(image_ids)[-1]
    torch.testing.assert_close(summed_codes, reference["summed_codes"], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        model.decode_image_tokens(image_ids), reference["pixels"].clamp(-1, 1), atol=1e-4, rtol=0
    )

    # the unconditional branch: every prompt's T5 features replaced by the first rows of the null text
    null_features = model._null_text(attention_mask)
    monkeypatch.setattr(
        model.text_encoder, "forward", lambda **kwargs: type("Out", (), {"last_hidden_state": null_features})
    )
    uncond, _ = model.image_token_logprobs(input_ids, image_ids, attention_mask)
    torch.testing.assert_close(uncond, reference["logprobs_uncond"], atol=1e-4, rtol=0)
