"""
OCR reward of "VAR RL Done Right" (arXiv 2601.02256), read by one of two OCR engines (`backend`):

- `"tesseract"` (the default): Tesseract, one subprocess per image;
- `"ppocr"`: PP-OCRv6-small via RapidOCR, the paper's OCR family (it scores with PaddleOCR), run in-process by
  onnxruntime from the models bundled in the `rapidocr` wheel (`pip install "trl-var[ppocr]"`; see
  [`~trl_var.rewards.ppocr`]).

The module has three layers: [`score_ocr`] is the paper's formula as a pure function, [`read_text`] reads one image
with one engine call, and [`OCRReward`] is the TRL reward callable that glues them together and keeps the word boxes of
its last call for Mask Propagation.
"""

import importlib.metadata
import logging
import math
import os
import re
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import pytesseract
from PIL import Image

from ..metrics.functional import edit_similarity
from . import ppocr


logger = logging.getLogger(__name__)

OCR_BACKENDS = ("tesseract", "ppocr")
OCRBackend = Literal["tesseract", "ppocr"]


# What TRL passes to reward functions besides the dataset columns (left out of error messages listing the columns).
_TRL_REWARD_KWARGS = ("completion_ids", "trainer_state", "log_extra", "log_metric", "environments")

# A straight single quote opens a span only where no letter or digit precedes it and closes it only where none
# follows, so that apostrophes ("a car's door with 'EXIT'", "'Don't Stop'") neither open nor close a span.
_SINGLE_QUOTED_SPAN = re.compile(r"(?<!\w)'(.+?)'(?!\w)")

# Straight and curly double quotes; a span may not cross a quote of either kind.
_QUOTED_SPAN = re.compile(r"[\"\u201c\u201d]([^\"\u201c\u201d]*)[\"\u201c\u201d]")


def score_ocr(predictions: Sequence[tuple[str, float]], targets: Sequence[str], penalty: float = 0.6) -> float:
    r"""
    OCR reward of "VAR RL Done Right" (arXiv 2601.02256): completeness plus similarity minus a character-bag penalty.

    With lower-cased target words \\(g_1..g_N\\) and predicted words \\(p_1..p_M\\) read with confidences \\(s_i\\):

    - \\(LD(x, y) = 1 - \mathrm{EditDist}(x, y) / \max(|x|, |y|)\\) (character Levenshtein; the paper's
      \\(+\epsilon\\) in the denominator guards 0/0, which cannot happen with non-empty targets, and leaving it out
      keeps a read that shares nothing with a target at exactly 0),
    - \\(\mathrm{Comp} = \frac{1}{N} \sum_g \mathbb{1}[g \in P] \min_{i: p_i = g} s_i\\): a target read several times
      counts with its least confident reading,
    - \\(\mathrm{Sim} = \frac{1}{N} \sum_g LD(g, p_{i^*(g)}) \, s_{i^*(g)}\\) with \\(i^*(g) = \arg\max_i LD(g, p_i)\\);
      ties go to the most confident prediction, so the score does not depend on the reading order,
    - \\(\mathrm{Pen} = \lambda \, \mathrm{BagDist}(\mathrm{concat}_i p_i, \mathrm{concat}_k g_k) / (\sum_i |p_i| +
      \sum_k |g_k|)\\), where BagDist is the size of the symmetric difference of the two character multisets,

    and the reward is \\(\mathrm{Comp} + \mathrm{Sim} - \mathrm{Pen} \in [-\lambda, 2]\\): 2 for a perfect read at
    confidence 1, \\(-\lambda\\) when nothing is read.

    Args:
        predictions (`Sequence[tuple[str, float]]`):
            The words read in the image, each with its confidence in [0, 1]. May be empty.
        targets (`Sequence[str]`):
            The ground-truth words. Must be non-empty, with non-empty words.
        penalty (`float`, *optional*, defaults to `0.6`):
            The weight \\(\lambda\\) of the character-bag penalty.

    Returns:
        `float`: The reward, in `[-penalty, 2]`.

    Example:

    ```python
    >>> from trl_var.rewards import score_ocr

    >>> score_ocr([("OPEN", 1.0), ("24H", 1.0)], ["open", "24h"])
    2.0
    >>> score_ocr([], ["open", "24h"])
    -0.6
    ```
    """
    if not targets or any(not word for word in targets):
        raise ValueError(f"`targets` must be a non-empty list of non-empty words, got {targets!r}.")
    if any(not 0.0 <= confidence <= 1.0 for _, confidence in predictions):
        raise ValueError(f"Every confidence in `predictions` must lie in [0, 1], got {predictions!r}.")

    targets = [word.lower() for word in targets]
    predictions = [(word.lower(), confidence) for word, confidence in predictions]

    completeness = 0.0
    similarity = 0.0
    for target in targets:
        exact = [confidence for word, confidence in predictions if word == target]
        if exact:
            completeness += min(exact)
        if predictions:
            # max over (LD, confidence) picks the argmax of LD and breaks its ties by confidence
            best_ld, best_confidence = max(
                (edit_similarity(target, word), confidence) for word, confidence in predictions
            )
            similarity += best_ld * best_confidence
    completeness /= len(targets)
    similarity /= len(targets)

    predicted_chars = Counter("".join(word for word, _ in predictions))
    target_chars = Counter("".join(targets))
    bag_distance = (predicted_chars - target_chars).total() + (target_chars - predicted_chars).total()
    # ratio first, so that "nothing read" gives exactly -penalty
    penalty_term = penalty * (bag_distance / (predicted_chars.total() + target_chars.total()))

    return completeness + similarity - penalty_term


