"""Qwen2.5-VL-7B's architecture with random weights, and the decode memory-bandwidth bound.

Throughput does not depend on trained weights, so the GPU benchmark builds the 7B architecture
directly on the device (no download, no checkpoint read) and pairs it with the embedded
processor and tokenizer. The sizes below are those of the published configuration of
``Qwen/Qwen2.5-VL-7B-Instruct`` (its ``config.json``); only the special-token ids differ: they are
the embedded tokenizer's, so the vision placeholders the processor inserts are the ones the model
looks for. The vocabulary stays at 152,064 rows so the LM head and the exact KL cost what they
cost in the 7B (sampled ids beyond the embedded tokenizer decode to nothing, which only changes
what the parser sees, not how much work is done).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    PreTrainedModel,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)

from ireasoner_core.config import ModelConfig
from ireasoner_core.embedded.architecture import generation_config
from ireasoner_core.model import load_backbone

# Published Qwen2.5-VL-7B-Instruct config.json, language model.
QWEN2_5_VL_7B_TEXT: dict[str, Any] = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "mrope_section": [16, 24, 24],
    "hidden_act": "silu",
}
# Published Qwen2.5-VL-7B-Instruct config.json, vision tower.
QWEN2_5_VL_7B_VISION: dict[str, Any] = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "out_hidden_size": 3584,
    "tokens_per_second": 2,
}
# A CPU-sized copy for tests: same head dims (text 128 with M-RoPE [16, 24, 24], vision 80),
# grouped-query attention, windowed + full vision attention and the full 152,064-row vocabulary.
SCALED_DOWN_TEXT: dict[str, Any] = {
    **QWEN2_5_VL_7B_TEXT, "hidden_size": 256, "intermediate_size": 1344, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 4096,
}
SCALED_DOWN_VISION: dict[str, Any] = {
    **QWEN2_5_VL_7B_VISION, "depth": 2, "hidden_size": 160, "intermediate_size": 428, "num_heads": 2,
    "fullatt_block_indexes": [1], "out_hidden_size": 256,
}

PAPER_IMAGE_PIXELS = 448 * 448   # one 448x448 image = 32x32 patches = 256 merged visual tokens

# Peak HBM bandwidth, GB/s, from the vendors' datasheets. torch sees one MI250X die (GCD) as a device.
PEAK_BANDWIDTH_GBS: dict[str, float] = {
    "NVIDIA H100 SXM (80 GB HBM3)": 3350.0,
    "NVIDIA H100 PCIe (80 GB HBM2e)": 2000.0,
    "NVIDIA H100 NVL (94 GB HBM3)": 3900.0,
    "NVIDIA H200 (141 GB HBM3e)": 4800.0,
    "NVIDIA A100 SXM (80 GB HBM2e)": 2039.0,
    "AMD MI250X, one GCD (64 GB HBM2e)": 1638.4,
    "AMD MI250X, whole package (128 GB)": 3276.8,
}


def peak_bandwidth(device_name: str) -> tuple[str, float] | None:
    """The datasheet row for a ``torch.cuda.get_device_name()`` string, or None if unknown."""
    name = device_name.upper()
    if "H200" in name:
        key = "NVIDIA H200 (141 GB HBM3e)"
    elif "H100" in name and "NVL" in name:
        key = "NVIDIA H100 NVL (94 GB HBM3)"
    elif "H100" in name and "PCIE" in name:
        key = "NVIDIA H100 PCIe (80 GB HBM2e)"
    elif "H100" in name:
        key = "NVIDIA H100 SXM (80 GB HBM3)"
    elif "A100" in name and "80GB" in name.replace(" ", ""):
        key = "NVIDIA A100 SXM (80 GB HBM2e)"
    elif "MI250X" in name or "GFX90A" in name:
        key = "AMD MI250X, one GCD (64 GB HBM2e)"
    else:
        return None
    return key, PEAK_BANDWIDTH_GBS[key]


def qwen2_5_vl_config(tokenizer, text: dict[str, Any], vision: dict[str, Any]) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config of the given sizes whose special-token ids are ``tokenizer``'s."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
           ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    unknown = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if unknown:
        raise ValueError(f"tokenizer lacks Qwen2.5-VL special tokens: {unknown}")
    if len(tokenizer) > text["vocab_size"]:
        raise ValueError(f"text.vocab_size={text['vocab_size']} is smaller than the tokenizer ({len(tokenizer)} tokens)")
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    if sum(text["mrope_section"]) * 2 != head_dim:
        raise ValueError(f"mrope_section {text['mrope_section']} must sum to head_dim/2 = {head_dim // 2}")
    text_config = {k: v for k, v in text.items() if k not in ("rope_theta", "mrope_section")}
    text_config.update(
        rope_parameters={"rope_type": "default", "rope_theta": text["rope_theta"], "mrope_section": text["mrope_section"]},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        use_sliding_window=False,
    )
    return Qwen2_5_VLConfig(
        text_config=text_config, vision_config=dict(vision),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def qwen2_5_vl_7b_config(tokenizer, scaled_down: bool = False) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL-7B's published sizes (or the CPU-sized copy) with ``tokenizer``'s special ids."""
    if scaled_down:
        return qwen2_5_vl_config(tokenizer, SCALED_DOWN_TEXT, SCALED_DOWN_VISION)
    return qwen2_5_vl_config(tokenizer, QWEN2_5_VL_7B_TEXT, QWEN2_5_VL_7B_VISION)


