import argparse
import json
import os
import sys

import pytest
import torch
from conftest import load_script
from datasets import load_dataset
from transformers import AutoModel

from trl_var import VARForImageGeneration, VARPipeline, build_char_tokenizer
from trl_var.data import DEFAULT_TEMPLATES, HELDOUT_WORDS, make_heldout_dataset, make_text_render_dataset
from trl_var.data.render import RenderStyle, make_render_dataset
from trl_var.models.presets import nextflow_shaped_config, tiny_text_render_config, tiny_text_render_model


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_render_dataset_is_seeded_and_keeps_held_out_words_out():
    data = make_render_dataset(40, word_length=2, alphabet="AB", exclude_words={"AA", "AB"}, seed=3)
    assert set(data["text"]) <= {"BA", "BB"} and len(data) == 40
    assert data[0]["image"].size == (64, 64) and data[0]["text"] in data[0]["prompt"]
    again = make_render_dataset(40, word_length=2, alphabet="AB", exclude_words={"AA", "AB"}, seed=3)
    assert list(again["text"]) == list(data["text"])
    assert again[5]["image"].tobytes() == data[5]["image"].tobytes()
    assert make_render_dataset(1, style=RenderStyle(size=32))[0]["image"].size == (32, 32)
    with pytest.raises(ValueError, match="exclude_words"):
        make_render_dataset(1, word_length=1, alphabet="A", exclude_words={"A"})


def _run(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["pretrain_tiny.py", *args])
    load_script("recipes/pretrain_tiny.py").main()


@pytest.mark.slow
def test_pretraining_runs_both_stages_resumes_and_saves_a_loadable_model(tmp_path, monkeypatch, capsys):
    common = ["--output_dir", str(tmp_path), "--batch_size", "4", "--save_every", "2", "--quality_images", "8"]
    common += ["--var_batch_size", "4", "--num_images", "20", "--eval_every", "2", "--hidden_size", "64"]
    _run(monkeypatch, *common, "--tokenizer_steps", "2", "--var_steps", "2")
    quality = json.load(open(tmp_path / "tokenizer" / "quality.json"))
    assert quality["renders"] > 0.8 and 0 <= quality["reconstructions"] <= 1 and quality["codes_used"] >= 1
    model = AutoModel.from_pretrained(tmp_path / "model")
    assert isinstance(model, VARForImageGeneration)
    image = VARPipeline.from_pretrained(tmp_path / "model")('the word "ACE"', guidance_scale=1.0).images[0]
    assert image.size == (64, 64)
    # more transformer steps: resumes at step 2 instead of starting over
    _run(monkeypatch, *common, "--stage", "var", "--var_steps", "3")
    assert "Resuming" in capsys.readouterr().out
    log = [json.loads(line) for line in open(tmp_path / "var" / "log.jsonl")]
    assert [entry["step"] for entry in log] == [2, 3]
    assert all(0 <= entry["heldout_word_accuracy"] <= entry["heldout_ned"] <= 1 for entry in log)
    assert model.config.text_config.hidden_size == 64
    assert isinstance(AutoModel.from_pretrained(tmp_path / "var" / "snapshots" / "step-2"), VARForImageGeneration)
    # the transformer's cached training renders: 20 encoded images, none of a held-out word
    cache = torch.load(tmp_path / "var" / "renders.pt")
    assert cache["image_ids"].shape == (20, 130) and len(cache["prompts"]) == 20
    assert not any(f'"{word}"' in prompt for prompt in cache["prompts"] for word in HELDOUT_WORDS)
    assert cache["key"]["num_images"] == 20 and len(cache["key"]["tokenizer"]) == 16
    # another --num_images: the cache no longer matches and is rebuilt, not silently reused
    capsys.readouterr()
    _run(monkeypatch, *common, "--stage", "var", "--var_steps", "3", "--num_images", "12")
    assert "encoding the renders again" in capsys.readouterr().out
    assert torch.load(tmp_path / "var" / "renders.pt")["image_ids"].shape == (12, 130)


