"""The embedded model's shape: a tiny ``Qwen2_5_VLConfig`` and a Qwen2.5-VL processor with a
small image budget. Every component is the real Qwen2.5-VL one; only the sizes shrink.
"""

from __future__ import annotations

from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    PreTrainedTokenizerBase,
)

# Patch 42 x merge 2: a 224x224 synthetic image becomes 504x504, i.e. 12x12 patches and 36 merged
# image tokens (enough to tell a pie from a food chain, few enough for CPU rollouts). The patch is
# 3x the 7B's because of table 1's protocol: lmms-eval's qwen2_5_vl upscales every image to its
# min_pixels (256*28*28, i.e. 448x448) before the processor sees it. With patch 14 that is 256
# tokens, a view the model never trained on (it scored 13/0/3 on the mini tasks there against
# 38/18/3 on its own 36-token view); with patch 42 the processor turns 448x448 into the same
# 504x504 grid of 36 tokens, so both protocols show the model what it was trained on.
PATCH_SIZE = 42
EMBEDDED_MIN_PIXELS = 448 * 448  # lmms-eval's min_pixels; anything above 420x420 lands on 504 for 224 px
EMBEDDED_MAX_PIXELS = 504 * 504

TEXT_HIDDEN = 128
TEXT_LAYERS = 4
TEXT_HEADS = 4
TEXT_KV_HEADS = 2
TEXT_INTERMEDIATE = 384
VISION_HIDDEN = 64
VISION_DEPTH = 2
VISION_HEADS = 4
# Qwen2.5-VL-7B's theta. With head_dim 32, M-RoPE's width section gets the lowest frequencies (at
# most 1.8e-4 rad per image column), so columns are nearly indistinguishable to attention; 100
# doubled how much answers lean on the image but did not move the mini scores (docs/embedded_model.md).
ROPE_THETA = 1000000.0


def padded_vocab_size(n_tokens: int, multiple: int = 64) -> int:
    """Embedding rows: the tokenizer's size rounded up, as Qwen pads its vocabulary."""
    return ((n_tokens + multiple - 1) // multiple) * multiple


def tiny_config(tokenizer: PreTrainedTokenizerBase) -> Qwen2_5_VLConfig:
    """A few-million-parameter Qwen2.5-VL config whose token ids match ``tokenizer``."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
           ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    head_dim = TEXT_HIDDEN // TEXT_HEADS
    # M-RoPE splits head_dim/2 rotary frequencies over (temporal, height, width); Qwen's 7B uses
    # [16, 24, 24] of 64. Same proportions here: 4 + 6 + 6 = 16 = 32/2.
    quarter = head_dim // 8
    mrope_section = [quarter, (head_dim // 2 - quarter) // 2, (head_dim // 2 - quarter) // 2]
    assert sum(mrope_section) == head_dim // 2
    text_config = {
        "vocab_size": padded_vocab_size(len(tokenizer)),
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": TEXT_INTERMEDIATE,
        "num_hidden_layers": TEXT_LAYERS,
        "num_attention_heads": TEXT_HEADS,
        "num_key_value_heads": TEXT_KV_HEADS,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA, "mrope_section": mrope_section},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "use_sliding_window": False,
    }
    vision_config = {
        "depth": VISION_DEPTH,
        "hidden_size": VISION_HIDDEN,
        "intermediate_size": 2 * VISION_HIDDEN,
        "num_heads": VISION_HEADS,
        "in_channels": 3,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        # 4x4 merged tokens per window, as in Qwen2.5-VL (112 px at patch 14); the last block
        # attends globally (Qwen's fullatt_block_indexes), so both attention paths run.
        "window_size": 8 * PATCH_SIZE,
        "fullatt_block_indexes": [VISION_DEPTH - 1],
        "out_hidden_size": TEXT_HIDDEN,
        "tokens_per_second": 2,
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """Stop on <|im_end|> or <|endoftext|>, pad with <|endoftext|> (Qwen2.5-VL's convention)."""
    return GenerationConfig(
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )


def build_processor(tokenizer: PreTrainedTokenizerBase) -> Qwen2_5_VLProcessor:
    """Qwen2.5-VL processor: Qwen2-VL image/video processors with the embedded pixel budget."""
    image_processor = Qwen2VLImageProcessor(
        min_pixels=EMBEDDED_MIN_PIXELS, max_pixels=EMBEDDED_MAX_PIXELS, patch_size=PATCH_SIZE, temporal_patch_size=2,
        merge_size=2,
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=EMBEDDED_MIN_PIXELS, max_pixels=EMBEDDED_MAX_PIXELS, patch_size=PATCH_SIZE, temporal_patch_size=2,
        merge_size=2,
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
        chat_template=tokenizer.chat_template,
    )
