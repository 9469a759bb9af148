"""Warm-start of the embedded model: a short supervised fine-tune (all parameters, AdamW) so both
roles follow their output format before self-evolution starts, and a measurement of how well they do.

Targets come from the synthetic generator's ground truth (``corpus.solver_target`` /
``corpus.proposer_target``); prompts from ``ireasoner_core.prompts``. The loss covers the assistant
tokens only (the completion and its closing ``<|im_end|>``).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import ProcessorMixin, Qwen2_5_VLForConditionalGeneration

from ireasoner_core import prompts
from ireasoner_core.data.synthetic import KINDS, QA, SyntheticItem, make_item
from ireasoner_core.embedded.corpus import (
    DESCRIBE_PROMPT,
    describe_target,
    proposer_target,
    solver_target,
)
from ireasoner_core.embedded.formats import benchmark_formats
from ireasoner_core.embedded.measure import (
    lmms_eval_view,
    measure_mini,
    measure_training_distribution,
)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class WarmStartConfig:
    """Recipe of the warm-start; part of the build version (changing it means a new cache dir).

    ``mix`` weighs five kinds of example in a batch: the Solver on the generator's questions, the
    Solver on benchmark-formatted questions, direct answers to benchmark-formatted questions (the
    lmms-eval prompt), the Proposer, and a transcript of the image ("Describe the image."). The
    first ``describe_first`` steps are transcripts only: their answer is in the image and nowhere
    else, which teaches the text model to read the image tokens before it learns the priors.

    ``vision_lr_scale`` = 0 keeps the vision tower at its (background-free, see
    ``build._init_patch_embed``) random init and trains only the merger and the language model.
    Measured on this data (docs/embedded_model.md): a trained tower collapses every black-on-white
    figure onto one feature within a few hundred steps (cosine 1.000 between a food chain and a
    triangle), while a frozen random one keeps them apart, and transcripts get 46 % of their tokens
    right instead of 13 % after 300 steps.
    """

    images: int = 1500
    # Batches of 8, not 16: the step is compute-bound, so halving the batch doubles the steps in
    # the same time, and 1,300 x 8 reached the loss of 1,300 x 16 (0.37) in half the compute.
    # 850 steps, not 1,050: the less-trained model samples more diverse answers, so its majority of
    # 5 beats one sample by >= +10 points on counts and the shape's name (docs/embedded_model.md).
    steps: int = 850
    batch_size: int = 8
    lr: float = 3e-3
    vision_lr_scale: float = 0.0
    warmup_steps: int = 50
    weight_decay: float = 0.01
    mix: tuple[float, float, float, float, float] = (0.25, 0.2, 0.3, 0.1, 0.15)
    describe_first: int = 160
    seed: int = 1234
    # Measurement (BUILD.json): mini-benchmark items per task, held-out training images, samples.
    eval_items: int = 60
    eval_images: int = 60
    eval_samples: int = 5


@dataclass
class _Example:
    input_ids: list[int]
    label_start: int  # first completion token
    image: int  # index into the encoded images


@dataclass
class _EncodedImage:
    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    n_tokens: int


def _encode_image(processor: ProcessorMixin, image: Image.Image) -> _EncodedImage:
    out = processor.image_processor(images=[image], return_tensors="pt")
    grid = out["image_grid_thw"][0]
    # Half precision in memory: a few thousand images' patches would take gigabytes in float32.
    return _EncodedImage(out["pixel_values"].half(), grid,
                         int(grid.prod()) // processor.image_processor.merge_size ** 2)


def _prompt_text(processor: ProcessorMixin, messages: list[dict], n_image_tokens: int) -> str:
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # The processor expands the single placeholder to one token per merged patch; doing it here
    # lets every example reuse its image's pixel values instead of re-processing the image.
    return text.replace(processor.image_token, processor.image_token * n_image_tokens)


def _example(processor: ProcessorMixin, messages: list[dict], target: str, image_idx: int,
             n_image_tokens: int) -> _Example:
    tok = processor.tokenizer
    prompt_ids = tok.encode(_prompt_text(processor, messages, n_image_tokens), add_special_tokens=False)
    target_ids = tok.encode(target + "<|im_end|>", add_special_tokens=False)
    return _Example(prompt_ids + target_ids, len(prompt_ids), image_idx)


def _direct_messages(context: str) -> list[dict]:
    # lmms-eval's qwen2_5_vl turn: its system prompt is the chat template's default one.
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": context}]}]


def _load_items(n: int, seed: int) -> tuple[list[SyntheticItem], list[Image.Image]]:
    items, images = [], []
    for i in range(n):
        item, image = make_item(i, KINDS[i % len(KINDS)], seed=seed, occurrence=i // len(KINDS))
        items.append(item)
        images.append(image.convert("RGB"))
    return items, images


def _pools(processor: ProcessorMixin, items: list[SyntheticItem], pil_images: list[Image.Image], rng: random.Random,
           progress: bool = True) -> tuple[list[list[_Example]], list[_EncodedImage]]:
    """The four example pools of ``WarmStartConfig.mix`` and the encoded images they index.

    Image i is at index 2i as the Solver sees it and 2i+1 as lmms-eval shows it (JPEG, resized).
    """
    encoded: list[_EncodedImage] = []
    for im in tqdm(pil_images, desc="warm-start images", leave=False, disable=not progress or len(pil_images) < 200):
        encoded += [_encode_image(processor, im), _encode_image(processor, lmms_eval_view(im))]
    solver, solver_bench, direct, proposer, describe = [], [], [], [], []
    for i, item in enumerate(items):
        plain, lmms = 2 * i, 2 * i + 1
        describe.append(_example(processor, _direct_messages(DESCRIBE_PROMPT), describe_target(item), plain,
                                 encoded[plain].n_tokens))
        for qa in item.qa:
            solver.append(_example(processor, prompts.solver_messages(qa.question), solver_target(qa, rng), plain,
                                   encoded[plain].n_tokens))
            proposer.append(_example(processor, prompts.proposer_messages(), proposer_target(item, qa), plain,
                                     encoded[plain].n_tokens))
        for f in benchmark_formats(item, rng):
            solver_bench.append(_example(processor, prompts.solver_messages(f.context),
                                         solver_target(QA(f.context, f.answer, f.steps, "text"), rng), plain,
                                         encoded[plain].n_tokens))
            direct.append(_example(processor, _direct_messages(f.context), f.answer, lmms, encoded[lmms].n_tokens))
    return [solver, solver_bench, direct, proposer, describe], encoded


def _collate(batch: list[_Example], images: list[_EncodedImage], pad_id: int, image_token_id: int
             ) -> dict[str, torch.Tensor]:
    """Left-padded batch (as at generation time) with labels on completion tokens only."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        off = width - len(e.input_ids)
        ids[row, off:] = torch.tensor(e.input_ids)
        labels[row, off + e.label_start:] = ids[row, off + e.label_start:]
        mask[row, off:] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        # M-RoPE gives image tokens 2-D positions; the model finds them through this mask.
        "mm_token_type_ids": (ids == image_token_id).long() * mask,
        "pixel_values": torch.cat([images[e.image].pixel_values for e in batch]).float(),
        "image_grid_thw": torch.stack([images[e.image].grid_thw for e in batch]),
    }


