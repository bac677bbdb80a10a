import PIL.Image
import pytest
import torch
from transformers import AutoTokenizer

from trl_var import VARPipeline, build_char_tokenizer
from trl_var.data import (
    DEFAULT_ALPHABET,
    DEFAULT_TEMPLATES,
    make_heldout_dataset,
    make_text_render_dataset,
    make_word_prompts,
)
from trl_var.rewards import extract_quoted_text
from trl_var.visualization import make_image_grid


def test_pipeline_returns_pil_images_reproducibly(tiny_model, char_tokenizer):
    pipe = VARPipeline(tiny_model, char_tokenizer)
    out = pipe(["a cat", "a dog"], num_images_per_prompt=2, generator=torch.Generator().manual_seed(0), batch_size=3)
    assert len(out.images) == 4 and all(isinstance(im, PIL.Image.Image) and im.size == (16, 16) for im in out.images)
    assert out.image_ids.shape == (4, 85)
    again = pipe(["a cat", "a dog"], num_images_per_prompt=2, generator=torch.Generator().manual_seed(0), batch_size=3)
    assert torch.equal(out.image_ids, again.image_ids)
    tensors = pipe("a cat", output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert tensors.shape == (1, 3, 16, 16) and 0 <= tensors.min() and tensors.max() <= 1


def test_pipeline_save_and_load_round_trip(tiny_model, char_tokenizer, tmp_path):
    pipe = VARPipeline(tiny_model, char_tokenizer)
    pipe.save_pretrained(tmp_path)
    loaded = VARPipeline.from_pretrained(tmp_path)
    first = pipe("a cat", generator=torch.Generator().manual_seed(1)).image_ids
    assert torch.equal(loaded("a cat", generator=torch.Generator().manual_seed(1)).image_ids, first)


def test_pipeline_samples_with_the_generation_config_unless_a_call_overrides_it(tiny_model, char_tokenizer, tmp_path):
    pipe = VARPipeline(tiny_model, char_tokenizer)
    ids = char_tokenizer(["a cat"], return_tensors="pt", add_special_tokens=False)["input_ids"]
    paper = tiny_model.generate(ids, generator=torch.Generator().manual_seed(0)).image_ids
    assert torch.equal(pipe("a cat", generator=torch.Generator().manual_seed(0)).image_ids, paper)
    # a setting of the call wins; the saved generation config travels with the pipeline
    guided = {"guidance_scale": 2.0, "top_k": 0}
    expected = tiny_model.generate(ids, generator=torch.Generator().manual_seed(0), **guided).image_ids
    assert torch.equal(pipe("a cat", generator=torch.Generator().manual_seed(0), **guided).image_ids, expected)
    tiny_model.generation_config.update(**guided)
    pipe.save_pretrained(tmp_path)
    loaded = VARPipeline.from_pretrained(tmp_path)
    assert torch.equal(loaded("a cat", generator=torch.Generator().manual_seed(0)).image_ids, expected)


def test_pipeline_names_a_wrong_sampling_argument(tiny_model, char_tokenizer):
    with pytest.raises(TypeError, match=r"Unknown sampling argument\(s\) \['guidance'\]"):
        VARPipeline(tiny_model, char_tokenizer)("a cat", guidance=3.0)


def test_pipeline_rejects_an_empty_prompt(tiny_model, char_tokenizer):
    with pytest.raises(ValueError, match=r"`prompt\[1\]` is empty"):
        VARPipeline(tiny_model, char_tokenizer)(["a cat", " "])


def test_char_tokenizer_spells_prompts_and_round_trips(tmp_path):
    tokenizer = build_char_tokenizer()
    ids = tokenizer('the word "ACE"', add_special_tokens=False)["input_ids"]
    assert len(ids) == len('the word "ACE"') and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == 'the word "ACE"'
    batch = tokenizer(["ab", "abcd"], padding=True, add_special_tokens=False)
    assert batch["attention_mask"][0] == [0, 0, 1, 1]  # left padding, as TRL pads prompts
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)("abc")["input_ids"] == tokenizer("abc")["input_ids"]


def test_text_render_dataset_is_seeded_and_quotes_its_word():
    dataset = make_text_render_dataset(32, word_length=(2, 4), seed=1)
    assert dataset.column_names == ["prompt", "text"] and len(dataset) == 32
    for row in dataset:
        assert extract_quoted_text(row["prompt"]) == [row["text"]]
        assert 2 <= len(row["text"]) <= 4 and set(row["text"]) <= set(DEFAULT_ALPHABET)
    assert make_text_render_dataset(32, word_length=(2, 4), seed=1)["prompt"] == dataset["prompt"]
    assert make_text_render_dataset(32, word_length=(2, 4), seed=2)["prompt"] != dataset["prompt"]
    with pytest.raises(ValueError, match="word_length"):
        make_text_render_dataset(4, word_length=0)


def test_image_grid_layout():
    images = [PIL.Image.new("RGB", (16, 16), color) for color in ("red", "green", "blue")]
    grid = make_image_grid(images, ["a", "b", "c"], columns=2, cell_size=32, caption_lines=1)
    assert grid.size == (64, 2 * (32 + 16))
    assert grid.getpixel((40, 5)) == (0, 128, 0)  # second image, first row
    with pytest.raises(ValueError, match="captions"):
        make_image_grid(images, ["a"])


def test_word_prompts_take_every_word_once_with_templates_in_turn():
    data = make_word_prompts(("ACE", "MAX", "HEN", "SEA", "KEN"))
    assert data["text"] == ["ACE", "MAX", "HEN", "SEA", "KEN"]
    assert data["prompt"][0] == DEFAULT_TEMPLATES[0].format(word="ACE")
    assert data["prompt"][4] == DEFAULT_TEMPLATES[0].format(word="KEN")  # 4 templates, then the first again
    assert data["prompt"][1] == 'a sign that says "MAX"'
    heldout = make_heldout_dataset()
    assert len(heldout) == 100 and heldout["prompt"][1] == f'a sign that says "{heldout["text"][1]}"'
