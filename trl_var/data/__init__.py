from .cvtg import (
    CVTG2K_REGION_COUNTS,
    CVTG2K_REPO_ID,
    CVTG2K_SUBSETS,
    extract_quoted_spans,
    load_cvtg2k,
    load_prompt_dataset,
)
from .text_render import (
    DEFAULT_ALPHABET,
    DEFAULT_TEMPLATES,
    HELDOUT_WORDS,
    make_heldout_dataset,
    make_text_render_dataset,
    make_word_prompts,
    validation_words,
)
