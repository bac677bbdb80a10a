import json
import os
import sys

import pytest
from transformers import AutoModel

from trl_var import VARForImageGeneration, VARPipeline
from trl_var.data.render import RenderStyle, make_render_dataset


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_render_dataset_is_seeded_and_keeps_held_out_words_out():
    data = make_render_dataset(40, word_length=2, alphabet="AB", exclude_words={"AA", "AB"}, seed=3)
    assert set(data["text"]) <= {"BA", "BB"} and len(data) == 40
    assert data[0]["image"].size == (64, 64) and data[0]["text"] in data[0]["prompt"]
    again = make_render_dataset(40, word_length=2, alphabet="AB", exclude_words={"AA", "AB"}, seed=3)
    assert list(again["text"]) == list(data["text"])
    assert list(again[5]["image"].getdata()) == list(data[5]["image"].getdata())
    assert make_render_dataset(1, style=RenderStyle(size=32))[0]["image"].size == (32, 32)
    with pytest.raises(ValueError, match="exclude_words"):
        make_render_dataset(1, word_length=1, alphabet="A", exclude_words={"A"})


def _run(monkeypatch, *args):
    sys.path.insert(0, os.path.join(ROOT, "recipes"))
    import pretrain_tiny

    monkeypatch.setattr(sys, "argv", ["pretrain_tiny.py", *args])
    pretrain_tiny.main()


def test_pretraining_runs_both_stages_resumes_and_saves_a_loadable_model(tmp_path, monkeypatch, capsys):
    common = ["--output_dir", str(tmp_path), "--batch_size", "4", "--save_every", "2", "--quality_images", "8"]
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
    steps = [json.loads(line)["step"] for line in open(tmp_path / "var" / "log.jsonl")]
    assert steps == [2, 3]
