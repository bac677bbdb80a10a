from .text_render import DEFAULT_ALPHABET, DEFAULT_TEMPLATES, make_text_render_dataset
