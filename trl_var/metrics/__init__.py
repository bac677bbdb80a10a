"""
Metrics of text-to-image text rendering: CVTG-2K's Word Accuracy and NED over OCR reads, and CLIPScore.

Each metric is an `evaluate` module of its own, loaded offline by path (`evaluate.load("cer")` and friends fetch their
scripts from the Hub):

```python
>>> import evaluate
>>> from trl_var.metrics import NED, WORD_ACCURACY

>>> evaluate.load(WORD_ACCURACY).compute(predictions=["OPEN 24 HOUR"], references=[["Open", "24 Hours"]])
{'word_accuracy': 0.6666666666666666, 'num_words': 3, 'num_correct': 2}
```

The math is in plain functions that the modules call, in `trl_var.metrics.functional` ([`score_words`],
`functional.word_accuracy`, `functional.ned`, [`clip_score_from_embeddings`]), whose docstring gives the definitions and
their source. (The corpus-level functions are not re-exported here: their names are those of the module files.)
"""

import os

from .functional import (
    CLIP_SCORE_PREFIX,
    CLIP_SCORE_WEIGHT,
    WordScores,
    clip_score_from_embeddings,
    edit_similarity,
    score_words,
    split_words,
)


_HERE = os.path.dirname(os.path.abspath(__file__))

WORD_ACCURACY = os.path.join(_HERE, "word_accuracy.py")
"""Path of the Word Accuracy `evaluate` module: `evaluate.load(WORD_ACCURACY)`."""
NED = os.path.join(_HERE, "ned.py")
"""Path of the NED `evaluate` module: `evaluate.load(NED)`."""
CLIP_SCORE = os.path.join(_HERE, "clip_score.py")
"""Path of the CLIPScore `evaluate` module: `evaluate.load(CLIP_SCORE)`."""

__all__ = [
    "CLIP_SCORE",
    "CLIP_SCORE_PREFIX",
    "CLIP_SCORE_WEIGHT",
    "NED",
    "WORD_ACCURACY",
    "WordScores",
    "clip_score_from_embeddings",
    "edit_similarity",
    "score_words",
    "split_words",
]
