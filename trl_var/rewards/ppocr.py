"""
The PP-OCR backend of the OCR reward: PP-OCRv6-small via RapidOCR, the OCR family that "VAR RL Done Right" and
flow_grpo score text with.

The `rapidocr` wheel bundles the PP-OCRv6-small detection and recognition models as ONNX files, which onnxruntime runs
in-process: nothing is downloaded. `rapidocr` 3.0-3.8 bundle PP-OCRv4 instead, so the extra that installs it pins the
version (`pip install "trl-var[ppocr]"`), and the engine is given the model files by path so that it never falls back to
a download. [`read_words`] returns `(text, confidence, box)` triples; [`~trl_var.rewards.read_text`] wraps them as
[`~trl_var.rewards.OCRWord`].
"""

import importlib.metadata
import logging
import math
import os
import threading
from concurrent.futures import Future
from typing import Any

from PIL import Image


logger = logging.getLogger(__name__)

ENGINE = "PP-OCRv6-small via RapidOCR"
INSTALL_COMMAND = 'pip install "trl-var[ppocr]"'
# The version the extra pins: another one may bundle other models or process them differently.
RAPIDOCR_VERSION = "3.10.0"
DETECTION_MODEL = "PP-OCRv6_det_small.onnx"
RECOGNITION_MODEL = "PP-OCRv6_rec_small.onnx"

_engine = None
_engine_lock = threading.Lock()


def _settings(models_dir: str) -> dict[str, Any]:
    """RapidOCR's settings, and why each differs from its default."""
    return {
        # The angle classifier sometimes turns a crop of upright text by 180 degrees (NNS read as SNN).
        "Global.use_cls": False,
        # Word boxes (not only line boxes) for Mask Propagation.
        "Global.return_word_box": True,
        # Every line recognized counts, weighted by its confidence, as every word Tesseract reads does.
        "Global.text_score": 0.0,
        # A blank image is a "detection result is empty" warning per call otherwise.
        "Global.log_level": "error",
        # Detection upscales the short side to this length only: the default, 736, costs time and no accuracy on
        # renders of a few words.
        "Det.limit_side_len": 256,
        "Det.model_path": os.path.join(models_dir, DETECTION_MODEL),
        "Rec.model_path": os.path.join(models_dir, RECOGNITION_MODEL),
        # One thread per session: callers parallelize across images, and intra-op threads would compete with them.
        "EngineConfig.onnxruntime.intra_op_num_threads": 1,
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
    }


def get_engine():
    """
    The process's PP-OCR engine, built on first use and shared by all threads (an onnxruntime session runs calls from
    several threads at once). Raises an `ImportError` naming the install command when `rapidocr` or `onnxruntime` is
    missing, and a `FileNotFoundError` when the installed `rapidocr` does not bundle the PP-OCRv6-small models.
    """
    global _engine
    with _engine_lock:
        if _engine is None:
            try:
                import onnxruntime  # noqa: F401  (rapidocr imports it only when the first model loads)
                import rapidocr
                from rapidocr import RapidOCR
            except ImportError as error:
                raise ImportError(
                    f'OCR backend "ppocr" ({ENGINE}) needs the `rapidocr` and `onnxruntime` packages ({error}). '
                    f"Install them with `{INSTALL_COMMAND}`."
                ) from error
            version = importlib.metadata.version("rapidocr")
            if version != RAPIDOCR_VERSION:
                logger.warning(
                    f"rapidocr {version} is installed; the PP-OCR reward is defined with rapidocr {RAPIDOCR_VERSION} "
                    f"(`{INSTALL_COMMAND}` installs it): scores may differ."
                )
            models_dir = os.path.join(os.path.dirname(rapidocr.__file__), "models")
            for name in (DETECTION_MODEL, RECOGNITION_MODEL):
                if not os.path.isfile(os.path.join(models_dir, name)):
                    raise FileNotFoundError(
                        f"rapidocr {version} does not bundle {name} (looked in {models_dir}). Install the version "
                        f"this backend is defined with: `{INSTALL_COMMAND}` (rapidocr=={RAPIDOCR_VERSION})."
                    )
            _engine = RapidOCR(params=_settings(models_dir))
        return _engine