class OCROutputError(ValueError):
    """OCR output that is no table of words (e.g. non-UTF-8 bytes, junk without a header, a NaN confidence): the
    image is treated as not read, as after a timeout, instead of failing the run."""


@dataclass(frozen=True)
class OCRWord:
    """
    A word read by OCR.

    Args:
        text (`str`):
            The word as read (case preserved).
        confidence (`float`):
            The engine's confidence in [0, 1] (Tesseract's percentage divided by 100; PP-OCR's recognition score).
        box (`tuple[int, int, int, int]`):
            `(left, top, right, bottom)` in pixels of the original image (before any OCR upscale), right and bottom
            exclusive as in PIL: `image.crop(word.box)` is the word.
    """

    text: str
    confidence: float
    box: tuple[int, int, int, int]


_omp_lock = threading.Lock()
_omp_users = 0
_omp_previous: str | None = None


@contextmanager
def _single_threaded_tesseract() -> Iterator[None]:
    """
    Sets `OMP_THREAD_LIMIT=1` in `os.environ` while at least one caller is inside, then restores it.

    pytesseract starts tesseract with `env=os.environ` and offers no other hook. We parallelize across images, and
    OpenMP threads inside each tesseract only compete with the other calls (BENCHMARKS.md, "OCR reward"). Reference
    counted, so that overlapping calls from several threads neither undo each other nor leak the setting.
    """
    global _omp_users, _omp_previous
    with _omp_lock:
        if _omp_users == 0:
            _omp_previous = os.environ.get("OMP_THREAD_LIMIT")
            os.environ["OMP_THREAD_LIMIT"] = "1"
        _omp_users += 1
    try:
        yield
    finally:
        with _omp_lock:
            _omp_users -= 1
            if _omp_users == 0:
                if _omp_previous is None:
                    del os.environ["OMP_THREAD_LIMIT"]
                else:
                    os.environ["OMP_THREAD_LIMIT"] = _omp_previous


