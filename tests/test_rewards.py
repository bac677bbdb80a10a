"""Tests of the OCR reward: the paper's formula (pure), Tesseract reading, and the TRL reward callable (PP-OCR's own
tests are in test_ppocr.py)."""

import os
import pickle

import pytesseract
import pytest
from PIL import Image, ImageDraw, ImageFont

from trl_var.metrics import edit_similarity
from trl_var.rewards import OCRReward, OCRWord, check_tesseract, extract_quoted_text, read_text, score_ocr


FONT_PATH = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def render(text: str, size: int = 64, font_size: int = 22) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Black text centred on a white square, and the text's pixel box as PIL draws it."""
    font = ImageFont.truetype(FONT_PATH, font_size)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    center = (size // 2, size // 2)
    draw.text(center, text, fill="black", font=font, anchor="mm")
    return image, draw.textbbox(center, text, font=font, anchor="mm")


@pytest.fixture(scope="module")
def cat():
    return render("CAT")


@pytest.fixture(scope="module")
def blank():
    return Image.new("RGB", (64, 64), "white")


# score_ocr: Reward = Comp + Sim - Pen


def test_score_ocr_perfect_read_at_full_confidence_is_two():
    assert score_ocr([("open", 1.0), ("24h", 1.0)], ["open", "24h"]) == 2.0


def test_score_ocr_nothing_read_is_minus_penalty():
    assert score_ocr([], ["open", "24h"]) == -0.6


def test_score_ocr_weights_completeness_and_similarity_by_confidence():
    # Comp = 0.5, Sim = 1 * 0.5, Pen = 0
    assert score_ocr([("cat", 0.5)], ["cat"]) == 1.0


def test_score_ocr_duplicate_reading_counts_least_confident_and_adds_to_bag_penalty():
    # Comp = min(0.9, 0.4) = 0.4; Sim = LD 1 at the most confident tie = 0.9;
    # Pen = 0.6 * |{c, a, t}| / (|catcat| + |cat|) = 0.6 * 3 / 9 = 0.2
    assert score_ocr([("cat", 0.9), ("cat", 0.4)], ["cat"]) == pytest.approx(0.4 + 0.9 - 0.2)


def test_score_ocr_one_of_two_words_read():
    # Comp = (1 + 0) / 2; Sim = (LD(cat, cat) + LD(dog, cat)) / 2 = (1 + 0) / 2;
    # Pen = 0.6 * |{d, o, g}| / (|cat| + |catdog|) = 0.6 * 3 / 9 = 0.2
    assert score_ocr([("cat", 1.0)], ["cat", "dog"]) == pytest.approx(0.5 + 0.5 - 0.2)


def test_score_ocr_misspelled_word_earns_similarity_but_not_completeness():
    # Comp = (0.8 + 0) / 2 = 0.4
    # Sim = (LD(hello, hello) * 0.8 + LD(world, wor1d) * 0.5) / 2 = (0.8 + (1 - 1/5) * 0.5) / 2 = 0.6
    #   (wor1d beats hello for "world": LD(world, hello) = 1 - 4/5)
    # Pen = 0.6 * |{1} + {l}| / (|hellowor1d| + |helloworld|) = 0.6 * 2 / 20 = 0.06
    assert score_ocr([("hello", 0.8), ("wor1d", 0.5)], ["hello", "world"]) == pytest.approx(0.4 + 0.6 - 0.06)


def test_score_ocr_is_case_insensitive():
    assert score_ocr([("Cat", 1.0), ("DOG", 1.0)], ["CAT", "dog"]) == 2.0
    assert score_ocr([("hello", 0.8), ("WOR1D", 0.5)], ["Hello", "World"]) == pytest.approx(0.94)


def test_score_ocr_zero_penalty_removes_only_the_penalty_term():
    predictions, targets = [("hello", 0.8), ("wor1d", 0.5)], ["hello", "world"]
    assert score_ocr(predictions, targets, penalty=0.0) == pytest.approx(0.4 + 0.6)
    assert score_ocr(predictions, targets, penalty=0.0) - score_ocr(predictions, targets) == pytest.approx(0.06)
    assert score_ocr([], targets, penalty=0.0) == 0.0


def test_score_ocr_similarity_ties_go_to_the_most_confident_prediction_in_any_order():
    # LD(cat, cot) = LD(cat, cut) = 1 - 1/3; Sim takes confidence 0.8: 2/3 * 0.8 = 8/15
    # Pen = 0.6 * |{c, o, t, u} + {a}| / (6 + 3) = 5/15
    expected = 8 / 15 - 5 / 15
    assert score_ocr([("cot", 0.2), ("cut", 0.8)], ["cat"]) == pytest.approx(expected)
    assert score_ocr([("cut", 0.8), ("cot", 0.2)], ["cat"]) == pytest.approx(expected)


def test_score_ocr_similarity_is_the_metrics_edit_similarity():
    # one edit-similarity function serves the reward and NED: Sim = LD(world, wor1d) * 1 = 0.8, Comp = Pen = 0
    assert edit_similarity("world", "wor1d") == pytest.approx(0.8)
    assert score_ocr([("wor1d", 1.0)], ["world"], penalty=0.0) == edit_similarity("world", "wor1d")


@pytest.mark.parametrize("targets", [[], ["cat", ""]])
def test_score_ocr_rejects_empty_targets(targets):
    with pytest.raises(ValueError, match="`targets`"):
        score_ocr([("cat", 1.0)], targets)


@pytest.mark.parametrize("confidence", [-0.1, 1.5])
def test_score_ocr_rejects_confidence_outside_unit_interval(confidence):
    with pytest.raises(ValueError, match="`predictions`"):
        score_ocr([("cat", confidence)], ["cat"])


# extract_quoted_text


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ('a sign that says "OPEN" and "24H"', ["OPEN", "24H"]),
        ("a sign that says \u201cOPEN\u201d and \u201c24H\u201d", ["OPEN", "24H"]),
        ('a neon "HAPPY BIRTHDAY" banner', ["HAPPY BIRTHDAY"]),
        ('an empty "" label and a "SALE" tag', ["SALE"]),
        ("a red apple on a table", []),
    ],
)
def test_extract_quoted_text_returns_double_quoted_spans_in_order(prompt, expected):
    assert extract_quoted_text(prompt) == expected


