"""A character-level text tokenizer for tiny models, built locally (no Hub download) and saved with the model."""

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


SPECIAL_TOKENS = ("<pad>", "<unk>", "<eos>")


def build_char_tokenizer(characters: str = string.printable) -> PreTrainedTokenizerFast:
    """
    One token per character of `characters` (printable ASCII by default) plus `<pad>`, `<unk>` and `<eos>`.

    Prompts of the text-rendering task are short and their quoted words must be spelled out to the model, which a
    character vocabulary does directly. Left padding, as TRL pads prompts. Save it next to the model with
    `save_pretrained`; `AutoTokenizer.from_pretrained` loads it back.
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in dict.fromkeys(characters.replace("\n", "").replace("\r", "").replace("\x0b", "").replace("\x0c", "")):
        vocab[char] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<eos>",
        padding_side="left",
        truncation_side="left",
        model_max_length=512,
    )
