r"""
The metrics of CVTG-2K (TextCrafter, arXiv 2503.23461), on which "VAR RL Done Right" (arXiv 2601.02256, Table 1)
reports Word Accuracy, NED and CLIPScore, as pure functions. The `evaluate` modules next to this file call them.

How the benchmark computes them (TextCrafter's evaluation script `unified_metrics_eval.py`, PaddleOCR and CLIP
ViT-L/14; the papers only name the metrics), for one image with target words \\(g_1..g_N\\) and OCR-read words \\(P\\):

- words: the quoted spans of the prompt and the OCR text are lower-cased and split on whitespace; punctuation is kept
  (`'Team A vs. Team B'` has the target words `team`, `a`, `vs.`, `team`, `b`), so matching is case-insensitive and
  punctuation-sensitive. An image where nothing is read counts as one empty read.
- Word Accuracy: a target word is correct if it is among the words read, \\(g_k \in P\\) (no one-to-one matching: two
  identical targets are both matched by one read). The benchmark's score pools words, not images:
  \\(\sum_{images} \#\{k : g_k \in P\} / \sum_{images} N\\).
- NED (named after the normalized edit distance, but a similarity, higher is better): each target word is paired with
  the read word that `difflib.get_close_matches(g, P, n=1, cutoff=0)` returns (the highest `SequenceMatcher` ratio,
  ties to the lexicographically largest word) and scored \\(1 - \mathrm{Lev}(g, p) / \max(|g|, |p|)\\) (character
  Levenshtein). The benchmark's score is the mean over all target words of all images.
- The overall row pools every word (Word Accuracy, NED) and every image (CLIPScore) of all region counts: it is not the
  mean of the per-region rows.

Two choices of ours: TextCrafter's script adds `1e-5` to the NED denominator, which changes no score by more than
`1e-5` and is left out so that a perfect read scores exactly 1 and no read exactly 0; and the pairing is by `difflib` as
in the benchmark, although the read with the smallest edit distance would be the natural choice (for the target `abc`
and the reads `abd`, `xabcx`, difflib pairs `xabcx`: 0.6, not `abd`: 0.67).

CLIPScore (Hessel et al., 2021, arXiv 2104.08718) is \\(w \cdot \max(\cos(E_I, E_T), 0)\\) with \\(w = 2.5\\) and the
text `"A photo depicts " + prompt` (truncated to CLIP's 77 tokens), with CLIP ViT-L/14, as the benchmark computes it.
The weight is what puts the papers' numbers near 0.8: their 0.74-0.82 are cosines of 0.30-0.33 times 2.5, typical of
ViT-L/14 for matching image-text pairs; the raw cosine (\\(w = 1\\)) would read about 0.3.
"""

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


CLIP_SCORE_WEIGHT = 2.5
CLIP_SCORE_PREFIX = "A photo depicts "


def split_words(text: str | Sequence[str]) -> list[str]:
    """
    The lower-cased, whitespace-separated words of a text or of a list of texts (an OCR read, the target spans).

    Example:

    ```python
    >>> from trl_var.metrics import split_words

    >>> split_words(["Team A vs. Team B", "OPEN"])
    ['team', 'a', 'vs.', 'team', 'b', 'open']
    ```
    """
    texts = [text] if isinstance(text, str) else text
    return [word for piece in texts for word in piece.lower().split()]


def _edit_distance(a: str, b: str) -> int:
    """Character Levenshtein distance (insertions, deletions and substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def edit_similarity(target: str, word: str) -> float:
    r"""
    \\(1 - \mathrm{Lev}(target, word) / \max(|target|, |word|)\\), in [0, 1]: 1 for equal words, 0 for words that share
    nothing (or for a non-empty target and an empty read); 1 when both are empty. NED and the OCR reward
    ([`~trl_var.rewards.score_ocr`]) both use it.
    """
    longest = max(len(target), len(word))
    return 1.0 - _edit_distance(target, word) / longest if longest else 1.0


@dataclass(frozen=True)
class WordScores:
    """
    What one image contributes to Word Accuracy and NED.

    Args:
        num_words (`int`):
            Number of target words \\(N\\).
        num_correct (`int`):
            Number of target words found among the words read.
        similarities (`tuple[float, ...]`):
            [`edit_similarity`] of each target word to the read word it is paired with, in target order.
    """

    num_words: int
    num_correct: int
    similarities: tuple[float, ...]

    @property
    def word_accuracy(self) -> float:
        """This image's word accuracy, `num_correct / num_words`."""
        return self.num_correct / self.num_words

    @property
    def ned(self) -> float:
        """This image's NED, the mean of `similarities`."""
        return sum(self.similarities) / self.num_words


