"""The ``ireasoner`` model for lmms-eval: a Qwen2.5-VL backbone with an optional Solver LoRA
adapter, under one of two prompting protocols (``protocol=`` model argument, recorded with every
result):

``lmms_eval`` (default; what paper table 1 uses)
    lmms-eval 0.7's own ``qwen2_5_vl`` simple model, step for step: system prompt "You are a
    helpful assistant.", the task's prompt text unchanged, images first as JPEG data URLs resized
    by ``qwen_vl_utils`` between ``min_pixels``/``max_pixels`` (lmms-eval's defaults), bfloat16
    weights, requests sorted and batched by lmms-eval's ``Collator`` (left padding when
    batch_size > 1), the task's ``max_new_tokens``/``temperature``/``top_p``/``num_beams`` and its
    ``until`` strings except "\n\n", decoding with ``skip_special_tokens``. Two additions: the
    adapter (peft, merged into the weights), and EvoLMM's answer extraction (``answer_extractor``,
    ``evolmm``: the text of ``<answer>`` or ``\boxed{}`` when the output has one, else the whole
    output). One deliberate difference: each request's images come from its own task (lmms-eval's
    model takes every request of a batch from the first request's task, which mixes up images when
    two tasks with equal generation settings run together).
``solver``
    The training prompt (``prompts.solver_messages``: reason in ``<think>``, answer in
    ``<answer>``); the task's post prompt is kept as part of the question. The task's
    ``max_new_tokens`` (often 16, meant for direct answers) would cut the reasoning, so the model's
    own ``max_new_tokens`` replaces it (96 for the embedded default, 512 otherwise); generation
    stops at ``</answer>`` or the end of the turn (the task's ``until`` is not applied). What
    lmms-eval scores is the text of the answer tag (``answer_extractor=solver``); greedy unless the
    task asks for a temperature.

Sampled accuracy (``sampled_k=k``, default 0 = off): after the greedy pass, every request is
answered ``k`` more times at temperature ``sample_temperature`` (1.0; top-p 1, the same prompt,
stop strings and length as its greedy answer), with ``torch`` seeded by ``sample_seed`` first so a
rerun draws the same samples. The answers wait in ``sampled`` (task, doc_id) -> [answer] for the
runner, which scores each with the task's own filters and ``process_results`` (avg@k).

Runs on CPU, CUDA and ROCm (``device``), as one process or one per device under
``accelerate launch`` (lmms-eval shards the documents by rank; each process holds a full copy).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

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

Protocol = Literal["lmms_eval", "solver"]
PROTOCOLS: tuple[str, ...] = ("lmms_eval", "solver")
ANSWER_EXTRACTORS: tuple[str, ...] = ("evolmm", "solver", "none")
DEFAULT_EXTRACTOR = {"lmms_eval": "evolmm", "solver": "solver"}
# lmms-eval 0.7.3 qwen2_5_vl defaults (models/simple/qwen2_5_vl.py).
LMMS_EVAL_SYSTEM_PROMPT = "You are a helpful assistant."
LMMS_EVAL_MIN_PIXELS = 256 * 28 * 28
LMMS_EVAL_MAX_PIXELS = 1605632
LMMS_EVAL_DTYPE = "bfloat16"
LMMS_EVAL_MAX_NEW_TOKENS = 32768   # when the task gives none
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOXED = "\\boxed{"


class _Request:
    """What the generators read of an lmms-eval ``Instance`` (its ``args``), for the avg@k copies."""

    def __init__(self, args: tuple) -> None:
        self.args = args


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


def load_adapter(model: Any, folder: Path, base: str) -> Any:
    """``model`` with the solver adapter in ``folder``; an unreadable or misfitting adapter is an AdapterError naming its file."""
    from peft import PeftModel
    from safetensors import SafetensorError

    weights = next(iter(sorted(folder.glob("adapter_model.*"))), folder)
    try:
        return PeftModel.from_pretrained(model, str(folder), adapter_name="solver", is_trainable=False)
    except (SafetensorError, OSError, EOFError) as err:
        raise AdapterError(f"adapter: {weights} is truncated or corrupt ({_first_line(err)})") from None
    except RuntimeError as err:
        # torch lists every mismatching tensor; the first names the shapes.
        lines = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        if not lines:
            raise
        raise AdapterError(f"adapter: {weights} does not fit the model {base} (trained on another base model?): "
                           f"{lines[0]}") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _last_boxed(text: str) -> str | None:
    # Braces nest inside \boxed{...} (\frac{1}{2}), so the closing one is found by counting.
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, i = 1, start + len(_BOXED)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def extract_answer(text: str, extractor: str = "evolmm") -> str:
    """The answer lmms-eval scores: EvoLMM's rule (last ``<answer>``, else last ``\\boxed{}``, else all)."""
    if extractor == "none":
        return text
    if extractor == "solver":
        return parse_rollout(text, _STEP_BUDGET).raw_answer
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return tags[-1].strip()
    boxed = _last_boxed(text)
    return boxed.strip() if boxed is not None else text