def read_text(
    image: Image.Image,
    *,
    backend: OCRBackend = "tesseract",
    upscale: int | None = None,
    psm: int = 7,
    lang: str = "eng",
    timeout: float = 0,
) -> list[OCRWord]:
    """
    Reads the words of an image with one OCR engine call.

    Args:
        image (`PIL.Image.Image`):
            The image to read.
        backend (`str`, *optional*, defaults to `"tesseract"`):
            The OCR engine: `"tesseract"`, or `"ppocr"` (PP-OCRv6-small via RapidOCR, `pip install "trl-var[ppocr]"`).
        upscale (`int`, *optional*):
            Tesseract only: bicubic upscaling factor applied before OCR, which Tesseract needs on small renders.
            Default: enough to bring the shorter side to 256 px (4 for 64 px images, 1 from 256 px up, so a 1024 px
            image is not read at 4096 px). PP-OCR scales its detection input itself.
        psm (`int`, *optional*, defaults to `7`):
            Tesseract only: page segmentation mode. 7 treats the image as a single text line, the right prior for
            short rendered words; use 11 (sparse text) for scattered text regions. PP-OCR detects text lines itself.
        lang (`str`, *optional*, defaults to `"eng"`):
            Tesseract only: language(s), e.g. `"eng+deu"`. PP-OCRv6's recognizer reads Latin and Chinese script.
        timeout (`float`, *optional*, defaults to `0`):
            Seconds after which the read is given up and `TimeoutError` raised; `0` waits forever. A Tesseract process
            is killed; a PP-OCR read, which runs in-process, is abandoned to finish on its own thread.

    Returns:
        `list[OCRWord]`: The words in reading order, with boxes in pixels of `image`.
    """
    if backend == "ppocr":
        return [OCRWord(text, confidence, box) for text, confidence, box in ppocr.read_words(image, timeout=timeout)]
    _check_backend_name(backend)
    image = image.convert("RGB")
    width, height = image.size
    if upscale is None:
        upscale = max(1, round(256 / min(width, height)))
    if upscale != 1:
        image = image.resize((width * upscale, height * upscale), Image.Resampling.BICUBIC)
    with _single_threaded_tesseract():
        try:
            data = pytesseract.image_to_data(
                image, lang=lang, config=f"--psm {psm}", output_type=pytesseract.Output.DICT, timeout=timeout
            )
        except RuntimeError as error:  # pytesseract's way of saying it killed the process
            if "timeout" not in str(error).lower():
                raise
            raise TimeoutError(f"Tesseract did not finish within {timeout} s") from error
        except UnicodeDecodeError as error:
            raise OCROutputError(f"Tesseract's output is not UTF-8 text: {error.object[:80]!r}") from error

    words = []
    try:
        rows = list(zip(data["text"], data["conf"], data["left"], data["top"], data["width"], data["height"]))
    except (KeyError, TypeError) as error:
        raise OCROutputError(
            f"Tesseract's output is not a table of words: no column {error} among {sorted(data)[:10]}"
        ) from error
    for text, conf, left, top, box_width, box_height in rows:
        text = str(text).strip()
        try:
            conf = float(conf)
        except (TypeError, ValueError):
            conf = math.nan
        if math.isnan(conf):
            raise OCROutputError(f"Tesseract read {text!r} with the confidence {conf!r}, which is not a number")
        if conf < 0 or not text:  # -1 marks the page/block/line rows, which are not words
            continue
        # Floor/ceil so that the box in original pixels still covers the whole word.
        box = (
            max(0, math.floor(left / upscale)),
            max(0, math.floor(top / upscale)),
            min(width, math.ceil((left + box_width) / upscale)),
            min(height, math.ceil((top + box_height) / upscale)),
        )
        words.append(OCRWord(text=text, confidence=min(conf / 100.0, 1.0), box=box))
    return words


def extract_quoted_text(prompt: str) -> list[str]:
    """
    Returns the double-quoted spans of a prompt, straight (`"`) or curly (`“ ”`), in order, without empty spans.

    Example:

    ```python
    >>> from trl_var.rewards import extract_quoted_text

    >>> extract_quoted_text('a sign that says "OPEN" and “24H”')
    ['OPEN', '24H']
    ```
    """
    return [span.strip() for span in _QUOTED_SPAN.findall(prompt) if span.strip()]


def extract_quoted_spans(prompt: str) -> list[str]:
    """
    The texts a prompt asks to render: its double-quoted spans (see [`~trl_var.rewards.extract_quoted_text`]) or, when
    it has none, its single-quoted spans, which is how CVTG-2K quotes (`a sign that says 'READ'`).

    A single quote between two letters is an apostrophe, not a quote: `a car's door with 'Exit Here'` gives
    `['Exit Here']` and `'Don't Stop'` gives `["Don't Stop"]`. (TextCrafter's evaluation script uses the plain regex
    `'(.*?)'`, which splits such prompts at the apostrophe.)

    Example:

    ```python
    >>> from trl_var.rewards import extract_quoted_spans

    >>> extract_quoted_spans("A bookstore with a sign that says 'READ'. A cup with the word 'Good Morning'.")
    ['READ', 'Good Morning']
    >>> extract_quoted_spans('a sign that says "OPEN"')
    ['OPEN']
    ```
    """
    spans = extract_quoted_text(prompt)
    if spans:
        return spans
    return [span.strip() for span in _SINGLE_QUOTED_SPAN.findall(prompt) if span.strip()]