def _pixel_box(points, width: int, height: int) -> tuple[int, int, int, int]:
    """The `(left, top, right, bottom)` box around a quadrilateral, widened to whole pixels and clipped to the image."""
    xs = [point[0] for point in points]
    ys = [point[1] for point in points]
    return (
        max(0, math.floor(min(xs))),
        max(0, math.floor(min(ys))),
        min(width, math.ceil(max(xs))),
        min(height, math.ceil(max(ys))),
    )


def _words(output, width: int, height: int) -> list[tuple[str, float, tuple[int, int, int, int]]]:
    """The words of RapidOCR's output, line by line, each with its confidence and box."""
    from rapidocr.utils.output import RapidOCROutput

    if not isinstance(output, RapidOCROutput) or not output.txts:  # nothing detected, or nothing recognized
        return []
    # `word_results` holds each line's word pieces with their boxes: one entry per line, unless a line had none.
    aligned = len(output.word_results) == len(output.txts)
    words = []
    for line, (text, score, box) in enumerate(zip(output.txts, output.scores, output.boxes, strict=True)):
        pieces = output.word_results[line] if aligned else ()
        words += _line_words(text, score, _pixel_box(box, width, height), pieces, width, height)
    return words


def _line_words(text: str, score: float, line_box: tuple[int, int, int, int], pieces, width: int, height: int):
    """
    The words of one line: its text split on whitespace, each with the mean confidence of its characters and the
    union of the boxes of the pieces its characters are in.

    The line's text, not the pieces, says where words end: RapidOCR cuts pieces at wide gaps between characters, which
    can fall inside a word (`MNK` as `M`, `NK`). Without pieces that spell the line, every word gets the line's
    confidence and box.
    """
    words = text.split()
    pieces = [(piece.replace(" ", ""), piece_score, box) for piece, piece_score, box in pieces if box is not None]
    if "".join(piece for piece, _, _ in pieces) != "".join(words):
        return [(word, _unit(score), line_box) for word in words]
    chars = [(piece_score, _pixel_box(box, width, height)) for piece, piece_score, box in pieces for _ in piece]
    result, start = [], 0
    for word in words:
        span, start = chars[start : start + len(word)], start + len(word)
        boxes = [box for _, box in span]
        box = (
            min(b[0] for b in boxes),
            min(b[1] for b in boxes),
            max(b[2] for b in boxes),
            max(b[3] for b in boxes),
        )
        result.append((word, _unit(sum(char_score for char_score, _ in span) / len(span)), box))
    return result


def _unit(score: float) -> float:
    return min(max(float(score), 0.0), 1.0)


def read_words(image: Image.Image, timeout: float = 0) -> list[tuple[str, float, tuple[int, int, int, int]]]:
    """
    Reads the words of an image with PP-OCRv6-small.

    Args:
        image (`PIL.Image.Image`):
            The image to read.
        timeout (`float`, *optional*, defaults to `0`):
            Seconds after which the read is abandoned and `TimeoutError` raised; `0` waits forever. An onnxruntime
            call cannot be killed as a Tesseract process is: an abandoned read finishes on its own (daemon) thread
            and its result is dropped.

    Returns:
        `list[tuple[str, float, tuple[int, int, int, int]]]`: `(text, confidence in [0, 1], (left, top, right,
        bottom))` per word, top to bottom and left to right, boxes in pixels of `image` (right and bottom exclusive).
    """
    engine = get_engine()
    image = image.convert("RGB")
    if not timeout:
        return _words(engine(image), *image.size)

    result = Future()

    def run():
        try:
            result.set_result(_words(engine(image), *image.size))
        except BaseException as error:  # handed to the caller, as a direct call would raise it
            result.set_exception(error)

    threading.Thread(target=run, name="ppocr-read", daemon=True).start()
    try:
        return result.result(timeout=timeout)
    except TimeoutError as error:
        if result.done():  # the read itself raised a TimeoutError
            raise
        raise TimeoutError(f"PP-OCR did not finish within {timeout} s") from error
