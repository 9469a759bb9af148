"""Tokenizer of the embedded model: a byte-level BPE trained on the project's own text, wrapped as
a Qwen2 tokenizer with Qwen2.5-VL's special tokens and a Qwen-style chat template.

The pre-tokenizer, normaliser and decoder are Qwen2's (``Qwen2Tokenizer`` builds them from a vocab
and merge list), so the embedded tokenizer differs from the real one only in its vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import AddedToken
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

# Qwen2.5-VL's special tokens in the order of the real vocabulary (ids 151643..151656 there,
# 0..13 here). The model config points at <|image_pad|>, <|video_pad|>, <|vision_start|>,
# <|vision_end|>; generation stops on <|im_end|> or <|endoftext|>.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Format tags of the two roles. Added as single, non-special tokens: decode keeps them (the
# parser needs them in the text) and the model emits each tag as one decision.
FORMAT_TAGS = [
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "<question>",
    "</question>",
    "<rationale>",
    "</rationale>",
]

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# Qwen2.5-VL's conversation layout, written for this project: a default system turn, one
# <|im_start|>role ... <|im_end|> block per message, images and videos as one placeholder each
# (the processor expands <|image_pad|> to the image's merged-patch count).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] }}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in part -%}"
    "{{ part['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- endif -%}"
)


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 4096) -> Qwen2Tokenizer:
    """Train a byte-level BPE on ``corpus`` and wrap it as a Qwen2 tokenizer with chat template."""
    # Same normaliser / pre-tokenizer as Qwen2Tokenizer, so the learnt merges are the ones that
    # tokenizer will apply.
    bpe = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        # Every byte is in the base alphabet, so any text (a user's question) still encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(corpus), trainer=trainer)

    vocab = bpe.get_vocab()
    merges = [tuple(m) if not isinstance(m, str) else tuple(m.split(" ", 1)) for m in _merges(bpe)]
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
        errors="replace",
    )
    tok.add_special_tokens(
        {"additional_special_tokens": [t for t in QWEN_SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")]}
    )
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in FORMAT_TAGS])
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def _merges(bpe: Tokenizer) -> list:
    import json

    return json.loads(bpe.to_str())["model"]["merges"]
