"""What the embedded model can do, measured at build time and written to BUILD.json.

* Per mini task (the first ``items`` rows of each mini benchmark, the very items table 1 scores):
  ``lmms_eval``, greedy accuracy with the task's direct-answer prompt, the image JPEG-85
  round-tripped and resized by ``qwen_vl_utils`` and the processor given lmms-eval's pixel limits
  (as ``lmm.py``'s protocol builds it: >= 256 visual tokens, not the checkpoint's own cap),
  bfloat16 weights, at most 16 new tokens; ``solver``, greedy accuracy and avg@k (k samples at
  temperature 1) with the Solver prompt around the same text, float32, the answer tag scored.
  The scoring rules are the tasks' own (ChartQA relaxed accuracy, AI2D option match, geometry
  numeric match).
* On the training distribution (held-out synthetic images, the generator's own questions, Solver
  prompt): single-sample accuracy against majority-of-k accuracy, which is what self-consistency
  rewards can exploit, and how much the k reasoning chains of a question vary.

These are quick in-process estimates; table 1 comes from the lmms-eval runs.
"""

from __future__ import annotations

import copy
import io
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from ireasoner_core import prompts
from ireasoner_core.data.synthetic import KINDS, make_item
from ireasoner_core.embedded.formats import (
    chartqa_context,
    geometry_context,
    mcq_context,
)
from ireasoner_core.parsing import normalize_answer, parse_rollout

MINI_TASKS = ("ireasoner_chartqa_mini", "ireasoner_ai2d_mini", "ireasoner_geometry_mini")
DIRECT_MAX_NEW_TOKENS = 16  # the mini tasks' generation_kwargs
SOLVER_MAX_NEW_TOKENS = 96  # lmm.EMBEDDED_MAX_NEW_TOKENS
# lmms-eval 0.7 qwen2_5_vl defaults (lmm.LMMS_EVAL_MIN_PIXELS / MAX_PIXELS).
LMMS_MIN_PIXELS = 256 * 28 * 28
LMMS_MAX_PIXELS = 1605632
_MAX_STEPS = 10
# In the build's cache key: a change to what BUILD.json measures re-measures the cached build.
# 2: lmms_eval with lmms-eval's pixel limits (1 used the checkpoint's ~30-token cap); 3: AI2D-mini scored by
# lmms-eval's AI2D rule, the letter only (2 also took the option's text).
MEASURE_VERSION = "3"


def lmms_eval_view(image: Image.Image) -> Image.Image:
    """The image lmms-eval's qwen2_5_vl hands the processor: JPEG quality 85, then qwen_vl_utils resizing."""
    from qwen_vl_utils import fetch_image

    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=85)
    buf.seek(0)
    jpeg = Image.open(buf).convert("RGB")
    return fetch_image({"image": jpeg, "min_pixels": LMMS_MIN_PIXELS, "max_pixels": LMMS_MAX_PIXELS})


def lmms_eval_processor(processor):
    """The processor as protocol lmms_eval builds it: the checkpoint's, with lmms-eval's pixel limits."""
    wide = copy.deepcopy(processor)
    ip = wide.image_processor
    ip.size = {"shortest_edge": LMMS_MIN_PIXELS, "longest_edge": LMMS_MAX_PIXELS}
    for attr, value in (("min_pixels", LMMS_MIN_PIXELS), ("max_pixels", LMMS_MAX_PIXELS)):
        if hasattr(ip, attr):
            setattr(ip, attr, value)
    return wide


def relaxed_correctness(prediction: str, target: str, max_relative_change: float = 0.05) -> bool:
    """ChartQA relaxed accuracy (lmms-eval ``chartqa.utils.relaxed_correctness``): 5 % on numbers, else exact."""
    def to_float(text: str) -> float | None:
        try:
            return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
        except ValueError:
            return None

    p, t = to_float(prediction), to_float(target)
    if p is not None and t:
        return abs(p - t) / abs(t) <= max_relative_change
    return prediction.lower() == target.lower()


@dataclass(frozen=True)
class _Item:
    image: Image.Image
    context: str
    score: Callable[[str], bool]


def mini_items(task: str, n: int) -> list[_Item]:
    """The first ``n`` rows of a mini benchmark as (image, prompt text, scorer)."""
    from ireasoner_core.evaluation.minibench import (
        BUILDERS,
        MINI_SEED,
        ai2d_exact_match,
        numeric_match,
    )

    items = []
    for row in BUILDERS[task](n, MINI_SEED):
        if task == "ireasoner_chartqa_mini":
            ans = row["answer"]
            items.append(_Item(row["image"], chartqa_context(row["question"]),
                               lambda p, a=ans: relaxed_correctness(p.strip(), a)))
        elif task == "ireasoner_ai2d_mini":
            ans = int(row["answer"])
            items.append(_Item(row["image"], mcq_context(row["question"], list(row["options"])),
                               lambda p, a=ans: ai2d_exact_match(p, a)))
        else:
            ans = row["answer"]
            items.append(_Item(row["image"], geometry_context(row["question"]),
                               lambda p, a=ans: numeric_match(p, a)))
    return items