def check_tesseract(timeout: float = 30) -> None:
    """
    Raises a `RuntimeError` with the install command if the `tesseract` binary cannot be found, or saying so if
    `tesseract --version` does not answer within `timeout` seconds (a hung binary would otherwise hang the start).
    """
    command = [pytesseract.pytesseract.tesseract_cmd, "--version"]
    try:
        subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(
            f"`{' '.join(command)}` did not answer within {timeout} s: the tesseract binary hangs. Check it by "
            f"running that command, or point `pytesseract.pytesseract.tesseract_cmd` to a working one."
        ) from error
    except OSError:
        pass  # a missing binary: pytesseract's check below says so with the install command
    try:
        pytesseract.get_tesseract_version()
    except pytesseract.TesseractNotFoundError as error:
        raise RuntimeError(
            f"The OCR reward needs the `tesseract` binary, which was not found at "
            f"{pytesseract.pytesseract.tesseract_cmd!r}. Install it with `apt-get install -y tesseract-ocr` "
            f"(Debian/Ubuntu) or `conda install -c conda-forge tesseract`, or point "
            f"`pytesseract.pytesseract.tesseract_cmd` to it."
        ) from error


def check_ocr(backend: OCRBackend = "tesseract") -> None:
    """
    Raises an error naming the install command if the engine of `backend` is not installed: a `RuntimeError` for a
    missing `tesseract` binary, an `ImportError` for missing `rapidocr` / `onnxruntime` packages (`"ppocr"`).
    """
    if backend == "ppocr":
        ppocr.get_engine()
    else:
        _check_backend_name(backend)
        check_tesseract()


def ocr_engine_name(backend: OCRBackend = "tesseract") -> str:
    """
    The engine that `backend` reads with, with its version, as evaluation results and model cards name it: e.g.
    `"Tesseract 5.3.0"` or `"PP-OCRv6-small via RapidOCR 3.10.0"`.
    """
    if backend == "ppocr":
        return f"{ppocr.ENGINE} {importlib.metadata.version('rapidocr')}"
    _check_backend_name(backend)
    return f"Tesseract {pytesseract.get_tesseract_version()}"


def _check_backend_name(backend: str) -> None:
    if backend not in OCR_BACKENDS:
        raise ValueError(f"Unknown OCR `backend` {backend!r}: use one of {list(OCR_BACKENDS)}.")


