"""Tests of the PP-OCR backend (PP-OCRv6-small via RapidOCR) on the real engine, offline."""

import logging
import os
import socket
import sys
import time

import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from trl_var.rewards import OCRReward, check_ocr, ocr_engine_name, ppocr, read_text


FONT_PATH = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def render(text: str, size: int = 64, font_size: int = 22) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Black text centred on a white square, and the text's pixel box as PIL draws it."""
    font = ImageFont.truetype(FONT_PATH, font_size)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    center = (size // 2, size // 2)
    draw.text(center, text, fill="black", font=font, anchor="mm")
    return image, draw.textbbox(center, text, font=font, anchor="mm")


def coverage(box, glyphs) -> tuple[float, float]:
    """The share of `glyphs` inside `box`, and the area of `box` over that of `glyphs`."""
    width = min(box[2], glyphs[2]) - max(box[0], glyphs[0])
    height = min(box[3], glyphs[3]) - max(box[1], glyphs[1])
    glyph_area = (glyphs[2] - glyphs[0]) * (glyphs[3] - glyphs[1])
    return max(width, 0) * max(height, 0) / glyph_area, (box[2] - box[0]) * (box[3] - box[1]) / glyph_area


class SlowEngine:
    """Stands in for RapidOCR: answers like an engine that found nothing, after `seconds`."""

    def __init__(self, seconds: float, error: Exception | None = None):
        self.seconds, self.error = seconds, error

    def __call__(self, image):
        time.sleep(self.seconds)
        if self.error is not None:
            raise self.error
        return None


@pytest.mark.parametrize(
    "text, size, font_size", [("CAT", 64, 22), ("NNS", 64, 22), ("MNK", 64, 22), ("OPEN 24H", 512, 64)]
)
def test_ppocr_reads_clean_renders_exactly_with_unit_confidences_and_boxes_on_the_glyphs(text, size, font_size):
    # NNS is what the angle classifier (off) turned into SNN; MNK is a word RapidOCR's pieces cut after the M
    image, glyphs = render(text, size, font_size)
    words = read_text(image, backend="ppocr")
    assert [word.text for word in words] == text.split()
    assert all(0.9 < word.confidence <= 1.0 for word in words)
    for word in words:
        left, top, right, bottom = word.box
        assert 0 <= left < right <= size and 0 <= top < bottom <= size
    # the words' boxes together cover the text PIL drew, with a margin (detection boxes are padded)
    union = (
        min(w.box[0] for w in words),
        min(w.box[1] for w in words),
        max(w.box[2] for w in words),
        max(w.box[3] for w in words),
    )
    covered, ratio = coverage(union, glyphs)
    assert covered > 0.9 and ratio < 2.5


def test_ppocr_gives_each_word_of_a_line_its_own_box_left_to_right():
    image, _ = render("OPEN 24H", 512, 64)
    first, second = read_text(image, backend="ppocr")
    assert first.box[2] <= second.box[0]  # OPEN ends before 24H starts
    assert first.box[1] < 256 < first.box[3] and second.box[1] < 256 < second.box[3]


def test_ppocr_reads_nothing_on_a_blank_image():
    assert read_text(Image.new("RGB", (64, 64), "white"), backend="ppocr") == []


def test_ppocr_reward_of_a_clean_render_is_comp_plus_sim_at_its_confidence():
    reward = OCRReward(backend="ppocr")
    image, _ = render("CAT")
    rewards = reward(prompts=['a sign that says "CAT"'] * 2, completions=[image, Image.new("RGB", (64, 64), "white")])
    (word,) = reward.last_words[0]
    # Comp = Sim = confidence of the one exact read, Pen = 0
    assert rewards[0] == pytest.approx(2 * word.confidence) and rewards[0] > 1.99
    assert rewards[1] == -0.6
    assert reward.last_regions == [[word.box], []]


def test_ppocr_line_words_take_the_mean_confidence_and_the_union_box_of_their_pieces():
    # RapidOCR's pieces of the line "MNK AAM": `M` and `NK` are one word of the line's text
    pieces = [
        ("M", 0.9, [[90, 222], [135, 222], [135, 285], [90, 285]]),
        ("NK", 0.6, [[153, 222], [240, 222], [240, 285], [153, 285]]),
        ("AAM", 1.0, [[279, 222], [418, 222], [418, 285], [279, 285]]),
    ]
    words = ppocr._line_words("MNK AAM", 0.8, (80, 220, 430, 290), pieces, 512, 512)
    assert words == [("MNK", pytest.approx(0.7), (90, 222, 240, 285)), ("AAM", 1.0, (279, 222, 418, 285))]
    # pieces that do not spell the line: every word gets the line's confidence and box
    assert ppocr._line_words("MNK AAM", 0.8, (80, 220, 430, 290), pieces[:2], 512, 512) == [
        ("MNK", 0.8, (80, 220, 430, 290)),
        ("AAM", 0.8, (80, 220, 430, 290)),
    ]


def test_ppocr_reads_offline_from_the_bundled_models_with_an_empty_home(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("PP-OCR tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(ppocr, "_engine", None)  # build a fresh engine: load the models from disk again
    image, _ = render("CAT")
    assert [word.text for word in read_text(image, backend="ppocr")] == ["CAT"]
    assert not [name for _, _, names in os.walk(tmp_path) for name in names if name.endswith(".onnx")]


def test_ppocr_read_past_its_timeout_raises_timeout_error_without_waiting(monkeypatch):
    monkeypatch.setattr(ppocr, "_engine", SlowEngine(5.0))
    start = time.perf_counter()
    with pytest.raises(TimeoutError, match="PP-OCR did not finish within 0.2 s"):
        read_text(Image.new("RGB", (64, 64), "white"), backend="ppocr", timeout=0.2)
    assert time.perf_counter() - start < 2.0


def test_ppocr_errors_of_a_read_with_a_timeout_reach_the_caller(monkeypatch):
    monkeypatch.setattr(ppocr, "_engine", SlowEngine(0.0, error=ValueError("bad image")))
    with pytest.raises(ValueError, match="bad image"):
        read_text(Image.new("RGB", (64, 64), "white"), backend="ppocr", timeout=5)


def test_ppocr_reward_scores_a_read_past_its_timeout_none_and_logs_it(monkeypatch, caplog):
    monkeypatch.setattr(ppocr, "_engine", SlowEngine(5.0))
    reward = OCRReward(backend="ppocr", timeout=0.2)
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="trl_var.rewards.ocr"):
        rewards = reward(prompts=['a sign that says "CAT"'] * 2, completions=[Image.new("RGB", (64, 64))] * 2)
    assert time.perf_counter() - start < 2.0
    assert rewards == [None, None]
    assert reward.last_words == [[], []]
    assert "PP-OCR did not finish within 0.2 s" in caplog.text


def test_missing_rapidocr_raises_with_the_install_command(monkeypatch):
    monkeypatch.setattr(ppocr, "_engine", None)
    monkeypatch.setitem(sys.modules, "rapidocr", None)  # `import rapidocr` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "trl-var\[ppocr\]"'):
        check_ocr("ppocr")
    with pytest.raises(ImportError, match=r'pip install "trl-var\[ppocr\]"'):
        OCRReward(backend="ppocr")


def test_ocr_engine_name_says_which_engine_and_version_read():
    assert ocr_engine_name("ppocr") == f"PP-OCRv6-small via RapidOCR {ppocr.RAPIDOCR_VERSION}"
    assert ocr_engine_name("tesseract").startswith("Tesseract ")


def test_evaluation_with_the_ppocr_backend_reads_with_it_and_its_results_and_card_name_the_engine(tmp_path):
    from conftest import tiny_var_config
    from datasets import Dataset

    from trl_var import VARForImageGeneration, VARGRPOConfig, VARPipeline, build_char_tokenizer, evaluation
    from trl_var.trainer.model_card import generate_model_card

    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    model = VARForImageGeneration(tiny_var_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id))
    pipeline = VARPipeline(model.eval(), tokenizer)
    prompts = ['the word "AB"', 'the word "CD"']
    dataset = Dataset.from_dict({"prompt": prompts, "targets": [["AB"], ["CD"]], "num_regions": [1, 1]})
    engine = f"PP-OCRv6-small via RapidOCR {ppocr.RAPIDOCR_VERSION}"

    results = evaluation.evaluate_text_rendering(pipeline, dataset, tmp_path, num_grid_images=0, ocr_backend="ppocr")
    assert (results["config"]["ocr_backend"], results["config"]["ocr_engine"]) == ("ppocr", engine)
    assert (tmp_path / "results.md").read_text().endswith(f"OCR: {engine}.\n")
    # a resumed evaluation must read with the same engine
    with pytest.raises(ValueError, match="ocr_backend: 'ppocr' then, 'tesseract' now"):
        evaluation.evaluate_text_rendering(pipeline, dataset, tmp_path, num_grid_images=0)

    card = generate_model_card(
        VARGRPOConfig(output_dir=str(tmp_path), report_to="none"), model.config, model_name="tiny", results=results
    )
    assert f"(OCR by {engine}: compare with models evaluated the same way)" in card.text

    scored = evaluation.score_prompts(pipeline, prompts, [["AB"], ["CD"]], ocr_backend="ppocr")
    assert scored["predictions"] == evaluation.read_images(scored["images"], backend="ppocr")
