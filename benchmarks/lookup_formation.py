"""Does a fresh embedded-size model learn a lookup, and after how many batches? (issue 9's AI2D gap)

AI2D-mini asks for an option's letter: the model must find the option whose word answers the
question and copy the letter written before it. The embedded model stays at chance there
(docs/embedded_model.md). This probe trains a fresh model of the embedded architecture
(``tiny_config``, real Qwen2.5-VL classes, text only) on one of four tasks and reports the
accuracy on the supervised tokens every ``--every`` batches, next to the task's chance levels:

* ``offset``: 16 random tokens, then the same 16 again. The second copy sits at a fixed distance,
  so a head attending 15 positions back solves it: positional attention, no content matching.
* ``recall``: ``--pairs`` key-value pairs of random tokens, then queries of the keys (drawn with
  replacement), each followed by its value: associative recall, a content-matched lookup.
  Copying any value of the context scores 1 / pairs; only the lookup scores more.
* ``option``: "Which option is X?" with four lettered options and lmms-eval's AI2D post prompt, in
  the chat template, answered with the letter: the smallest form of what AI2D-mini needs.
* ``option_last``: the four lettered options, then the word X alone, answered with its letter: the
  same lookup with the word already at the position that answers, i.e. without the hop that
  carries the question's word past the options and the post prompt.

``--vocab`` narrows recall's keys and values to that many token ids each. ``--offset-heads 1,2``
sets, before training, layer 0's q/k biases so that the first query head of key/value head ``j``
attends ``offsets[j]`` tokens back (a previous-token head, the first half of an induction circuit; see
``seed_offset_heads``), to measure whether the plateau is waiting for that head. ``--init-std``
draws the initial weights with another spread than Qwen2.5-VL's ``initializer_range`` (0.02).

    .venv/bin/python -m benchmarks.lookup_formation --task recall --steps 2500 --pairs 4
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # nothing here may reach a hub

import torch
from transformers import PreTrainedTokenizerBase, Qwen2_5_VLForConditionalGeneration

from ireasoner_core.config import ModelConfig
from ireasoner_core.data.synthetic import (
    CHOICE_LETTERS,
    HERBIVORES,
    PREDATORS,
    PRODUCERS,
    TOP_PREDATORS,
)
from ireasoner_core.embedded.architecture import tiny_config
from ireasoner_core.embedded.formats import mcq_context
from ireasoner_core.model import load_backbone

TASKS = ("offset", "recall", "option", "option_last")
IGNORE = -100
_ORGANISMS = (*PRODUCERS, *HERBIVORES, *PREDATORS, *TOP_PREDATORS)
# Random tokens are drawn from this id range of the embedded vocabulary: ordinary word pieces,
# clear of the special tokens at the start and end. Keys and values come from disjoint halves.
_LOW, _MID, _HIGH = 60, 380, 700

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]   # input ids, labels, attention mask


def _offset_batch(g: torch.Generator, batch_size: int, length: int = 16) -> Batch:
    """A random sequence repeated once; labels on the second copy (after its first token)."""
    x = torch.randint(_LOW, _HIGH, (batch_size, length), generator=g)
    ids = torch.cat([x, x], 1)
    labels = ids.clone()
    labels[:, : length + 1] = IGNORE
    return ids, labels, torch.ones_like(ids)


def _recall_batch(g: torch.Generator, batch_size: int, pairs: int, vocab: int = _MID - _LOW) -> Batch:
    """``pairs`` (key, value) pairs, then 2 x ``pairs`` queries (key, value); labels on queried values.

    Keys are distinct ids among the first ``vocab`` of ``[_LOW, _MID)``, values any of the first
    ``vocab`` of ``[_MID, _HIGH)``.
    """
    keys = torch.stack([torch.randperm(vocab, generator=g)[:pairs] + _LOW for _ in range(batch_size)])
    values = torch.randint(_MID, _MID + vocab, (batch_size, pairs), generator=g)
    asked = torch.randint(0, pairs, (batch_size, 2 * pairs), generator=g)
    context = torch.stack([keys, values], 2).reshape(batch_size, -1)
    queries = torch.stack([keys.gather(1, asked), values.gather(1, asked)], 2).reshape(batch_size, -1)
    ids = torch.cat([context, queries], 1)
    labels = torch.full_like(ids, IGNORE)
    labels[:, 2 * pairs + 1:: 2] = values.gather(1, asked)
    return ids, labels, torch.ones_like(ids)


def _option_example(tokenizer: PreTrainedTokenizerBase, rng: random.Random,
                    word_last: bool = False) -> tuple[list[int], list[int]]:
    options = rng.sample(_ORGANISMS, len(CHOICE_LETTERS))
    k = rng.randrange(len(options))
    if word_last:
        # No chat template: the word is the last token before the letter, as a key before its value.
        lines = "\n".join(f"{letter}. {option}" for letter, option in zip(CHOICE_LETTERS, options))
        prompt = f"{lines}\n{options[k]}"
    else:
        context = mcq_context(f"Which option is {options[k]}?", options)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": context}], tokenize=False,
                                               add_generation_prompt=True)
    p = tokenizer.encode(prompt, add_special_tokens=False)
    answer = tokenizer.encode(CHOICE_LETTERS[k], add_special_tokens=False)
    return p + answer, [IGNORE] * len(p) + answer


def _option_batch(tokenizer: PreTrainedTokenizerBase, rng: random.Random, batch_size: int,
                  word_last: bool = False) -> Batch:
    """Option questions, left-padded as the trainer pads; labels on the letter."""
    examples = [_option_example(tokenizer, rng, word_last) for _ in range(batch_size)]
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((batch_size, width), tokenizer.pad_token_id)
    labels = torch.full((batch_size, width), IGNORE)
    mask = torch.zeros((batch_size, width), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, width - len(x):] = torch.tensor(x)
        labels[row, width - len(y):] = torch.tensor(y)
        mask[row, width - len(x):] = 1
    return ids, labels, mask


_OFFSET_HEAD_WEIGHTS = tuple(1 / (i + 1) / sum(1 / (j + 1) for j in range(6)) for i in range(6))


def seed_offset_heads(model: Qwen2_5_VLForConditionalGeneration, offsets: Sequence[int],
                      amplitude: float = 16.0) -> None:
    """Layer 0's q/k biases such that query head ``j * group`` attends ``offsets[j]`` tokens back.

    RoPE rotates the frequency pair (i, i + head_dim / 2) of a query at position m and of a key at
    n by m*w_i and n*w_i, so biases q_i = a and k_i = a * exp(1j * d * w_i) (as a complex pair)
    score a^2 cos((m - n - d) * w_i): largest at m - n = d whatever the tokens. The six highest
    frequencies, weighted 1/(i+1), keep every other distance up to 512 at least 0.2 of the peak
    below it (the highest alone repeats every 2*pi tokens); ``amplitude`` 16 makes that margin
    ~9 logits after the 1/sqrt(head_dim) scaling. The weights stay at their random init, so the
    head's values and output are still learnt.
    """
    language_model = model.model.language_model
    attention = language_model.layers[0].self_attn
    config = language_model.config
    head_dim = attention.head_dim
    group = config.num_attention_heads // config.num_key_value_heads
    if len(offsets) > config.num_key_value_heads or any(d < 1 for d in offsets):
        raise ValueError(f"--offset-heads takes at most {config.num_key_value_heads} offsets of at least 1;"
                         f" got {list(offsets)}")
    inv_freq = language_model.rotary_emb.inv_freq
    half = head_dim // 2
    with torch.no_grad():
        q_bias = attention.q_proj.bias.view(-1, head_dim)
        k_bias = attention.k_proj.bias.view(-1, head_dim)
        for kv_head, offset in enumerate(offsets):
            q_head = kv_head * group
            for i, weight in enumerate(_OFFSET_HEAD_WEIGHTS):
                a = amplitude * math.sqrt(weight)
                w = inv_freq[i].item()
                q_bias[q_head, i], q_bias[q_head, i + half] = a, 0.0
                k_bias[kv_head, i] = a * math.cos(offset * w)
                k_bias[kv_head, i + half] = a * math.sin(offset * w)


def probe_config(tokenizer: PreTrainedTokenizerBase, init_std: float | None = None):
    """The embedded architecture's config, its weights drawn with std ``init_std`` (Qwen's 0.02 if None)."""
    config = tiny_config(tokenizer)
    if init_std is not None:
        # transformers' _init_weights reads the top-level value when there is one, else the text config's.
        config.initializer_range = config.text_config.initializer_range = init_std
    return config


def chance_levels(task: str, pairs: int, vocab: int = _MID - _LOW) -> dict[str, float]:
    """What an answer that does not do the task's lookup scores."""
    if task == "offset":
        return {"uniform over the random tokens": 1 / (_HIGH - _LOW)}
    if task == "recall":
        return {"uniform over the values": 1 / vocab, "any value of the context": 1 / pairs}
    return {"any letter": 1 / len(CHOICE_LETTERS)}