def progress_bar(total: int, rank: int) -> Any:
    """The generation bar: on rank 0 only, and off wherever tqdm's own settings say so (``TQDM_DISABLE=1``).

    An explicit ``disable=`` argument overrides tqdm's ``TQDM_*`` environment settings, so it is
    passed only to turn the other ranks' bars off.
    """
    from tqdm import tqdm

    return tqdm(total=total, desc="ireasoner generating", **({} if rank == 0 else {"disable": True}))


def default_device() -> str:
    # ROCm builds of torch report their GPUs through the cuda API as well.
    return "cuda" if torch.cuda.is_available() else "cpu"


class IReasonerLMM(lmms):
    """lmms-eval model ``ireasoner``: Qwen2.5-VL (+ Solver LoRA) under lmms-eval's or the Solver's protocol."""

    is_simple = True

    def __init__(
        self,
        pretrained: str = EMBEDDED_MODEL,
        adapter: str | None = None,
        protocol: str = "lmms_eval",
        answer_extractor: str | None = None,
        batch_size: int | str | None = None,
        device: str | None = None,
        max_new_tokens: int | None = None,
        dtype: str | None = None,
        attn_implementation: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        system_prompt: str = LMMS_EVAL_SYSTEM_PROMPT,
        math_judge: str = "local",
        merge_adapter: bool = True,
        model_cfg: ModelConfig | None = None,
        max_batch_size: int | None = None,  # lmms-eval's CLI always passes it; auto batch sizing is not supported
        sampled_k: int = 0,
        sample_temperature: float = 1.0,
        sample_seed: int = 0,
        sampled_tasks: list[str] | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise TypeError(
                f"ireasoner model_args: unknown argument(s) {sorted(unknown)}; known: pretrained, adapter, protocol, "
                "answer_extractor, batch_size, device, max_new_tokens, dtype, attn_implementation, min_pixels, "
                "max_pixels, system_prompt, math_judge, merge_adapter, sampled_k, "
                "sample_temperature, sample_seed")
        if protocol not in PROTOCOLS:
            raise ValueError(f"ireasoner model_args: protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
        self.protocol = protocol
        self.sampled_k = int(sampled_k)
        self.sample_temperature = float(sample_temperature)
        if self.sampled_k < 0:
            raise ValueError(f"ireasoner model_args: sampled_k must be >= 0 (0 = greedy only), got {sampled_k}")
        if self.sampled_k and self.sample_temperature <= 0:
            raise ValueError(f"ireasoner model_args: sample_temperature must be > 0, got {sample_temperature}")
        self.sample_seed = int(sample_seed)
        # None: every task; the runner limits avg@k to the tasks it was asked for.
        self.sampled_tasks = set(sampled_tasks) if sampled_tasks is not None else None
        self.sampled: dict[tuple[str, int], list[str]] = {}
        self.sampled_generations: dict[tuple[str, int], list[str]] = {}
        self.answer_extractor = answer_extractor or DEFAULT_EXTRACTOR[protocol]
        if self.answer_extractor not in ANSWER_EXTRACTORS:
            raise ValueError(f"ireasoner model_args: answer_extractor must be one of {list(ANSWER_EXTRACTORS)}, "
                             f"got {self.answer_extractor!r}")
        from .math_judge import install as install_math_judge

        # Before lmms-eval builds the tasks (it creates the model first): MathVista's extractor.
        install_math_judge(math_judge)
        self.math_judge = math_judge
        # A wrong adapter path fails before minutes of model loading.
        self.adapter_path: Path | None = find_adapter_dir(adapter) if adapter else None
        lmms_eval_protocol = protocol == "lmms_eval"
        if model_cfg is None:
            fields: dict[str, Any] = {"name_or_path": str(pretrained)}
            if dtype or not lmms_eval_protocol:
                fields["dtype"] = dtype or "auto"
            if attn_implementation:
                fields["attn_implementation"] = attn_implementation
            if max_pixels is not None and not lmms_eval_protocol:
                fields["max_image_pixels"] = int(max_pixels)
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

        from ..model import load_backbone, resolve_dtype, resolve_model_path

        # lmms-eval's qwen2_5_vl always loads bfloat16; an explicit dtype argument still wins.
        load_dtype = resolve_dtype(dtype or (LMMS_EVAL_DTYPE if lmms_eval_protocol else model_cfg.dtype), self._device)
        model, self.processor = load_backbone(model_cfg, device=self._device, dtype=load_dtype)
        self.dtype = str(load_dtype).removeprefix("torch.")
        if self.adapter_path is not None:
            from ..quiet import quiet_known_warnings

            quiet_known_warnings()  # peft's read of a deprecated transformers property
            model = load_adapter(model, self.adapter_path, model_cfg.name_or_path)
            if merge_adapter:
                # W + BA folded into W once: generation then runs at the base model's speed (unmerged
                # LoRA layers made CPU evaluation of the embedded model 3-5x slower).
                model = model.merge_and_unload()
            model.eval()
        self._model = model
        self.tokenizer = self.processor.tokenizer
        self.system_prompt = system_prompt
        self.min_pixels = int(min_pixels) if min_pixels is not None else LMMS_EVAL_MIN_PIXELS
        self.max_pixels = int(max_pixels) if max_pixels is not None else LMMS_EVAL_MAX_PIXELS
        if lmms_eval_protocol:
            from transformers import AutoProcessor, AutoTokenizer

            # As lmms-eval builds them: the checkpoint's processor with the pixel limits given to it,
            # and the tokenizer as saved (its eos and pad ids are what generate() is given).
            source = resolve_model_path(model_cfg)
            if Path(source).expanduser().is_dir():   # a '~/…' folder, read as load_backbone reads it
                source = str(Path(source).expanduser())
            self.processor = AutoProcessor.from_pretrained(source, max_pixels=self.max_pixels,
                                                           min_pixels=self.min_pixels)
            self.tokenizer = AutoTokenizer.from_pretrained(source)

        if batch_size in (None, "auto") or str(batch_size).startswith("auto"):
            batch_size = EMBEDDED_BATCH_SIZE if embedded else DEFAULT_BATCH_SIZE
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"ireasoner model_args: batch_size must be >= 1, got {batch_size}")
        if lmms_eval_protocol:
            self.max_new_tokens = int(max_new_tokens) if max_new_tokens else None   # None: the task's
        else:
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
        """model_args win over the CLI's ``--batch_size``/``--device`` (its batch_size defaults to 1).

        A bad model argument (adapter or model path, protocol, unknown name) ends the process with
        status 1 and the message: lmms-eval's command line otherwise logs any error and exits 0.
        """
        from lmms_eval import utils

        from ..model import ModelLoadError

        args = utils.simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in args}
        try:
            return cls(**args, **extra)
        except (AdapterError, ModelLoadError, TypeError, ValueError) as err:
            raise SystemExit(f"ireasoner: {err}") from err

    @property
    def batch_sizes(self) -> dict[str, str]:
        """What lmms-eval writes as ``config.batch_sizes`` in its results JSON.

        lmms-eval 0.7 records nothing else about the model object, so this is where its results
        JSON gets the batch size actually used, the protocol and the answer extractor.
        """
        return {"ireasoner": f"{self.batch_size} (protocol={self.protocol}, answer_extractor={self.answer_extractor})"}

    @property
    def info(self) -> dict[str, Any]:
        """Protocol and answer extraction, recorded with every result."""
        return {"protocol": self.protocol, "answer_extractor": self.answer_extractor, "math_judge": self.math_judge,
                "batch_size": self.batch_size, "dtype": self.dtype,
                **({"min_pixels": self.min_pixels, "max_pixels": self.max_pixels, "system_prompt": self.system_prompt}
                   if self.protocol == "lmms_eval" else {"max_new_tokens": self.max_new_tokens}),
                **({"sampled_k": self.sampled_k, "sample_temperature": self.sample_temperature,
                    "sample_seed": self.sample_seed} if self.sampled_k else {})}

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

    def _visuals(self, doc_to_visual, task: str, split: str, doc_id: int) -> list[Image.Image]:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        images = [v for v in visuals if isinstance(v, Image.Image)]
        if len(images) != len(visuals):
            raise ValueError(f"task {task}: doc {doc_id} has non-image visuals (video/audio), which the ireasoner "
                             "model does not handle")
        return images

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Generations for the requests, each reduced to its answer by ``answer_extractor``."""
        generate = self._generate_until_lmms_eval if self.protocol == "lmms_eval" else self._generate_until_solver
        pairs = generate(requests)
        for req, (text, _) in zip(requests, pairs):
            self.generations[(req.args[4], int(req.args[3]))] = text
        if self.sampled_k:
            self._sample(requests, generate)
        return [answer for _, answer in pairs]

    def _sample(self, requests: list[Instance], generate) -> None:
        """avg@k: ``sampled_k`` answers per request at ``sample_temperature``, seeded by ``sample_seed``."""
        chosen = [r for r in requests if self.sampled_tasks is None or r.args[4] in self.sampled_tasks]
        if not chosen:
            return
        k = self.sampled_k
        copies = []
        for req in chosen:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            settings = {**(gen_kwargs or {}), "temperature": self.sample_temperature, "top_p": 1.0}
            copies += [_Request((context, settings, doc_to_visual, doc_id, task, split))] * k
        # Greedy decoding draws no random numbers, so seeding here makes the samples depend only
        # on the seed, the requests and the batch size, not on what ran before.
        torch.manual_seed(self.sample_seed)
        pairs = generate(copies, cache=False)
        for i, req in enumerate(chosen):
            key = (req.args[4], int(req.args[3]))
            self.sampled_generations[key] = [text for text, _ in pairs[i * k:(i + 1) * k]]
            self.sampled[key] = [answer for _, answer in pairs[i * k:(i + 1) * k]]

    # ------------------------------------------------------------------ protocol=lmms_eval
    def _lmms_eval_messages(self, context: str, images: list[Image.Image]) -> list[dict]:
        from lmms_eval.models.model_utils.media_encoder import encode_image_to_data_url

        # lmms-eval round-trips every image through JPEG (quality 85) before qwen_vl_utils resizes it.
        content = [{"type": "image", "min_pixels": self.min_pixels, "max_pixels": self.max_pixels,
                    "image": encode_image_to_data_url(im, image_format="JPEG", mime_type="image/jpeg",
                                                      convert_rgb=True, quality=85)} for im in images]
        text = context.replace("<image>", "")
        return [{"role": "system", "content": self.system_prompt},
                {"role": "user", "content": content + [{"type": "text", "text": text}]}]

    @torch.no_grad()
    def _generate_until_lmms_eval(self, requests: list[Instance], cache: bool = True) -> list[tuple[str, str]]:
        from lmms_eval import utils
        from qwen_vl_utils import process_vision_info

        def by_length(args):  # lmms-eval's order: longest prompt first, then the prompt text
            return -len(self.tokenizer.encode(args[0])), args[0]

        reorder = utils.Collator([r.args for r in requests], by_length, grouping=True)
        answers: list[tuple[str, str]] = []
        bar = progress_bar(len(requests), self.rank)
        for chunk in reorder.get_batched(n=self.batch_size, batch_fn=None):
            contexts, all_gen_kwargs, doc_to_visual, doc_ids, tasks, splits = zip(*chunk)
            gen_kwargs = dict(all_gen_kwargs[0] or {})
            until = gen_kwargs.get("until", [self.tokenizer.decode(self.tokenizer.eos_token_id)])
            until = [until] if isinstance(until, str) else list(until)
            # lmms-eval drops "\n\n" (the default stop) for Qwen2.5-VL: it truncated answers.
            until = [u for u in until if u and u != "\n\n"]
            messages = [self._lmms_eval_messages(c, self._visuals(v, t, s, d))
                        for c, v, t, s, d in zip(contexts, doc_to_visual, tasks, splits, doc_ids)]
            texts = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            images, videos = process_vision_info(messages)
            inputs = self.processor(text=texts, images=images, videos=videos, padding=True, return_tensors="pt",
                                    padding_side="left" if self.batch_size > 1 else "right").to(self._device)
            settings = {"max_new_tokens": LMMS_EVAL_MAX_NEW_TOKENS, "temperature": 0.0, "top_p": None, "num_beams": 1,
                        **gen_kwargs}
            if self.max_new_tokens:
                settings["max_new_tokens"] = self.max_new_tokens
            sample = settings["temperature"] > 0
            out = self._model.generate(
                **inputs, eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
                do_sample=sample, temperature=settings["temperature"] if sample else None,
                top_p=settings["top_p"] if sample else None, num_beams=settings["num_beams"],
                max_new_tokens=settings["max_new_tokens"], use_cache=True,
            )
            completions = self.processor.batch_decode([o[len(i):] for i, o in zip(inputs["input_ids"], out)],
                                                      skip_special_tokens=True, clean_up_tokenization_spaces=False)
            for text, context in zip(completions, contexts):
                for stop in until:
                    text = text.split(stop)[0]
                answer = extract_answer(text, self.answer_extractor)
                answers.append((text, answer))
                if cache:
                    self.cache_hook.add_partial("generate_until", (context, gen_kwargs), answer)
            bar.update(len(chunk))
        bar.close()
        return reorder.get_original(answers)

    # ------------------------------------------------------------------ protocol=solver
    def _solver_prompt(self, context: str, n_images: int) -> str:
        question = _IMAGE_PLACEHOLDER.sub("", context).strip()
        messages = solver_messages(question)
        content = [c for c in messages[0]["content"] if c.get("type") != "image"]
        messages[0]["content"] = [{"type": "image"} for _ in range(n_images)] + content
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @torch.no_grad()
    def _solver_generate(self, prompts: list[str], images: list[list[Image.Image]], gen_kwargs: dict) -> list[str]:
        flat = [im.convert("RGB") for ims in images for im in ims]
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

    def _generate_until_solver(self, requests: list[Instance], cache: bool = True) -> list[tuple[str, str]]:
        prepared = []
        for idx, req in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            images = self._visuals(doc_to_visual, task, split, doc_id)
            prompt = self._solver_prompt(context, len(images))
            key = (float((gen_kwargs or {}).get("temperature") or 0.0), float((gen_kwargs or {}).get("top_p") or 1.0))
            prepared.append((idx, prompt, images, gen_kwargs or {}, key, task, doc_id))
        # Same decoding settings per batch; within them, similar prompt lengths (less padding).
        prepared.sort(key=lambda p: (p[4], -len(p[1])))
        answers: list[tuple[str, str]] = [("", "")] * len(requests)
        bar = progress_bar(len(requests), self.rank)
        start = 0
        while start < len(prepared):
            batch = [prepared[start]]
            while (start + len(batch) < len(prepared) and len(batch) < self.batch_size
                   and prepared[start + len(batch)][4] == batch[0][4]):
                batch.append(prepared[start + len(batch)])
            texts = self._solver_generate([p[1] for p in batch], [p[2] for p in batch], batch[0][3])
            for p, text in zip(batch, texts):
                answers[p[0]] = (text, extract_answer(text, self.answer_extractor))
            bar.update(len(batch))
            start += len(batch)
        bar.close()
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("the ireasoner model answers generate_until tasks only (no loglikelihood tasks)")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("the ireasoner model does not support multi-round tasks")