def _lr_factor(step: int, cfg: WarmStartConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _batch_counts(cfg: WarmStartConfig) -> list[int]:
    """Examples per pool in every batch: ``mix`` scaled to the batch, rounding kept to the batch size."""
    raw = [w / sum(cfg.mix) * cfg.batch_size for w in cfg.mix]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[:cfg.batch_size - sum(counts)]:
        counts[i] += 1
    return counts


def warm_start(model: Qwen2_5_VLForConditionalGeneration, processor: ProcessorMixin, *,
               cfg: WarmStartConfig | None = None, progress: bool = True) -> dict:
    """Fine-tune ``model`` in place on synthetic Solver, direct-answer and Proposer targets; returns
    the measurements (``measure.py``)."""
    cfg = cfg or WarmStartConfig()
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    t_data = time.time()
    items, pil_images = _load_items(cfg.images, cfg.seed)
    pools, encoded = _pools(processor, items, pil_images, rng, progress)
    seconds_data = time.time() - t_data
    pad_id = processor.tokenizer.pad_token_id
    image_token_id = model.config.image_token_id
    counts = _batch_counts(cfg)

    t_train = time.time()
    model.train()
    tower = [p for n, p in model.named_parameters() if ".visual." in f".{n}" and ".merger." not in n]
    if cfg.vision_lr_scale == 0:
        # A frozen random tower: no backward through it (faster), and no collapse (see the config).
        for p in tower:
            p.requires_grad_(False)
    groups = []
    for is_vision in (False, True):
        # The merger (vision -> text projector) learns at the text rate; the tower at vision_lr_scale.
        named = [(n, p) for n, p in model.named_parameters()
                 if p.requires_grad and (".visual." in f".{n}" and ".merger." not in n) == is_vision]
        scale = cfg.vision_lr_scale if is_vision else 1.0
        groups += [{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": cfg.weight_decay, "scale": scale},
                   {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0, "scale": scale}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.98))
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="warm-start", disable=not progress, leave=False)
    for step in bar:
        if step < cfg.describe_first:
            batch = rng.sample(pools[4], cfg.batch_size)
        else:
            batch = [e for pool, c in zip(pools, counts) for e in rng.sample(pool, c)]
        for group in opt.param_groups:
            group["lr"] = cfg.lr * group["scale"] * _lr_factor(step, cfg)
        loss = model(**_collate(batch, encoded, pad_id, image_token_id)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    for p in tower:
        p.requires_grad_(True)
    tail = losses[-20:]
    result = {
        "config": {**cfg.__dict__, "mix": list(cfg.mix)},
        "examples": {name: len(p) for name, p in zip(("solver", "solver_benchmark_format", "direct", "proposer", "describe"), pools)},
        "loss_first": round(losses[0], 4),
        "loss_final": round(sum(tail) / len(tail), 4),
        "seconds_data": round(seconds_data, 1),
        "seconds_train": round(time.time() - t_train, 1),
    }
    t_eval = time.time()
    result.update(measure_build(model, processor, cfg))
    result["seconds_eval"] = round(time.time() - t_eval, 1)
    return result


def measure_build(model: Qwen2_5_VLForConditionalGeneration, processor: ProcessorMixin,
                  cfg: WarmStartConfig | None = None) -> dict:
    """What BUILD.json records of a model: mini benchmarks, training distribution, Proposer format."""
    cfg = cfg or WarmStartConfig()
    result = {"mini_benchmarks": measure_mini(model, processor, items=cfg.eval_items, k=cfg.eval_samples,
                                              seed=cfg.seed + 2),
              "training_distribution": measure_training_distribution(
                  model, processor, images=cfg.eval_images, k=cfg.eval_samples, seed=cfg.seed + 1)}
    result.update(measure_proposer(model, processor, cfg))
    return result
@torch.no_grad()
def _sample(model, processor, messages_list: list[list[dict]], images: list[Image.Image], n: int,
            max_new_tokens: int) -> list[list[str]]:
    texts = [processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages_list]
    processor.tokenizer.padding_side = "left"
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    out = model.generate(**inputs, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                         num_return_sequences=n, max_new_tokens=max_new_tokens)
    decoded = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return [decoded[i * n:(i + 1) * n] for i in range(len(texts))]


def measure_proposer(model, processor, cfg: WarmStartConfig) -> dict:
    """Proposer format compliance: N proposals at temperature 1 on held-out images."""
    _, images = _load_items(cfg.eval_images // 2, cfg.seed + 1)
    torch.manual_seed(cfg.seed + 1)
    out = _sample(model, processor, [prompts.proposer_messages()] * len(images), images, cfg.eval_samples, 64)
    proposals = [t for group in out for t in group]
    return {
        "proposer_question_tag_fraction": round(
            sum("<question>" in t and "</question>" in t for t in proposals) / len(proposals), 3),
        "proposer_rationale_tag_fraction": round(
            sum("<rationale>" in t and "</rationale>" in t for t in proposals) / len(proposals), 3),
        "sample_proposer": proposals[0],
    }