def _batches(task: str, tokenizer: PreTrainedTokenizerBase, batch_size: int, pairs: int, vocab: int,
             seed: int) -> Callable[[], Batch]:
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    if task == "offset":
        return lambda: _offset_batch(g, batch_size)
    if task == "recall":
        return lambda: _recall_batch(g, batch_size, pairs, vocab)
    return lambda: _option_batch(tokenizer, rng, batch_size, word_last=task == "option_last")


def run(task: str, *, steps: int, batch_size: int = 32, lr: float = 3e-3, pairs: int = 4, warmup: int = 50,
        every: int = 100, seed: int = 0, vocab: int = _MID - _LOW, offset_heads: Sequence[int] = (),
        init_std: float | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Train a fresh embedded-size model on ``task``; accuracy on the supervised tokens per window."""
    if task not in TASKS:
        raise ValueError(f"--task must be one of {', '.join(TASKS)}; got {task!r}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("every", every)):
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1; got {value}")
    if task == "recall" and not 2 <= pairs <= _MID - _LOW:
        raise ValueError(f"--pairs must be between 2 and {_MID - _LOW}; got {pairs}")
    if init_std is not None and not init_std > 0:
        raise ValueError(f"--init-std must be positive; got {init_std}")
    if not pairs <= vocab <= _MID - _LOW:
        raise ValueError(f"--vocab must be between --pairs ({pairs}) and {_MID - _LOW}; got {vocab}")
    # Flushed: a run takes minutes and is usually followed in a log file.
    log = log or functools.partial(print, flush=True)
    _, processor = load_backbone(ModelConfig(), device="cpu")
    tokenizer = processor.tokenizer
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(probe_config(tokenizer, init_std))
    seed_offset_heads(model, offset_heads)
    model.train()
    # Text only: the vision tower never sees an image here, so it gets no gradient and no update.
    params = [p for n, p in model.named_parameters() if ".visual." not in f".{n}"]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    next_batch = _batches(task, tokenizer, batch_size, pairs, vocab, seed)
    windows: list[dict] = []
    hits = total = 0
    loss_sum = 0.0
    t0 = time.time()
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, step / warmup)
        ids, labels, mask = next_batch()
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        # Logits at t predict the token at t + 1 (the loss's own shift).
        target = labels[:, 1:]
        supervised = target != IGNORE
        hits += ((out.logits[:, :-1].argmax(-1) == target) & supervised).sum().item()
        total += supervised.sum().item()
        loss_sum += out.loss.item()
        if step % every == 0 or step == steps:
            n = every if step % every == 0 else step % every
            windows.append({"step": step, "loss": round(loss_sum / n, 4), "accuracy": round(hits / total, 4),
                            "seconds": round(time.time() - t0, 1)})
            log(f"{task} batch {step:>5}: loss {windows[-1]['loss']:.3f}, accuracy {windows[-1]['accuracy']:.3f}"
                f" (last {n} batches), {windows[-1]['seconds']:.0f} s")
            hits = total = 0
            loss_sum = 0.0
    return {"task": task, "steps": steps, "batch_size": batch_size, "lr": lr, "pairs": pairs, "vocab": vocab,
            "offset_heads": list(offset_heads), "seed": seed,
            "init_std": model.config.get_text_config().initializer_range,
            "chance": chance_levels(task, pairs, vocab), "windows": windows, "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--steps", type=int, default=600, help="batches to train (default 600)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate after 50 warm-up batches")
    parser.add_argument("--pairs", type=int, default=4, help="key-value pairs per recall sequence")
    parser.add_argument("--vocab", type=int, default=_MID - _LOW,
                        help=f"recall: token ids keys and values are each drawn from (default {_MID - _LOW})")
    parser.add_argument("--offset-heads", default="",
                        help="comma-separated offsets, e.g. 1,2: layer 0 heads set at init to attend that far back")
    parser.add_argument("--init-std", type=float, default=None,
                        help="std of the initial weights (default: Qwen2.5-VL's initializer_range, 0.02)")
    parser.add_argument("--every", type=int, default=100, help="batches per reported accuracy window")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        offsets = [int(d) for d in args.offset_heads.split(",") if d.strip()]
    except ValueError:
        parser.error(f"--offset-heads must be comma-separated integers; got {args.offset_heads!r}")
    try:
        result = run(args.task, steps=args.steps, batch_size=args.batch_size, lr=args.lr, pairs=args.pairs,
                     every=args.every, seed=args.seed, vocab=args.vocab, offset_heads=offsets,
                     init_std=args.init_std)
    except ValueError as exc:
        parser.error(str(exc))
    print("chance: " + ", ".join(f"{k} {v:.3f}" for k, v in result["chance"].items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