@torch.no_grad()
def _generate(model, processor, messages: list[list[dict]], images: list[Image.Image], *, samples: int,
              max_new_tokens: int, batch_size: int, stop: str | None) -> list[list[str]]:
    """Greedy (samples=0: one answer each) or ``samples`` answers each at temperature 1."""
    tok = processor.tokenizer
    tok.padding_side = "left"
    out: list[list[str]] = []
    per = max(1, batch_size // max(1, samples))
    for start in range(0, len(messages), per):
        texts = [processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
                 for m in messages[start:start + per]]
        enc = processor(text=texts, images=images[start:start + per], return_tensors="pt", padding=True)
        enc = {k: v.to(model.dtype) if k == "pixel_values" else v for k, v in enc.items()}
        decode = ({"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "num_return_sequences": samples}
                  if samples else {"do_sample": False})
        extra = {"stop_strings": [stop], "tokenizer": tok} if stop else {}
        gen = model.generate(**enc, **decode, **extra, max_new_tokens=max_new_tokens)
        decoded = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        n = max(1, samples)
        out += [decoded[i * n:(i + 1) * n] for i in range(len(texts))]
    return out


def _direct_answer(text: str) -> str:
    # EvoLMM's extraction (lmm.extract_answer "evolmm"): the answer tag when there is one, else all.
    r = parse_rollout(text, _MAX_STEPS)
    return r.raw_answer if r.has_answer_tag else text.strip()


def measure_mini(model, processor, *, items: int, k: int, seed: int, batch_size: int = 64) -> dict:
    """Greedy accuracy (in %) per mini task and protocol, and avg@k under the Solver's prompt."""
    bf16 = copy.deepcopy(model).to(torch.bfloat16).eval()
    wide = lmms_eval_processor(processor)
    result: dict = {}
    for task in MINI_TASKS:
        rows = mini_items(task, items)
        lmms_images = [lmms_eval_view(r.image) for r in rows]
        direct = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r.context}]}]
                  for r in rows]
        solver = [prompts.solver_messages(r.context) for r in rows]
        plain = [r.image.convert("RGB") for r in rows]
        task_result = {}
        # avg@k under the Solver's prompt only: it is the policy that training sharpens, and lmms-eval's
        # >= 256-token images make sampling them the most expensive part of a 5-minute build.
        for protocol, m, proc, msgs, ims, max_new, stop, extract, samples in (
            ("lmms_eval", bf16, wide, direct, lmms_images, DIRECT_MAX_NEW_TOKENS, None, _direct_answer, 0),
            ("solver", model, processor, solver, plain, SOLVER_MAX_NEW_TOKENS, "</answer>",
             lambda t: parse_rollout(t, _MAX_STEPS).raw_answer, k),
        ):
            greedy = _generate(m, proc, msgs, ims, samples=0, max_new_tokens=max_new, batch_size=batch_size,
                               stop=stop)
            g = [r.score(extract(t[0])) for r, t in zip(rows, greedy)]
            task_result[protocol] = {"greedy": round(100 * sum(g) / len(g), 1)}
            if samples:
                torch.manual_seed(seed)
                sampled = _generate(m, proc, msgs, ims, samples=samples, max_new_tokens=max_new,
                                    batch_size=batch_size, stop=stop)
                s = [sum(r.score(extract(x)) for x in texts) / len(texts) for r, texts in zip(rows, sampled)]
                task_result[protocol][f"avg@{samples}"] = round(100 * sum(s) / len(s), 1)
        result[task] = task_result
    result["items_per_task"] = items
    return result


def measure_training_distribution(model, processor, *, images: int, k: int, seed: int, batch_size: int = 64) -> dict:
    """Single-sample vs majority-of-k accuracy and reasoning variety on held-out synthetic images."""
    rng = random.Random(seed)
    pairs = []
    for i in range(images):
        item, image = make_item(i, KINDS[i % len(KINDS)], seed=seed, occurrence=i // len(KINDS))
        pairs.append((image.convert("RGB"), rng.choice(item.qa)))
    torch.manual_seed(seed)
    sampled = _generate(model, processor, [prompts.solver_messages(qa.question) for _, qa in pairs],
                        [im for im, _ in pairs], samples=k, max_new_tokens=SOLVER_MAX_NEW_TOKENS,
                        batch_size=batch_size, stop="</answer>")
    single, majority, distinct_steps, distinct_answers, tagged = 0.0, 0, 0.0, 0.0, 0
    for (_, qa), texts in zip(pairs, sampled):
        parsed = [parse_rollout(t, _MAX_STEPS) for t in texts]
        gold = normalize_answer(qa.answer)
        answers = [normalize_answer(p.answer) for p in parsed]
        single += sum(a == gold for a in answers) / len(answers)
        majority += Counter(answers).most_common(1)[0][0] == gold
        distinct_answers += len(set(answers))
        distinct_steps += len({tuple(p.steps) for p in parsed})
        tagged += sum(p.has_answer_tag for p in parsed)
    n = len(pairs)
    return {
        "pairs": n,
        "samples_per_pair": k,
        "single_sample_accuracy": round(100 * single / n, 1),
        f"majority_of_{k}_accuracy": round(100 * majority / n, 1),
        "majority_gain_points": round(100 * (majority - single) / n, 1),
        "mean_distinct_answers": round(distinct_answers / n, 2),
        "mean_distinct_step_chains": round(distinct_steps / n, 2),
        "answer_tag_fraction": round(tagged / (n * k), 3),
        "sample_solver": sampled[0][0],
    }