def test_eval_every_must_be_a_multiple_of_save_every(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        _run(monkeypatch, "--output_dir", str(tmp_path), "--save_every", "100", "--eval_every", "150")
    assert "--eval_every (150) must be a multiple of --save_every (100)" in capsys.readouterr().err


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    pretrain_tiny = load_script("recipes/pretrain_tiny.py")
    args = argparse.Namespace(var_lr=1e-3, var_warmup=10, var_steps=110)
    assert pretrain_tiny.learning_rate(args, 0) == pytest.approx(1e-4)
    assert pretrain_tiny.learning_rate(args, 9) == pytest.approx(1e-3)
    assert pretrain_tiny.learning_rate(args, 60) == pytest.approx(0.55e-3)
    assert pretrain_tiny.learning_rate(args, 110) == pytest.approx(1e-4)


def test_heldout_words_are_fixed_and_never_drawn_for_training():
    assert len(HELDOUT_WORDS) == 100 and len(set(HELDOUT_WORDS)) == 100 and HELDOUT_WORDS[:3] == ("AAC", "AAM", "AAR")
    heldout = make_heldout_dataset()
    assert list(heldout["text"]) == list(HELDOUT_WORDS)
    assert heldout["prompt"][:2] == ['the word "AAC"', 'a sign that says "AAM"']
    # the same prompts, saved for `make evaluate` and any datasets-based evaluation
    saved = load_dataset("json", data_files=os.path.join(ROOT, "recipes", "data", "text_render_heldout.jsonl"))
    assert saved["train"]["prompt"] == heldout["prompt"] and saved["train"]["text"] == heldout["text"]
    assert not set(make_text_render_dataset(2000, seed=0)["text"]) & set(HELDOUT_WORDS)
    assert not set(make_render_dataset(300, seed=0)["text"]) & set(HELDOUT_WORDS)
    # the held-out 3-letter words do not restrict other lengths or alphabets
    assert len(make_text_render_dataset(8, word_length=2, seed=0)) == 8
    assert set(make_text_render_dataset(8, word_length=1, alphabet="A", seed=0)["text"]) == {"A"}
    assert len(make_render_dataset(4, word_length=(1, 2), seed=0)) == 4
    # every template ends with the quoted word (the fixed prompt-to-image offset the toy model relies on)
    assert all(template.endswith('"{word}"') for template in DEFAULT_TEMPLATES)


def test_shipped_model_declares_its_tokenizers_pad_and_eos_tokens():
    """Else the trainer 'aligns' them at start with a warning (transformers' align_special_tokens)."""
    from transformers import AutoTokenizer

    folder = os.path.join(ROOT, "recipes", "models", "var-tiny-text-render")
    model, tokenizer = AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    text_config = model.config.get_text_config()
    assert (text_config.pad_token_id, text_config.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)
    generation = model.generation_config
    assert (generation.pad_token_id, generation.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)


def test_presets_pin_the_tiny_recipe_and_the_nextflow_shaped_schedule():
    tokenizer = build_char_tokenizer()
    tiny = tiny_text_render_config(tokenizer)
    assert tiny.num_image_tokens == 130 and tiny.scale_schedule[-1] == (8, 8) and tiny.vq_config["sample_size"] == 64
    text = tiny.text_config
    assert (text.hidden_size, text.num_hidden_layers) == (128, 4)
    assert (text.num_attention_heads, text.num_key_value_heads) == (4, 2)
    assert (text.vocab_size, text.pad_token_id) == (len(tokenizer), tokenizer.pad_token_id)
    assert tiny_text_render_config(tokenizer, hidden_size=64).text_config.num_key_value_heads == 1
    with torch.device("meta"):
        model = tiny_text_render_model(tokenizer, num_layers=2)
    assert isinstance(model, VARForImageGeneration) and model.config.text_config.num_hidden_layers == 2
    # NextFlow's 18 scales at half the side: as many sampling steps as 1024 px, 2,530 tokens, 32x32 last
    shaped = nextflow_shaped_config()
    assert len(shaped.scale_schedule) == 18 and shaped.scale_schedule[-1] == (32, 32)
    assert shaped.num_image_tokens == 2530