def embedded_processor(image_pixels: int = PAPER_IMAGE_PIXELS,
                       vision: dict[str, Any] = QWEN2_5_VL_7B_VISION) -> ProcessorMixin:
    """The embedded processor/tokenizer (as the trainer loads it), cutting images into ``vision``'s
    patches (the 7B's 14 px, not the embedded model's own) and resizing each to ``image_pixels``."""
    _, processor = load_backbone(ModelConfig(), device="cpu")
    ip = processor.image_processor
    # The pixel values must have the 7B tower's patch shape (3 x 2 x 14 x 14), whatever the
    # embedded checkpoint's patch is.
    ip.patch_size = vision["patch_size"]
    ip.temporal_patch_size = vision["temporal_patch_size"]
    ip.merge_size = vision["spatial_merge_size"]
    # min = max pins the budget: a square image becomes exactly sqrt(pixels) on a side (448 -> 256 tokens).
    ip.size = {"shortest_edge": image_pixels, "longest_edge": image_pixels}
    for attr in ("min_pixels", "max_pixels"):
        if hasattr(ip, attr):
            setattr(ip, attr, image_pixels)
    return processor


def build_random_backbone(config: Qwen2_5_VLConfig, tokenizer, device: str | torch.device,
                          dtype: torch.dtype, attn_implementation: str = "sdpa",
                          seed: int = 0) -> PreTrainedModel:
    """Frozen Qwen2.5-VL with random weights, allocated directly on ``device`` in ``dtype``."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation=attn_implementation)
    model.generation_config = generation_config(tokenizer)
    model.eval()
    model.requires_grad_(False)
    return model


def write_random_checkpoint(out_dir: Path, *, scaled_down: bool = False, device: str | torch.device = "cpu",
                            dtype: torch.dtype = torch.bfloat16, image_pixels: int = PAPER_IMAGE_PIXELS,
                            seed: int = 0) -> Path:
    """A checkpoint folder of the 7B architecture with random weights that ``model.name_or_path`` can load.

    It lets the trainer's own command line (``configs/qwen2.5-vl-7b.yaml``) run on a GPU where no
    weights can be downloaded: the shapes, and so the time and memory, are the 7B's.
    """
    vision = SCALED_DOWN_VISION if scaled_down else QWEN2_5_VL_7B_VISION
    processor = embedded_processor(image_pixels, vision)
    config = qwen2_5_vl_7b_config(processor.tokenizer, scaled_down=scaled_down)
    model = build_random_backbone(config, processor.tokenizer, device, dtype, seed=seed)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


@dataclass(frozen=True)
class DecodeCall:
    """One generate call: ``batch`` sequences, ``prompt_len`` padded prompt positions, ``new_tokens`` sampled."""

    batch: int
    prompt_len: int
    new_tokens: int


def decode_weight_bytes(backbone: PreTrainedModel, adapter: str | None = "solver") -> int:
    """Bytes of weights one decode step reads: decoder layers, final norm, LM head and the active adapter.

    The input embedding is a row lookup (a few KB per step) and the vision tower does not run
    while decoding, so neither counts.
    """
    lm = backbone.model.language_model
    total = 0
    for name, p in [*lm.named_parameters(), *backbone.lm_head.named_parameters()]:
        if "embed_tokens" in name:
            continue
        if "lora_" in name and (adapter is None or f".{adapter}." not in name):
            continue
        total += p.numel() * p.element_size()
    return total


def kv_bytes_per_token(config: Qwen2_5_VLConfig, dtype: torch.dtype) -> int:
    """Keys + values of one token over all decoder layers."""
    t = config.text_config
    head_dim = t.hidden_size // t.num_attention_heads
    return 2 * t.num_hidden_layers * t.num_key_value_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def decode_steps(calls: list[DecodeCall]) -> int:
    """Forward passes after the prefill: the prefill yields the first new token, each step one more."""
    return sum(max(c.new_tokens - 1, 0) for c in calls)


def decode_kv_bytes(calls: list[DecodeCall], kv_per_token: int) -> int:
    """KV-cache bytes read over all decode steps: step j of a call reads batch x (prompt_len + j) tokens."""
    total = 0
    for c in calls:
        steps = max(c.new_tokens - 1, 0)
        total += c.batch * kv_per_token * (steps * c.prompt_len + steps * (steps + 1) // 2)
    return total


def bandwidth_fraction(bytes_read: float, seconds: float, peak_gbs: float) -> float:
    """Achieved bytes/s over the device's peak: 1.0 = decoding at the memory-bandwidth bound."""
    if seconds <= 0 or peak_gbs <= 0:
        raise ValueError(f"seconds={seconds} and peak_gbs={peak_gbs} must be positive")
    return bytes_read / seconds / (peak_gbs * 1e9)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.qwen7b",
                                 description="Write a random-weight Qwen2.5-VL-7B-shaped checkpoint folder.")
    ap.add_argument("out_dir", type=Path, help="folder to write (config, weights, processor)")
    ap.add_argument("--scaled-down", action="store_true", help="the CPU-sized copy (tests, dry runs)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="where the weights are drawn (default: cuda if available)")
    ap.add_argument("--image-pixels", type=int, default=PAPER_IMAGE_PIXELS, help="image budget (448x448)")
    args = ap.parse_args(argv)
    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        ap.error(f"out_dir {args.out_dir} is not empty")
    out = write_random_checkpoint(args.out_dir, scaled_down=args.scaled_down, device=args.device,
                                  image_pixels=args.image_pixels)
    print(f"wrote a random-weight Qwen2.5-VL-7B{' (scaled down)' if args.scaled_down else ''} checkpoint to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