# read_text (Tesseract)


def test_read_text_reads_a_rendered_word_with_its_box_in_original_pixels(cat):
    image, (left, top, right, bottom) = cat
    words = read_text(image)
    assert [word.text for word in words] == ["CAT"]
    word = words[0]
    assert isinstance(word, OCRWord)
    assert 0.5 < word.confidence <= 1.0
    # the box is in 64x64 pixels (not the 4x upscaled ones) and hugs the glyphs PIL drew
    assert 0 <= word.box[0] < word.box[2] <= 64 and 0 <= word.box[1] < word.box[3] <= 64
    assert word.box == pytest.approx((left, top, right, bottom), abs=3)


def test_read_text_runs_tesseract_single_threaded_and_restores_the_environment(monkeypatch, cat):
    seen = []

    def fake_image_to_data(image, **kwargs):
        seen.append((image.size, kwargs["config"], os.environ.get("OMP_THREAD_LIMIT")))
        # what Tesseract returns for a 4x upscaled "CAT": a line row (conf -1) and one word row
        return {
            "text": ["", "CAT"],
            "conf": [-1, 90],
            "left": [0, 40],
            "top": [0, 96],
            "width": [256, 180],
            "height": [256, 64],
        }

    monkeypatch.setattr(pytesseract, "image_to_data", fake_image_to_data)
    monkeypatch.setenv("OMP_THREAD_LIMIT", "4")
    words = read_text(cat[0], upscale=4, psm=7)
    assert seen == [((256, 256), "--psm 7", "1")]
    assert os.environ["OMP_THREAD_LIMIT"] == "4"
    assert words == [OCRWord(text="CAT", confidence=0.9, box=(10, 24, 55, 40))]


# OCRReward (TRL reward callable)


def test_ocr_reward_scores_quoted_prompt_text_and_keeps_word_boxes(cat, blank):
    reward = OCRReward()
    prompts = ['a sign that says "CAT"', 'a sign that says "CAT"']
    rewards = reward(
        prompts=prompts,
        completions=[cat[0], blank],
        completion_ids=[[0], [0]],
        trainer_state=None,
        log_extra=lambda *args: None,
        log_metric=lambda *args: None,
    )
    assert reward.__name__ == "ocr"
    assert isinstance(rewards, list) and all(isinstance(value, float) for value in rewards)
    assert rewards[0] > 1.5
    assert rewards[1] == -0.6
    assert len(reward.last_words) == 2
    assert [word.text for word in reward.last_words[0]] == ["CAT"]
    # regions for Mask Propagation: the word's box on the render, nothing on the blank image
    assert reward.last_regions[0] == [reward.last_words[0][0].box] and reward.last_regions[1] == []


