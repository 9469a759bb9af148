"""How much the embedded model reads its image: the warm-start's loss on held-out synthetic images,
with each example's own image and with another image of the same kind.

The gap between the two is what the image adds to the model's predictions. A model that answers
from its text prior alone (every figure the same answer) has a gap near zero, however low its loss.

    python -m ireasoner_core.embedded.diagnose [BUILD_DIR] [--images N]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
from pathlib import Path

import torch

from ireasoner_core.data.synthetic import KINDS
from ireasoner_core.embedded.warmstart import _collate, _load_items, _pools

POOLS = ("solver", "solver_benchmark_format", "direct", "proposer", "describe")
HELD_OUT_SEED = 999  # far from the build's seed (1234) and the mini benchmarks'


@torch.no_grad()
def image_reliance(model, processor, *, images: int = 60, seed: int = HELD_OUT_SEED,
                   per_pool: int = 48) -> dict[str, dict[str, float]]:
    """Per example pool: mean completion-token loss with the right image and with a same-kind other one."""
    if images < 2 * len(KINDS):
        raise ValueError(f"images={images}: need at least {2 * len(KINDS)} (two of each kind) to swap within a kind")
    model.eval()
    items, pil = _load_items(images, seed)
    pools, encoded = _pools(processor, items, pil, random.Random(seed))
    pad, image_token = processor.tokenizer.pad_token_id, model.config.image_token_id
    n_items = len(items)
    out = {}
    for name, pool in zip(POOLS, pools):
        examples = pool[:per_pool]
        # Item i's images are 2i and 2i+1; items cycle through KINDS, so i + len(KINDS) is the same kind
        # (and the same view: plain or lmms-eval's) drawn with other labels and values.
        swapped = [dataclasses.replace(e, image=(e.image + 2 * len(KINDS)) % (2 * n_items)) for e in examples]
        right = model(**_collate(examples, encoded, pad, image_token)).loss.item()
        other = model(**_collate(swapped, encoded, pad, image_token)).loss.item()
        out[name] = {"right_image": round(right, 4), "other_image": round(other, 4), "gap": round(other - right, 4)}
    return out


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from ireasoner_core.model import ensure_embedded_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build_dir", nargs="?", type=Path, help="an embedded build (default: the cached one)")
    ap.add_argument("--images", type=int, default=60)
    args = ap.parse_args(argv)
    d = args.build_dir or ensure_embedded_model()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(d)
    result = image_reliance(model, AutoProcessor.from_pretrained(d), images=args.images)
    print(f"{'pool':26s} {'right image':>12s} {'other image':>12s} {'gap':>8s}")
    for name, r in result.items():
        print(f"{name:26s} {r['right_image']:12.3f} {r['other_image']:12.3f} {r['gap']:8.3f}")


if __name__ == "__main__":
    main()
