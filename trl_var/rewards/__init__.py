"""Reward functions for text-to-image GRPO: the OCR reward of "VAR RL Done Right", read by Tesseract or PP-OCR."""

from .ocr import (
    OCR_BACKENDS,
    OCRReward,
    OCRWord,
    check_ocr,
    check_tesseract,
    extract_quoted_spans,
    extract_quoted_text,
    ocr_engine_name,
    read_text,
    score_ocr,
)


__all__ = [
    "OCR_BACKENDS",
    "OCRReward",
    "OCRWord",
    "check_ocr",
    "check_tesseract",
    "extract_quoted_spans",
    "extract_quoted_text",
    "ocr_engine_name",
    "read_text",
    "score_ocr",
]
