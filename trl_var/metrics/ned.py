"""
NED of CVTG-2K (TextCrafter, arXiv 2503.23461) as an `evaluate` metric, loadable offline by path:

    import evaluate
    from trl_var.metrics import NED

    ned = evaluate.load(NED)
"""

import datasets
import evaluate

# Absolute import: `evaluate.load` copies this file to its module cache before importing it.
from trl_var.metrics.functional import score_words


_CITATION = """\
@article{du2025textcrafter,
  title={TextCrafter: Accurately Rendering Multiple Texts in Complex Visual Scenes},
  author={Du, Nikai and Chen, Zhennan and Chen, Zhizhou and Gao, Shan and Chen, Xi and Jiang, Zhengkai and Yang, Jian
          and Tai, Ying},
  journal={arXiv preprint arXiv:2503.23461},
  year={2025}
}
"""

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
        references = datasets.Sequence(datasets.Value("string"))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("string"), "references": references}),
                datasets.Features(
                    {"predictions": datasets.Sequence(datasets.Value("string")), "references": references}
                ),
            ],
            reference_urls=["https://arxiv.org/abs/2503.23461", "https://huggingface.co/datasets/dnkdnk/CVTG-2K"],
        )

    def _compute(self, predictions: list, references: list[list[str]]) -> dict:
        scores = [
            score_words(prediction, targets) for prediction, targets in zip(predictions, references, strict=True)
        ]
        num_words = sum(score.num_words for score in scores)
        return {"ned": sum(sum(score.similarities) for score in scores) / num_words, "num_words": num_words}
