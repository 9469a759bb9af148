"""How much the embedded model reads its image: the warm-start's loss on held-out synthetic images,
with each example's own image and with another image of the same kind.

The gap between the two is what the image adds to the model's predictions. A model that answers
from its text prior alone (every figure the same answer) has a gap near zero, however low its loss.

``label_reading`` is the sharpest single probe: held-out circles are drawn identically except for
their "r = N" label, so a transcript that gets N right can only have read the digits, and the
number of distinct radii it writes shows whether it reads at all (a prior writes one).

    python -m ireasoner_core.embedded.diagnose [BUILD_DIR] [--images N] [--circles N]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
from pathlib import Path

import torch

from ireasoner_core.data.synthetic import KINDS, SHAPES, make_item
from ireasoner_core.embedded.corpus import DESCRIBE_PROMPT, describe_target
from ireasoner_core.embedded.measure import _generate
from ireasoner_core.embedded.warmstart import (
    _collate,
    _direct_messages,
    _load_items,
    _pools,
)

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


@torch.no_grad()
def label_reading(model, processor, *, circles: int = 40, seed: int = HELD_OUT_SEED) -> dict:
    """Greedy transcripts of held-out circles: how many read the radius label, and how many radii they write."""
    if circles < 1:
        raise ValueError(f"circles={circles}: need at least one circle")
    model.eval()
    # Occurrence 3i + k is always the k-th shape of the generator's cycle: here, the circle.
    occurrence = SHAPES.index("circle")
    drawn = [make_item(i, "geometry", seed=seed, occurrence=len(SHAPES) * i + occurrence) for i in range(circles)]
    messages = [_direct_messages(DESCRIBE_PROMPT)] * circles
    read = [g[0].strip() for g in _generate(model, processor, messages, [im.convert("RGB") for _, im in drawn],
                                            samples=0, max_new_tokens=24, batch_size=64, stop=None)]
    truth = [describe_target(item) for item, _ in drawn]
    return {
        "circles": circles,
        "exact": sum(r == t for r, t in zip(read, truth)),
        "distinct_written": len(set(read)),
        "distinct_drawn": len(set(truth)),
        "records": [{"drawn": t, "read": r} for t, r in zip(truth, read)],
    }


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from ireasoner_core.embedded.shipped import shipped_model_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build_dir", nargs="?", type=Path, help="an embedded build (default: the shipped one)")
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--circles", type=int, default=40, help="held-out circles for the radius-label probe")
    args = ap.parse_args(argv)
    d = args.build_dir or shipped_model_dir()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(d)
    processor = AutoProcessor.from_pretrained(d)
    result = image_reliance(model, processor, images=args.images)
    print(f"{'pool':26s} {'right image':>12s} {'other image':>12s} {'gap':>8s}")
    for name, r in result.items():
        print(f"{name:26s} {r['right_image']:12.3f} {r['other_image']:12.3f} {r['gap']:8.3f}")
    lr = label_reading(model, processor, circles=args.circles)
    print(f"\ncircle transcripts: {lr['exact']}/{lr['circles']} exact; {lr['distinct_written']} distinct "
          f"transcripts written for {lr['distinct_drawn']} distinct radii drawn")
    for e in lr["records"][:5]:
        print(f"  drawn {e['drawn']!r:32s} read {e['read']!r}")


if __name__ == "__main__":
    main()