def test_ocr_reward_reads_targets_from_a_dataset_column(cat):
    reward = OCRReward(target_column="text", num_workers=1)
    rewards = reward(prompts=["a poster"] * 3, completions=[cat[0]] * 3, text=["CAT", ["cat"], "DOG"])
    assert rewards[0] == rewards[1] > 1.5
    assert rewards[2] < 0.0


def test_ocr_reward_missing_column_error_names_the_column_and_lists_available_ones(cat):
    reward = OCRReward(target_column="text")
    with pytest.raises(ValueError, match=r"'text'.*\['caption'\]"):
        reward(prompts=["a poster"], completions=[cat[0]], caption=["CAT"], trainer_state=None)


def test_ocr_reward_without_quoted_text_or_column_says_what_to_do(cat):
    with pytest.raises(ValueError, match="no double-quoted text.*target_column"):
        OCRReward()(prompts=["a poster"], completions=[cat[0]])


def test_ocr_reward_is_picklable_for_trl_rollout_workers():
    reward = pickle.loads(pickle.dumps(OCRReward(target_column="text", penalty=0.5)))
    assert (reward.__name__, reward.target_column, reward.penalty) == ("ocr", "text", 0.5)


# check_tesseract


def test_missing_tesseract_binary_raises_with_install_command(monkeypatch):
    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    with pytest.raises(RuntimeError, match="apt-get install -y tesseract-ocr"):
        check_tesseract()
    with pytest.raises(RuntimeError, match="apt-get install -y tesseract-ocr"):
        OCRReward()


def test_read_text_upscales_small_images_by_default(cat):
    # the default brings the shorter side to 256 px: 4x for a 64 px render, the same read as an explicit 4x
    assert read_text(cat[0]) == read_text(cat[0], upscale=4)


def test_ocr_reward_reads_cvtg_single_quoted_targets(cat):
    # CVTG-2K quotes with single quotes ("a sign that says 'CAT'"); apostrophes are not quotes
    reward = OCRReward(num_workers=1)
    assert reward(prompts=["a cat's sign that says 'CAT'"], completions=[cat[0]])[0] > 1.5


# OCR backends


@pytest.mark.parametrize("backend", ["tesseract", "ppocr"])
def test_ocr_reward_scores_a_render_with_the_same_formula_on_either_backend(backend, cat, blank):
    reward = OCRReward(backend=backend)
    rewards = reward(prompts=['a sign that says "CAT"'] * 2, completions=[cat[0], blank])
    (word,) = reward.last_words[0]
    assert word.text == "CAT" and 0.9 < word.confidence <= 1.0
    # one exact read at confidence s: Comp = Sim = s, Pen = 0
    assert rewards[0] == pytest.approx(2 * word.confidence)
    assert rewards[1] == -0.6
    assert reward.last_regions == [[word.box], []]


def test_unknown_ocr_backend_is_an_error_naming_the_backends(cat):
    with pytest.raises(ValueError, match=r"`backend` 'easyocr'.*\['tesseract', 'ppocr'\]"):
        OCRReward(backend="easyocr")
    with pytest.raises(ValueError, match=r"`backend` 'easyocr'"):
        read_text(cat[0], backend="easyocr")


def test_ocr_reward_targets_are_public_and_are_what_a_call_scores_against():
    assert OCRReward().targets(['a sign that says "OPEN NOW"', 'the word "CAT"']) == [["OPEN", "NOW"], ["CAT"]]
    by_column = OCRReward(target_column="text")
    assert by_column.targets(["a red sign", "a blue sign"], text=["CAT DOG", ["A B", "C"]]) == [
        ["CAT", "DOG"],
        ["A", "B", "C"],
    ]
    with pytest.raises(ValueError, match=r"found no column 'text' among the reward function's inputs.*\['label'\]"):
        by_column.targets(["a red sign"], label=["CAT"])
