"""Single-sample against majority-of-k accuracy per question family, on held-out training-distribution images.

Self-consistency rewards (eq. 1's majority answer, eq. 2-4's dominant group) can only sharpen a
policy towards correct answers where its majority answer is right more often than one sample is.
BUILD.json's ``training_distribution`` gives that gap over all questions at once (60 of them);
this module gives it per family of question (``ireasoner_core.data.synthetic.question_family``),
with 95 % intervals, so a recipe can be aimed at the families where the gap is there or is not.

Items are drawn as the warm start draws its images (kinds cycling, ``make_item`` with a held-out
seed), one question of the family per image; each is sampled ``k`` times at temperature 1 with the
Solver prompt through ``measure._generate`` and scored as ``measure_training_distribution`` scores
(normalised answer against the normalised gold; the majority is ``Counter.most_common``'s first,
ties going to the answer sampled first). Intervals: percentile bootstrap over items, the gain's
paired (each item's majority and single scores resampled together).

    python -m ireasoner_core.embedded.families [BUILD_DIR] [--items N] [--families a,b] [--json FILE]
    python -m ireasoner_core.embedded.families --items 200 --record   # into the shipped BUILD.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from ireasoner_core import prompts
from ireasoner_core.data.synthetic import (
    FAMILIES,
    FAMILY_KINDS,
    KINDS,
    QA,
    make_item,
    question_family,
)
from ireasoner_core.embedded.measure import _MAX_STEPS, SOLVER_MAX_NEW_TOKENS, _generate
from ireasoner_core.parsing import normalize_answer, parse_rollout
from ireasoner_core.reports.bootstrap import paired_bootstrap

# Far from the build's seeds (1234 and the eval seeds 1235, 1236), diagnose's 999 and MINI_SEED
# (20_260_105, whose per-item streams are offset again): no image here was trained or benchmarked on.
FAMILIES_SEED = 777_000
SAMPLES = 5
N_RESAMPLES = 10_000
BUILD_KEY = "families"
# The model organism (issue "a model organism on which the method's mechanism shows"): the families
# where the majority of 5 beats one sample by at least this many points, interval above zero, each with
# a mini benchmark of its own that the `mini` sweep scores.
ORGANISM_MIN_GAIN = 10.0
# A question text asked of fewer items than this has no constant-answer baseline (a text naming a label
# or a number is asked of a handful of items, and its best constant would fit them).
CONSTANT_MIN_ITEMS = 20
CONSTANT_ANSWER_NOTE = ("accuracy (%) of the most frequent gold answer per question text, where every text of the "
                        f"family is asked of >= {CONSTANT_MIN_ITEMS} items; the organism's majority must beat it")
ORGANISM_TASKS: dict[str, str] = {"extreme_pie": "ireasoner_pie_extreme_mini", "count": "ireasoner_count_mini",
                                  "shape_name": "ireasoner_shape_mini"}


def family_items(family: str, n: int, seed: int = FAMILIES_SEED) -> list[tuple[object, QA]]:
    """``n`` (image, QA) pairs of one family: images in the warm start's layout, one question each."""
    if family not in FAMILY_KINDS:
        raise ValueError(f"unknown question family {family!r}; expected one of {FAMILIES}")
    if n < 1:
        raise ValueError(f"need at least one item per family, got {n}")
    rng = random.Random(seed * 1_000_003 + FAMILIES.index(family))
    out: list[tuple[object, QA]] = []
    i = 0
    while len(out) < n:
        kind = KINDS[i % len(KINDS)]
        if kind in FAMILY_KINDS[family]:
            item, image = make_item(i, kind, seed=seed, occurrence=i // len(KINDS))
            candidates = [qa for qa in item.qa if question_family(qa) == family]
            if candidates:
                out.append((image.convert("RGB"), rng.choice(candidates)))
        i += 1
    return out


def score_samples(texts: Sequence[str], gold: str) -> tuple[float, int, int]:
    """(fraction of samples right, whether the majority answer is right, distinct answers), as
    ``measure_training_distribution`` scores a question."""
    answers = [normalize_answer(parse_rollout(t, _MAX_STEPS).answer) for t in texts]
    target = normalize_answer(gold)
    single = sum(a == target for a in answers) / len(answers)
    majority = int(Counter(answers).most_common(1)[0][0] == target)
    return single, majority, len(set(answers))


def mean_interval(values: Sequence[float], *, n_resamples: int = N_RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95 % percentile-bootstrap interval over items, in points (x 100)."""
    ci = paired_bootstrap(list(values), [0.0] * len(values), n_resamples=n_resamples, seed=seed)
    return 100 * ci.delta, 100 * ci.low, 100 * ci.high


def gain_interval(majority: Sequence[float], single: Sequence[float], *, n_resamples: int = N_RESAMPLES,
                  seed: int = 0) -> tuple[float, float, float]:
    """Majority minus single accuracy in points, with the paired bootstrap's 95 % interval."""
    ci = paired_bootstrap(list(majority), list(single), n_resamples=n_resamples, seed=seed)
    return 100 * ci.delta, 100 * ci.low, 100 * ci.high


def summarize(singles: Sequence[float], majorities: Sequence[int], distinct: Sequence[int]) -> dict:
    """One family's row: n, single and majority accuracy and their gain, each with its interval."""
    s, m, g = mean_interval(singles), mean_interval(majorities), gain_interval(majorities, singles)
    r1 = lambda x: round(x, 1)
    return {
        "n": len(singles),
        "single": r1(s[0]), "single_ci": [r1(s[1]), r1(s[2])],
        "majority": r1(m[0]), "majority_ci": [r1(m[1]), r1(m[2])],
        "gain": r1(g[0]), "gain_ci": [r1(g[1]), r1(g[2])],
        "mean_distinct_answers": round(sum(distinct) / len(distinct), 2),
    }


def measure_families(model, processor, *, items: int, families: Sequence[str] = FAMILIES, k: int = SAMPLES,
                     seed: int = FAMILIES_SEED, batch_size: int = 64, progress: bool = False) -> dict[str, dict]:
    """Per family: ``items`` held-out questions, ``k`` Solver samples each at temperature 1, summarised."""
    model.eval()
    result = {}
    for family in families:
        t0 = time.time()
        pairs = family_items(family, items, seed)
        # Seeded per family, so one family's figures do not depend on which others were measured.
        torch.manual_seed(seed + FAMILIES.index(family))
        sampled = _generate(model, processor, [prompts.solver_messages(qa.question) for _, qa in pairs],
                            [im for im, _ in pairs], samples=k, max_new_tokens=SOLVER_MAX_NEW_TOKENS,
                            batch_size=batch_size, stop="</answer>")
        scored = [score_samples(texts, qa.answer) for (_, qa), texts in zip(pairs, sampled)]
        result[family] = summarize([s for s, _, _ in scored], [m for _, m, _ in scored], [d for _, _, d in scored])
        result[family]["constant"] = constant_answer(pairs)
        if progress:
            r = result[family]
            print(f"[families] {family}: single {r['single']} majority {r['majority']} gain {r['gain']} "
                  f"{r['gain_ci']} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    return result


def constant_answer(pairs: Sequence[tuple[object, QA]]) -> float | None:
    """Accuracy (%) of answering every question text with its most frequent gold answer, a model that never
    looks at the image; None unless every question text of the family is asked of >= CONSTANT_MIN_ITEMS items.

    A majority that beats one sample by sharpening towards this prior ("15" is the smallest pie share
    in two pies of three) is not the reading that self-consistency rewards are meant to reinforce."""
    by_text: dict[str, Counter] = {}
    for _, qa in pairs:
        by_text.setdefault(qa.question, Counter())[normalize_answer(qa.answer)] += 1
    if not by_text or min(sum(c.values()) for c in by_text.values()) < CONSTANT_MIN_ITEMS:
        return None
    return round(100 * sum(c.most_common(1)[0][1] for c in by_text.values()) / len(pairs), 1)


def organism_families(per_family: dict[str, dict]) -> list[str]:
    """The families whose majority-of-5 gain is at least ``ORGANISM_MIN_GAIN`` points with its interval above 0,
    and whose majority beats the constant-answer baseline (where the family has one)."""
    def qualifies(r: dict) -> bool:
        beats_prior = r.get("constant") is None or r["majority"] > r["constant"]
        return r["gain"] >= ORGANISM_MIN_GAIN and r["gain_ci"][0] > 0 and beats_prior

    return [f for f in FAMILIES if f in per_family and qualifies(per_family[f])]


def table(result: dict[str, dict]) -> str:
    """The markdown table: family, n, single %, majority-of-k %, gain in points, each with its 95 % interval."""
    fmt = lambda v, ci: f"{v:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]"
    lines = ["| family | n | single % | majority-of-5 % | gain (points) | distinct answers | constant answer % |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    # In FAMILIES' order (a record read back from BUILD.json has its keys sorted).
    for family, r in sorted(result.items(), key=lambda kv: FAMILIES.index(kv[0]) if kv[0] in FAMILIES else len(FAMILIES)):
        lines.append(f"| {family} | {r['n']} | {fmt(r['single'], r['single_ci'])} | "
                     f"{fmt(r['majority'], r['majority_ci'])} | {r['gain']:+.1f} [{r['gain_ci'][0]:+.1f}, "
                     f"{r['gain_ci'][1]:+.1f}] | {r['mean_distinct_answers']:.2f} | "
                     f"{'—' if r.get('constant') is None else format(r['constant'], '.1f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from ireasoner_core.config import EMBEDDED_MODEL, ModelConfig
    from ireasoner_core.embedded.shipped import BUILD_FILE, SHIPPED_DIR, record_in_build
    from ireasoner_core.model import load_backbone

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build_dir", nargs="?", type=Path, help="an embedded build (default: the shipped one)")
    ap.add_argument("--items", type=int, default=200, help="held-out questions per family (default 200)")
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated, of: " + ", ".join(FAMILIES))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--seed", type=int, default=FAMILIES_SEED)
    ap.add_argument("--json", type=Path, help="also write the record here")
    ap.add_argument("--record", action="store_true",
                    help=f"write the record into the build's BUILD.json under {BUILD_KEY!r} and rewrite its manifest")
    args = ap.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        ap.error(f"unknown families {unknown}; expected some of {', '.join(FAMILIES)}")
    torch.set_num_threads(args.threads)
    name = str(args.build_dir) if args.build_dir else EMBEDDED_MODEL
    model, processor = load_backbone(ModelConfig(name_or_path=name, dtype="float32"))
    model_dir = Path(args.build_dir) if args.build_dir else SHIPPED_DIR
    build = json.loads((model_dir / BUILD_FILE).read_text())
    t0 = time.time()
    result = measure_families(model, processor, items=args.items, families=families, seed=args.seed, progress=True)
    record = {
        "items_per_family": args.items, "samples": SAMPLES, "seed": args.seed, "temperature": 1.0,
        "prompt": "solver", "interval": "95 % percentile bootstrap over items (gain: paired)",
        "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
        "cpus": os.cpu_count(), "seconds": round(time.time() - t0, 1), "per_family": result,
        "organism_min_gain": ORGANISM_MIN_GAIN, "organism_families": organism_families(result),
        "constant_answer": CONSTANT_ANSWER_NOTE,
    }
    print(f"{build['build_version']} ({model_dir}), {args.items} items per family, {SAMPLES} samples at "
          f"temperature 1, seed {args.seed}, {args.threads} thread(s), {record['seconds']:.0f} s")
    print(table(result))
    print(f"organism families (gain >= {ORGANISM_MIN_GAIN:+.0f} points, interval above 0, majority above the "
          "constant answer): "
          f"{', '.join(record['organism_families']) or 'none'}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    if args.record:
        record_in_build(model_dir, BUILD_KEY, record)
        print(f"recorded under {BUILD_KEY!r} in {model_dir / BUILD_FILE} (manifest rewritten)")


if __name__ == "__main__":
    main()
