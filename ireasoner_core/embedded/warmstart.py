"""Warm-start of the embedded model: a short supervised fine-tune (all parameters, AdamW) so both
roles follow their output format before self-evolution starts, and a measurement of how well they do.

Targets come from the synthetic generator's ground truth (``corpus.solver_target`` /
``corpus.proposer_target``); prompts from ``ireasoner_core.prompts``. The loss covers the assistant
tokens only (the completion and its closing ``<|im_end|>``).
"""

from __future__ import annotations

import math
import time
import random
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import ProcessorMixin, Qwen2_5_VLForConditionalGeneration

from ireasoner_core import prompts
from ireasoner_core.data.synthetic import QA, SyntheticItem, generate_synthetic, read_ground_truth
from ireasoner_core.embedded.corpus import proposer_target, solver_target
from ireasoner_core.parsing import normalize_answer, parse_rollout

IGNORE_INDEX = -100


@dataclass(frozen=True)
class WarmStartConfig:
    """Recipe of the warm-start; part of the build version (changing it means a new cache dir)."""

    images: int = 240
    steps: int = 220
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    proposer_fraction: float = 0.25
    seed: int = 1234
    eval_images: int = 24
    eval_rollouts: int = 5
    eval_max_new_tokens: int = 160


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
    return _EncodedImage(out["pixel_values"], grid, int(grid.prod()) // processor.image_processor.merge_size ** 2)


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


def _load_items(n: int, seed: int) -> tuple[list[SyntheticItem], list[Image.Image]]:
    with tempfile.TemporaryDirectory(prefix="ireasoner-warmstart-") as scratch:
        generate_synthetic(Path(scratch), n, seed=seed)
        items = read_ground_truth(Path(scratch))
        images = [Image.open(Path(scratch) / it.image).convert("RGB") for it in items]
    return items, images


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
        "pixel_values": torch.cat([images[e.image].pixel_values for e in batch]),
        "image_grid_thw": torch.stack([images[e.image].grid_thw for e in batch]),
    }


def _lr_factor(step: int, cfg: WarmStartConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def warm_start(model: Qwen2_5_VLForConditionalGeneration, processor: ProcessorMixin, *,
               cfg: WarmStartConfig | None = None, progress: bool = True) -> dict:
    """Fine-tune ``model`` in place on synthetic Solver and Proposer targets; returns the measurements."""
    cfg = cfg or WarmStartConfig()
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    items, pil_images = _load_items(cfg.images, cfg.seed)
    encoded = [_encode_image(processor, im) for im in pil_images]
    solver_examples = [
        _example(processor, prompts.solver_messages(qa.question), solver_target(qa), i, encoded[i].n_tokens)
        for i, item in enumerate(items) for qa in item.qa
    ]
    proposer_examples = [
        _example(processor, prompts.proposer_messages(), proposer_target(item, qa), i, encoded[i].n_tokens)
        for i, item in enumerate(items) for qa in item.qa
    ]
    pad_id = processor.tokenizer.pad_token_id
    image_token_id = model.config.image_token_id

    t_train = time.time()
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    n_prop = round(cfg.batch_size * cfg.proposer_fraction)
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="warm-start", disable=not progress, leave=False)
    for step in bar:
        batch = rng.sample(solver_examples, cfg.batch_size - n_prop) + rng.sample(proposer_examples, n_prop)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, cfg)
        loss = model(**_collate(batch, encoded, pad_id, image_token_id)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    tail = losses[-20:]
    result = {
        "config": cfg.__dict__,
        "loss_first": round(losses[0], 4),
        "loss_final": round(sum(tail) / len(tail), 4),
        "seconds_train": round(time.time() - t_train, 1),
    }
    t_eval = time.time()
    result.update(measure_format(model, processor, cfg, progress=progress))
    result["seconds_eval"] = round(time.time() - t_eval, 1)
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


def measure_format(model, processor, cfg: WarmStartConfig, *, progress: bool = False) -> dict:
    """Format compliance and answer agreement of N rollouts at temperature 1 on held-out images."""
    items, images = _load_items(cfg.eval_images, cfg.seed + 1)
    rng = random.Random(cfg.seed + 1)
    qas: list[QA] = [rng.choice(item.qa) for item in items]
    torch.manual_seed(cfg.seed + 1)
    n = cfg.eval_rollouts
    solver_out = _sample(model, processor, [prompts.solver_messages(qa.question) for qa in qas], images, n,
                         cfg.eval_max_new_tokens)
    proposer_out = _sample(model, processor, [prompts.proposer_messages()] * len(items), images, n,
                           cfg.eval_max_new_tokens)
    rollouts = [parse_rollout(t, max_steps=8) for group in solver_out for t in group]
    dominant, entropic, correct = 0, 0, 0
    for qa, group in zip(qas, solver_out):
        answers = [normalize_answer(parse_rollout(t, max_steps=8).answer) for t in group]
        counts = Counter(answers)
        top = counts.most_common(1)[0][1]
        dominant += top >= 2
        entropic += len(counts) > 1
        correct += counts.most_common(1)[0][0] == normalize_answer(qa.answer)
    proposals = [t for group in proposer_out for t in group]
    return {
        "eval_pairs": len(qas),
        "rollouts_per_pair": n,
        "solver_answer_tag_fraction": round(sum(r.has_answer_tag for r in rollouts) / len(rollouts), 3),
        "solver_think_tag_fraction": round(sum(r.has_think_tag for r in rollouts) / len(rollouts), 3),
        "solver_mean_steps": round(sum(len(r.steps) for r in rollouts) / len(rollouts), 2),
        "dominant_group_ge2_fraction": round(dominant / len(qas), 3),
        "answer_entropy_positive_fraction": round(entropic / len(qas), 3),
        "majority_answer_correct_fraction": round(correct / len(qas), 3),
        "proposer_question_tag_fraction": round(
            sum("<question>" in t and "</question>" in t for t in proposals) / len(proposals), 3),
        "proposer_rationale_tag_fraction": round(
            sum("<rationale>" in t and "</rationale>" in t for t in proposals) / len(proposals), 3),
        "sample_solver": solver_out[0][0],
        "sample_solver_untagged": next((t for g in solver_out for t in g if "<answer>" not in t), None),
        "sample_proposer": proposer_out[0][0],
    }
