"""The ``ireasoner`` model for lmms-eval: a Qwen2.5-VL backbone with an optional Solver LoRA
adapter, prompted exactly as the Solver is during training.

Choices that differ from lmms-eval's own Qwen2.5-VL model, and why:

* Prompt: the task's question text goes through ``prompts.solver_messages`` and the processor's
  chat template, as in training, so the Solver is asked to reason in ``<think>`` and answer in
  ``<answer>``. What lmms-eval scores is the text of the answer tag (``parse_rollout``'s
  ``raw_answer``, un-normalised so that relaxed accuracy sees numbers as written); the whole
  generation is kept in ``self.generations`` for the per-sample logs.
* Length: the task's ``max_new_tokens`` (often 16, meant for direct answers) would cut the
  reasoning before the answer, so this model's own ``max_new_tokens`` replaces it: 96 for the
  embedded default (its warm-started traces are short and CPU time is the budget), 512 otherwise.
  Generation stops at ``</answer>`` or the end-of-turn token; the task's ``until`` strings are
  not applied, since a blank line inside the reasoning is not the end of the answer.
* Decoding is greedy unless the task asks for a temperature; batches are sorted by prompt length
  to keep padding small.

Runs on CPU, CUDA and ROCm (``device``), as one process or one per device under
``accelerate launch`` (lmms-eval shards the documents by rank; each process holds a full copy).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image

from ..config import EMBEDDED_MODEL, ModelConfig
from ..parsing import parse_rollout
from ..prompts import solver_messages

EMBEDDED_MAX_NEW_TOKENS = 96
DEFAULT_MAX_NEW_TOKENS = 512
EMBEDDED_BATCH_SIZE = 64
DEFAULT_BATCH_SIZE = 8
ANSWER_STOP = "</answer>"
# lmms-eval prompts may carry image placeholders for models that interleave; ours puts images first.
_IMAGE_PLACEHOLDER = re.compile(r"<image(?:\s*\d+)?>")
_STEP_BUDGET = 10  # steps are not scored here; parse_rollout needs a bound


class AdapterError(ValueError):
    """The adapter path does not hold a peft adapter; the message names the path."""


def find_adapter_dir(path: str | Path) -> Path:
    """The folder with ``adapter_config.json``: ``path`` itself or its single ``solver`` child.

    peft's ``save_pretrained`` writes a named (non-default) adapter into ``<dir>/<name>/``, so a
    checkpoint's ``adapters/solver`` may hold the files one level down.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise AdapterError(f"adapter: path not found: {p}")
    if (p / "adapter_config.json").is_file():
        return p
    if p.is_dir():
        candidates = [p / "solver", *sorted(c for c in p.iterdir() if c.is_dir())]
        nested = [c for c in candidates if (c / "adapter_config.json").is_file()]
        if nested:
            return nested[0]
    raise AdapterError(f"adapter: {p} holds no adapter_config.json (expected a peft adapter saved with save_pretrained)")


def default_device() -> str:
    # ROCm builds of torch report their GPUs through the cuda API as well.
    return "cuda" if torch.cuda.is_available() else "cpu"


