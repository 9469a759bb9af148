"""Build the embedded model into a directory: tokenizer, processor, tiny Qwen2.5-VL, warm-start,
``save_pretrained`` of each, and ``BUILD.json`` written last (its presence marks a complete build).

A build names itself by its recipe *and* its weights (``v3-<recipe hash>-w<weights hash>``): the
same recipe gives different floats on different CPUs, so the recipe alone does not name a model.
The shipped copy (``shipped.py``) is what ``embedded`` loads; builds are for changing the recipe.
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from ireasoner_core import prompts
from ireasoner_core.data.synthetic import generate_synthetic, read_ground_truth
from ireasoner_core.embedded import architecture
from ireasoner_core.embedded.architecture import (
    build_processor,
    generation_config,
    tiny_config,
)
from ireasoner_core.embedded.corpus import corpus_texts
from ireasoner_core.embedded.formats import (
    AI2D_POST_PROMPT,
    CHARTQA_POST_PROMPT,
    GEOMETRY_POST_PROMPT,
)
from ireasoner_core.embedded.measure import MEASURE_VERSION
from ireasoner_core.embedded.shipped import BUILD_FILE, sha256_file
from ireasoner_core.embedded.tokenizer import CHAT_TEMPLATE, train_tokenizer
from ireasoner_core.embedded.warmstart import WarmStartConfig
from ireasoner_core.embedded.warmstart import warm_start as run_warm_start

WEIGHTS_FILE = "model.safetensors"
BUILD_SEED = 1234
# Bump when the architecture, corpus or warm-start recipe changes.
# 3: patch 42 (lmms-eval's view = the trained view) and a warm-start of 1,050 batches of 8.
_RECIPE_VERSION = "3"
# Items whose QA text trains the tokenizer (cheap: text only, but generate_synthetic draws them).
TOKENIZER_ITEMS = 200


def recipe_version(recipe: WarmStartConfig | None = None) -> str:
    """The recipe's name: its version plus a hash of the shapes, prompt text and warm-start recipe."""
    # The shape constants too: a model of another shape must never be read from this cache dir.
    shapes = repr(sorted((k, v) for k, v in vars(architecture).items() if k.isupper()))
    text = "\x00".join([_RECIPE_VERSION, shapes, prompts.PROPOSER_INSTRUCTION, prompts.SOLVER_INSTRUCTION,
                        prompts.FALLBACK_QUESTION, CHAT_TEMPLATE, repr(recipe or WarmStartConfig()),
                        CHARTQA_POST_PROMPT, AI2D_POST_PROMPT, GEOMETRY_POST_PROMPT, MEASURE_VERSION])
    return f"v{_RECIPE_VERSION}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _init_patch_embed(model: Qwen2_5_VLForConditionalGeneration) -> None:
    """Give the patch embedding no response to a uniform grey patch (weights zero-mean per output).

    Synthetic figures are mostly white. With the default init the white component dominates every
    patch vector, RMSNorm then drowns the few pixels of a thin line or a digit, and training
    collapses line charts, diagrams and figures onto one feature (measured: cosine > 0.99 between
    a food chain and a triangle after 300 steps). Removing the mean over channels and pixels keeps
    colour (channel differences) and strokes, and maps background to ~0.
    """
    w = model.model.visual.patch_embed.proj.weight
    with torch.no_grad():
        w -= w.mean(dim=(1, 2, 3, 4), keepdim=True)


def build_embedded(out_dir: Path, *, warm_start: bool = True, recipe: WarmStartConfig | None = None,
                   progress: bool = True) -> dict:
    """Write a complete embedded model to ``out_dir`` (which must be empty or absent); returns BUILD.json.

    ``recipe`` replaces the warm-start recipe (a scaled-down one in tests); ``warm_start=False``
    writes the untrained model."""
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _seed_everything(BUILD_SEED)
    with tempfile.TemporaryDirectory(prefix="ireasoner-synthetic-") as scratch:
        generate_synthetic(Path(scratch), TOKENIZER_ITEMS, seed=BUILD_SEED)
        items = read_ground_truth(Path(scratch))
    tokenizer = train_tokenizer(corpus_texts(items))
    processor = build_processor(tokenizer)
    config = tiny_config(tokenizer)
    torch.manual_seed(BUILD_SEED)
    model = Qwen2_5_VLForConditionalGeneration(config)
    _init_patch_embed(model)
    model.generation_config = generation_config(tokenizer)

    info: dict = {"recipe_version": recipe_version(recipe) + ("" if warm_start else "-untrained"),
                  "seed": BUILD_SEED, "warm_start": None}
    if warm_start:
        info["warm_start"] = run_warm_start(model, processor, cfg=recipe, progress=progress)

    model.eval()
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    info.update(
        parameters=sum(p.numel() for p in model.parameters()),
        vocab_size=len(tokenizer),
        architecture={"text": {k: getattr(config.text_config, k) for k in
                               ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                "intermediate_size", "vocab_size")},
                      "vision": {k: getattr(config.vision_config, k) for k in
                                 ("depth", "hidden_size", "num_heads", "patch_size", "spatial_merge_size",
                                  "window_size", "out_hidden_size")}},
        seconds=round(time.time() - t0, 2),
    )
    info["weights_sha256"] = sha256_file(out_dir / WEIGHTS_FILE)
    info["build_version"] = f"{info['recipe_version']}-w{info['weights_sha256'][:10]}"
    (out_dir / BUILD_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    return info
