"""
NED of CVTG-2K (TextCrafter, arXiv 2503.23461) as an `evaluate` metric, loadable offline by path:

    import evaluate
    from trl_var.metrics import NED

    ned = evaluate.load(NED)
"""

import evaluate

# Absolute import: `evaluate.load` copies this file to its module cache before importing it.
from trl_var.metrics.functional import ocr_metric_info, score_words


_DESCRIPTION = """\
NED of the CVTG-2K text-rendering benchmark, a normalized edit *similarity* (higher is better): every target word
(the quoted texts of the prompts, lower-cased, split on whitespace) is paired with the OCR-read word of its image that
`difflib.get_close_matches` ranks first and scored 1 - Levenshtein / max length; the score is the mean over all target
words of all images. See `trl_var.metrics.functional` for the exact definition.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]` or `list[list[str]]`): per image, the OCR text, or the list of words read.
    references (`list[list[str]]`): per image, the target texts (e.g. the quoted spans of its prompt).

Returns:
    ned (`float`): mean similarity of the target words to their paired reads, in [0, 1].
    num_words (`int`): number of target words.

Example:

    >>> import evaluate
    >>> from trl_var.metrics import NED
    >>> metric = evaluate.load(NED)
    >>> metric.compute(predictions=["OPEN 24 HOUR", "sale"], references=[["Open", "24 Hours"], ["SALE"]])
    {'ned': 0.95, 'num_words': 4}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class NED(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return ocr_metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions: list, references: list[list[str]]) -> dict:
        scores = [
            score_words(prediction, targets) for prediction, targets in zip(predictions, references, strict=True)
        ]
        num_words = sum(score.num_words for score in scores)
        return {"ned": sum(sum(score.similarities) for score in scores) / num_words, "num_words": num_words}