class IReasonerLMM(lmms):
    """lmms-eval model ``ireasoner``: Qwen2.5-VL (+ Solver LoRA) with the training prompt."""

    is_simple = True

    def __init__(
        self,
        pretrained: str = EMBEDDED_MODEL,
        adapter: str | None = None,
        batch_size: int | str | None = None,
        device: str | None = None,
        max_new_tokens: int | None = None,
        dtype: str = "auto",
        attn_implementation: str = "sdpa",
        max_pixels: int | None = None,
        embedded_cache_dir: str | None = None,
        merge_adapter: bool = True,
        model_cfg: ModelConfig | None = None,
        max_batch_size: int | None = None,  # lmms-eval's CLI always passes it; auto batch sizing is not supported
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise TypeError(
                f"ireasoner model_args: unknown argument(s) {sorted(unknown)}; known: pretrained, adapter, batch_size, "
                "device, max_new_tokens, dtype, attn_implementation, max_pixels, embedded_cache_dir, merge_adapter")
        if model_cfg is None:
            fields: dict[str, Any] = {"name_or_path": str(pretrained), "dtype": dtype,
                                      "attn_implementation": attn_implementation}
            if max_pixels is not None:
                fields["max_image_pixels"] = int(max_pixels)
            if embedded_cache_dir:
                fields["embedded_cache_dir"] = Path(embedded_cache_dir)
            model_cfg = ModelConfig(**fields)
        self.model_cfg = model_cfg
        embedded = model_cfg.name_or_path == EMBEDDED_MODEL

        from accelerate import Accelerator

        accelerator = Accelerator()
        if accelerator.num_processes > 1:
            self._device = accelerator.device
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        else:
            self._device = torch.device(device or default_device())
        self.accelerator = accelerator

        from ..model import load_backbone

        model, self.processor = load_backbone(model_cfg, device=self._device)
        self.adapter_path: Path | None = None
        if adapter:
            from peft import PeftModel

            self.adapter_path = find_adapter_dir(adapter)
            model = PeftModel.from_pretrained(model, str(self.adapter_path), adapter_name="solver", is_trainable=False)
            if merge_adapter:
                # W + BA folded into W once: generation then runs at the base model's speed (unmerged
                # LoRA layers made CPU evaluation of the embedded model 3-5x slower).
                model = model.merge_and_unload()
            model.eval()
        self._model = model
        self.tokenizer = self.processor.tokenizer

        if batch_size in (None, "auto") or str(batch_size).startswith("auto"):
            batch_size = EMBEDDED_BATCH_SIZE if embedded else DEFAULT_BATCH_SIZE
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"ireasoner model_args: batch_size must be >= 1, got {batch_size}")
        default_len = EMBEDDED_MAX_NEW_TOKENS if embedded else DEFAULT_MAX_NEW_TOKENS
        self.max_new_tokens = int(max_new_tokens) if max_new_tokens else default_len

        cfg = getattr(model, "config", None)
        # Same suppression as the training rollouts: vision placeholders are never valid output.
        self.suppress_ids = [i for i in (getattr(cfg, "image_token_id", None), getattr(cfg, "video_token_id", None),
                                         getattr(cfg, "vision_start_token_id", None),
                                         getattr(cfg, "vision_end_token_id", None)) if i is not None]
        self.eos_ids = self._eos_ids()
        self.generations: dict[tuple[str, int], str] = {}

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> IReasonerLMM:
        """model_args win over the CLI's ``--batch_size``/``--device`` (its batch_size defaults to 1)."""
        from lmms_eval import utils

        args = utils.simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in args}
        return cls(**args, **extra)

    # lmms-eval reads these
    @property
    def model(self):
        return self._model

    @property
    def device(self) -> torch.device:
        return self._device

    def _eos_ids(self) -> list[int]:
        ids = self._model.generation_config.eos_token_id
        ids = list(ids) if isinstance(ids, (list, tuple)) else [ids]
        for tok in ("<|im_end|>", "<|endoftext|>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid not in ids:
                ids.append(tid)
        return [i for i in ids if i is not None]

    # ----------------------------------------------------------------------------- prompting
    def _prompt(self, context: str, n_images: int) -> str:
        question = _IMAGE_PLACEHOLDER.sub("", context).strip()
        messages = solver_messages(question)
        content = [c for c in messages[0]["content"] if c.get("type") != "image"]
        messages[0]["content"] = [{"type": "image"} for _ in range(n_images)] + content
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _visuals(self, doc_to_visual, task: str, split: str, doc_id: int) -> list[Image.Image]:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        images = [v.convert("RGB") for v in visuals if isinstance(v, Image.Image)]
        if len(images) != len(visuals):
            raise ValueError(f"task {task}: doc {doc_id} has non-image visuals (video/audio), which the ireasoner "
                             "model does not handle")
        return images

    @torch.no_grad()
    def _generate(self, prompts: list[str], images: list[list[Image.Image]], gen_kwargs: dict) -> list[str]:
        flat = [im for ims in images for im in ims]
        enc = self.processor(text=prompts, images=flat or None, padding=True, return_tensors="pt")
        enc = {k: v.to(self._device) if isinstance(v, torch.Tensor) else v for k, v in enc.items()}
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_p": float(gen_kwargs.get("top_p") or 1.0)}
        out = self._model.generate(
            **enc, **sampling, max_new_tokens=self.max_new_tokens, eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id, suppress_tokens=self.suppress_ids or None,
            stop_strings=[ANSWER_STOP], tokenizer=self.tokenizer,
        )
        completion = out[:, enc["input_ids"].shape[1]:]
        return self.tokenizer.batch_decode(completion, skip_special_tokens=True)

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Solver generations for the requests, answered with the text inside ``<answer>``."""
        from tqdm import tqdm

        prepared = []
        for idx, req in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            images = self._visuals(doc_to_visual, task, split, doc_id)
            prompt = self._prompt(context, len(images))
            key = (float((gen_kwargs or {}).get("temperature") or 0.0), float((gen_kwargs or {}).get("top_p") or 1.0))
            prepared.append((idx, prompt, images, gen_kwargs or {}, key, task, doc_id))
        # Same decoding settings per batch; within them, similar prompt lengths (less padding).
        prepared.sort(key=lambda p: (p[4], -len(p[1])))
        answers: list[str] = [""] * len(requests)
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="ireasoner generating")
        start = 0
        while start < len(prepared):
            batch = [prepared[start]]
            while (start + len(batch) < len(prepared) and len(batch) < self.batch_size
                   and prepared[start + len(batch)][4] == batch[0][4]):
                batch.append(prepared[start + len(batch)])
            texts = self._generate([p[1] for p in batch], [p[2] for p in batch], batch[0][3])
            for p, text in zip(batch, texts):
                self.generations[(p[5], int(p[6]))] = text
                answers[p[0]] = parse_rollout(text, _STEP_BUDGET).raw_answer
            bar.update(len(batch))
            start += len(batch)
        bar.close()
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("the ireasoner model answers generate_until tasks only (no loglikelihood tasks)")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("the ireasoner model does not support multi-round tasks")