class OCRReward:
    """
    OCR reward of "VAR RL Done Right" (arXiv 2601.02256) as a TRL reward function: reads each generated image with
    Tesseract or PP-OCR (`backend`) and scores it against the target words with [`score_ocr`].

    Args:
        target_column (`str` or `None`, *optional*, defaults to `None`):
            Dataset column holding the target text of each row, as a string or a list of strings (split on whitespace
            into words). If `None`, the targets are the double-quoted spans of the prompt (CVTG-2K style, e.g.
            `'a sign that says "OPEN"'`).
        penalty (`float`, *optional*, defaults to `0.6`):
            Weight of the character-bag penalty in [`score_ocr`].
        upscale (`int`, *optional*):
            Tesseract only: bicubic upscaling factor before OCR; default: by image size, see [`read_text`].
        psm (`int`, *optional*, defaults to `7`):
            Tesseract only: page segmentation mode, see [`read_text`].
        num_workers (`int` or `None`, *optional*, defaults to `None`):
            Number of images read at once, by threads: each drives a tesseract process, or runs the shared
            in-process PP-OCR session with one onnxruntime thread. Defaults to `os.cpu_count()`.
        timeout (`float`, *optional*, defaults to `30`):
            Seconds one image may take; a read that hangs is given up (a Tesseract process is killed, a PP-OCR read
            abandoned to its thread), its image scores `None` (TRL then leaves it out) and a warning is logged, so one
            bad image never stalls a run. `0` waits forever.
        backend (`str`, *optional*, defaults to `"tesseract"`):
            The OCR engine: `"tesseract"`, or `"ppocr"` for PP-OCRv6-small via RapidOCR (the paper's OCR family;
            `pip install "trl-var[ppocr]"`). The score is the same formula for both.

    Attributes:
        last_words (`list[list[OCRWord]]`):
            Word boxes of the last call, in image pixels, for mask propagation: one list per completion.
        last_regions (`list[list[tuple[int, int, int, int]]]`):
            The boxes of `last_words` that contain a letter or digit: what `VARGRPOTrainer` rasterizes for Mask
            Propagation.

    Example:

    ```python
    >>> from PIL import Image, ImageDraw, ImageFont
    >>> from trl_var.rewards import OCRReward

    >>> image = Image.new("RGB", (64, 64), "white")
    >>> font = ImageFont.truetype("DejaVuSans-Bold.ttf", 22)
    >>> ImageDraw.Draw(image).text((32, 32), "CAT", fill="black", font=font, anchor="mm")
    >>> reward = OCRReward()
    >>> reward(prompts=['a sign that says "CAT"'], completions=[image])
    [1.92]
    >>> reward.last_words
    [[OCRWord(text='CAT', confidence=0.96, box=(10, 24, 55, 40))]]
    ```
    """

    def __init__(
        self,
        target_column: str | None = None,
        penalty: float = 0.6,
        upscale: int | None = None,
        psm: int = 7,
        num_workers: int | None = None,
        timeout: float = 30,
        backend: OCRBackend = "tesseract",
    ):
        check_ocr(backend)  # fail when the trainer is built, not at the first reward call
        self.__name__ = "ocr"  # TRL names the reward in its logs after `__name__`
        self.backend = backend
        self.target_column = target_column
        self.penalty = penalty
        self.upscale = upscale
        self.psm = psm
        self.num_workers = num_workers or os.cpu_count() or 1
        self.timeout = timeout
        self.last_words: list[list[OCRWord]] = []

    @property
    def last_regions(self) -> list[list[tuple[int, int, int, int]]]:
        """
        The reward-relevant regions of the last call's images, for Mask Propagation: the boxes of the words read,
        in image pixels `(left, top, right, bottom)`. Words without a letter or digit are left out: on a blank image
        Tesseract reports a "_" spanning the whole image, which is no region of text.
        """
        return [[word.box for word in words if any(char.isalnum() for char in word.text)] for words in self.last_words]

    def targets(self, prompts: Sequence[Any], **columns: Any) -> list[list[str]]:
        """
        The target words of each prompt, as a call with these `prompts` and dataset `columns` scores them against:
        the `target_column` split into words, or the prompt's double-quoted spans. A script checks its dataset with
        it before sampling anything.

        Raises:
            `ValueError`: for a missing `target_column`, or a prompt without quoted text, naming it.
        """
        if self.target_column is not None:
            if self.target_column not in columns:
                available = sorted(key for key in columns if key not in _TRL_REWARD_KWARGS)
                raise ValueError(
                    f"OCRReward(target_column={self.target_column!r}) found no column {self.target_column!r} among "
                    f"the reward function's inputs; available columns: {available}."
                )
            rows = columns[self.target_column]
            return [
                (row.split() if isinstance(row, str) else [w for text in row for w in text.split()]) for row in rows
            ]

        targets = []
        for prompt in prompts:
            words = [word for span in extract_quoted_spans(prompt) for word in span.split()]
            if not words:
                raise ValueError(
                    f"OCRReward found no double-quoted text in the prompt {prompt!r}. Quote the text to render in "
                    f'the prompt (e.g. `a sign that says "OPEN"`) or pass `target_column` naming a dataset column '
                    f"with the target text."
                )
            targets.append(words)
        return targets

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Image.Image], **kwargs) -> list[float | None]:
        targets = self.targets(prompts, **kwargs)
        # Threads, not processes: each tesseract call is already its own subprocess, and onnxruntime runs PP-OCR
        # without the GIL, so threads match a process pool without forking a torch process or pickling images
        # (BENCHMARKS.md, "OCR reward").
        with ThreadPoolExecutor(max_workers=self.num_workers) as pool:
            reads = list(pool.map(self._read, completions))
        if reads and all(words is None for words in reads):
            logger.warning(
                f"OCRReward: NONE of the {len(reads)} images of this call was read (every OCR read timed out or "
                f"failed, see the warnings above): all its rewards are None, so these rollouts teach nothing."
            )
        self.last_words = [words or [] for words in reads]
        return [
            None
            if words is None
            else score_ocr([(word.text, word.confidence) for word in words], target_words, penalty=self.penalty)
            for words, target_words in zip(reads, targets, strict=True)
        ]

    def _read(self, image: Image.Image) -> list[OCRWord] | None:
        try:
            return read_text(image, backend=self.backend, upscale=self.upscale, psm=self.psm, timeout=self.timeout)
        except (TimeoutError, OCROutputError) as error:
            logger.warning(f"OCRReward: {error}; the image scores None (left out of the reward).")
            return None
