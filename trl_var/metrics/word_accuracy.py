"""
Word Accuracy of CVTG-2K (TextCrafter, arXiv 2503.23461) as an `evaluate` metric, loadable offline by path:

    import evaluate
    from trl_var.metrics import WORD_ACCURACY

    word_accuracy = evaluate.load(WORD_ACCURACY)
"""

import evaluate

# Absolute import: `evaluate.load` copies this file to its module cache before importing it.
from trl_var.metrics.functional import ocr_metric_info, score_words


_DESCRIPTION = """\
Word Accuracy of the CVTG-2K text-rendering benchmark: the fraction of the target words (the quoted texts of the
prompts, lower-cased and split on whitespace) found among the words OCR reads in the generated images (lower-cased,
punctuation kept), pooled over all words of all images. See `trl_var.metrics.functional` for the exact definition.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]` or `list[list[str]]`): per image, the OCR text, or the list of words read.
    references (`list[list[str]]`): per image, the target texts (e.g. the quoted spans of its prompt).

Returns:
    word_accuracy (`float`): correct target words / target words, in [0, 1].
    num_words (`int`): number of target words.
    num_correct (`int`): number of target words found in their image.

Example:

    >>> import evaluate
    >>> from trl_var.metrics import WORD_ACCURACY
    >>> metric = evaluate.load(WORD_ACCURACY)
    >>> metric.compute(predictions=["OPEN 24 HOUR", "sale"], references=[["Open", "24 Hours"], ["SALE"]])
    {'word_accuracy': 0.75, 'num_words': 4, 'num_correct': 3}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class WordAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return ocr_metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions: list, references: list[list[str]]) -> dict:
        scores = [
            score_words(prediction, targets) for prediction, targets in zip(predictions, references, strict=True)
        ]
        num_words = sum(score.num_words for score in scores)
        num_correct = sum(score.num_correct for score in scores)
        return {"word_accuracy": num_correct / num_words, "num_words": num_words, "num_correct": num_correct}