def score_words(prediction: str | Sequence[str], targets: str | Sequence[str]) -> WordScores:
    """
    Scores one image's OCR read against its target texts, as CVTG-2K does (see the module docstring).

    Args:
        prediction (`str` or `Sequence[str]`):
            The text read in the image, or the list of words (or lines) read. May be empty.
        targets (`str` or `Sequence[str]`):
            The texts the image should show, e.g. the quoted spans of its prompt. Must contain at least one word.

    Returns:
        [`WordScores`]: The target word count, the number found among the read words and each target word's
        similarity to its paired read.

    Example:

    ```python
    >>> from trl_var.metrics import score_words

    >>> scores = score_words("OPEN 24 HOUR", ["Open", "24 Hours"])
    >>> scores.num_words, scores.num_correct, scores.similarities
    (3, 2, (1.0, 1.0, 0.8))
    ```
    """
    target_words = split_words(targets)
    if not target_words:
        raise ValueError(f"`targets` has no words: {targets!r}.")
    read_words = split_words(prediction) or [""]
    read_set = set(read_words)
    num_correct = sum(word in read_set for word in target_words)
    similarities = tuple(
        edit_similarity(word, difflib.get_close_matches(word, read_words, n=1, cutoff=0)[0]) for word in target_words
    )
    return WordScores(num_words=len(target_words), num_correct=num_correct, similarities=similarities)


def word_accuracy(predictions: Sequence[str | Sequence[str]], references: Sequence[str | Sequence[str]]) -> float:
    r"""
    CVTG-2K's Word Accuracy: the fraction of all target words, pooled over images, found among the words read in their
    image, \\(\sum_i \#\{k : g_{ik} \in P_i\} / \sum_i N_i\\).

    Args:
        predictions (`Sequence[str | Sequence[str]]`): Per image, the OCR text or list of words read.
        references (`Sequence[str | Sequence[str]]`): Per image, the target texts.

    Returns:
        `float`: In [0, 1].
    """
    scores = _score_all(predictions, references)
    return sum(score.num_correct for score in scores) / sum(score.num_words for score in scores)


def ned(predictions: Sequence[str | Sequence[str]], references: Sequence[str | Sequence[str]]) -> float:
    r"""
    CVTG-2K's NED: the mean, over all target words of all images, of \\(1 - \mathrm{Lev}(g, p) / \max(|g|, |p|)\\)
    with \\(p\\) the read word paired with \\(g\\) (see the module docstring). Higher is better.

    Args:
        predictions (`Sequence[str | Sequence[str]]`): Per image, the OCR text or list of words read.
        references (`Sequence[str | Sequence[str]]`): Per image, the target texts.

    Returns:
        `float`: In [0, 1].
    """
    scores = _score_all(predictions, references)
    return sum(sum(score.similarities) for score in scores) / sum(score.num_words for score in scores)


def _score_all(
    predictions: Sequence[str | Sequence[str]], references: Sequence[str | Sequence[str]]
) -> list[WordScores]:
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions for {len(references)} references.")
    if not predictions:
        raise ValueError("No predictions to score.")
    return [score_words(prediction, targets) for prediction, targets in zip(predictions, references, strict=True)]


def clip_score_from_embeddings(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, weight: float = CLIP_SCORE_WEIGHT
) -> torch.Tensor:
    r"""
    CLIPScore (Hessel et al., 2021) of paired embeddings: \\(w \cdot \max(\cos(E_I, E_T), 0)\\), row by row.

    Args:
        image_embeds (`torch.Tensor` of shape `(N, D)`): CLIP image embeddings (normalized or not).
        text_embeds (`torch.Tensor` of shape `(N, D)`): CLIP text embeddings of the paired texts.
        weight (`float`, *optional*, defaults to 2.5): \\(w\\); 2.5 is the convention of CLIPScore and CVTG-2K.

    Returns:
        `torch.Tensor` of shape `(N,)`: Scores in `[0, weight]`.
    """
    cosine = F.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1)
    return weight * cosine.clamp(min=0)


TEXTCRAFTER_CITATION = """\
@article{du2025textcrafter,
  title={TextCrafter: Accurately Rendering Multiple Texts in Complex Visual Scenes},
  author={Du, Nikai and Chen, Zhennan and Chen, Zhizhou and Gao, Shan and Chen, Xi and Jiang, Zhengkai and Yang, Jian
          and Tai, Ying},
  journal={arXiv preprint arXiv:2503.23461},
  year={2025}
}
"""


def ocr_metric_info(description: str, inputs_description: str):
    """The `evaluate.MetricInfo` shared by the OCR metrics: one OCR text (or word list) and target texts per image."""
    import datasets
    import evaluate

    references = datasets.Sequence(datasets.Value("string"))
    return evaluate.MetricInfo(
        description=description,
        citation=TEXTCRAFTER_CITATION,
        inputs_description=inputs_description,
        features=[
            datasets.Features({"predictions": datasets.Value("string"), "references": references}),
            datasets.Features({"predictions": datasets.Sequence(datasets.Value("string")), "references": references}),
        ],
        reference_urls=["https://arxiv.org/abs/2503.23461", "https://huggingface.co/datasets/dnkdnk/CVTG-2K"],
    )
