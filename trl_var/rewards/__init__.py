"""Reward functions for text-to-image GRPO: the OCR reward of "VAR RL Done Right" (Tesseract)."""

from .ocr import (
    OCRReward,
    OCRWord,
    check_tesseract,
    extract_quoted_spans,
    extract_quoted_text,
    read_text,
    score_ocr,
)


__all__ = [
    "OCRReward",
    "OCRWord",
    "check_tesseract",
    "extract_quoted_spans",
    "extract_quoted_text",
    "read_text",
    "score_ocr",
]
