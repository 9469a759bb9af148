"""The two policies of iReasoner on one frozen backbone.

One Qwen2.5-VL backbone carries two LoRA adapters, ``solver`` and ``proposer``; the reference
policy of eq. 7 is the same backbone with every adapter disabled (``with disable_adapter():``),
i.e. the frozen initial policy of both roles. Everything on the hot path is batched:

* rollouts: one ``generate`` call per rollout batch, with ``num_return_sequences`` so the vision
  tower encodes each image once however many rollouts share it; or, with ``perf.decode=static``,
  the static-cache loop of ``decode.py`` (each prompt prefilled once, one compiled decode step);
* log-probabilities: one forward per rollout batch over the token ids that were sampled (never a
  re-tokenisation of decoded text), of the distribution sampling drew from (temperature applied,
  suppressed tokens removed), with the LM head in fp32; the image features are computed once per
  image and reused by the policy and the reference passes (with ``lora.train_vision`` the
  policy's are recomputed per backward under the updated role's adapter);
* the exact KL of eq. 7 is computed in chunks of completion positions, each chunk recomputed in
  backward (activation checkpointing), so the [rollouts x tokens x vocabulary] tensor is never
  held whole;
* step embeddings (eq. 3): one embedding lookup for every step of every rollout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from peft import LoraConfig, get_peft_model
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .config import LoRAConfig, ModelConfig, PerfConfig
from .decode import StaticDecoder
from .model import load_backbone
from .prompts import proposer_messages, solver_messages

ROLES = ("solver", "proposer")


def lora_target_regex(lora: LoRAConfig) -> str:
    """Module-name pattern for LoRA: the language model's projections only, unless train_vision.

    A bare name list would also match the vision tower's MLP (``visual.blocks.*.mlp.gate_proj``)
    and silently train it (SPEC.md, LoRA row).
    """
    names = "|".join(re.escape(n) for n in lora.target_modules)
    if lora.train_vision:
        return rf".*\.({names})"
    return rf"(?!.*\bvisual\.).*\.({names})"


@dataclass
class RolloutBatch:
    """Sequences sampled in one generate call, kept as token ids for the update."""

    sequences: torch.Tensor          # [B, P + T] prompt (left-padded) + completion ids
    prompt_mask: torch.Tensor        # [B, P]
    completion_mask: torch.Tensor    # [B, T] 1 up to and including the first end-of-sequence token
    mm_token_type_ids: torch.Tensor  # [B, P]
    image_grid_thw: torch.Tensor     # [B, 3]
    image_index: list[int]           # which of the iteration's images each sequence belongs to
    texts: list[str]                 # decoded completions (special tokens dropped, tags kept)
    sample_logprobs: torch.Tensor | None = None   # [B, T] log-prob of each token as sampled (decode=static)

    @property
    def prompt_len(self) -> int:
        return self.prompt_mask.shape[1]

    def select(self, rows: list[int]) -> "RolloutBatch":
        idx = torch.tensor(rows, dtype=torch.long, device=self.sequences.device)
        return RolloutBatch(
            sequences=self.sequences[idx], prompt_mask=self.prompt_mask[idx],
            completion_mask=self.completion_mask[idx], mm_token_type_ids=self.mm_token_type_ids[idx],
            image_grid_thw=self.image_grid_thw[idx], image_index=[self.image_index[r] for r in rows],
            texts=[self.texts[r] for r in rows],
            sample_logprobs=None if self.sample_logprobs is None else self.sample_logprobs[idx],
        )


@dataclass
class ImageInputs:
    """Processor output for the iteration's images, encoded once by the vision tower."""

    pixel_values: list[torch.Tensor]
    image_grid_thw: list[torch.Tensor]


class Policy:
    """Frozen backbone + ``solver`` / ``proposer`` LoRA adapters (the reference = adapters disabled)."""

    def __init__(self, model_cfg: ModelConfig, lora: LoRAConfig, perf: PerfConfig,
                 device: torch.device, dtype: torch.dtype | None = None, backbone: tuple | None = None):
        self.device = device
        # backbone=(model, processor) lets a caller build the model itself (e.g. the 7B architecture
        # with random weights for throughput benchmarks); everything else is the same code path.
        base, self.processor = backbone if backbone is not None else load_backbone(model_cfg, device=device, dtype=dtype)
        self.tokenizer = self.processor.tokenizer
        peft_cfg = LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=lora_target_regex(lora), bias="none",
        )
        self.model = get_peft_model(base, peft_cfg, adapter_name="solver")
        self.model.add_adapter("proposer", peft_cfg)
        if perf.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.model.enable_input_require_grads()
        self.use_cache = perf.use_cache
        self.params = {role: self._adapter_params(role) for role in ROLES}
        for role in ROLES:
            for p in self.params[role]:
                p.requires_grad_(True)
        self.backbone = self.model.get_base_model()   # Qwen2_5_VLForConditionalGeneration with LoRA layers
        if perf.compile:
            self.backbone.model.language_model.forward = torch.compile(self.backbone.model.language_model.forward)
        self.eos_ids = self._eos_ids()
        # Vision placeholders are never valid output, and a sampled one would be taken for an image
        # slot by the log-prob forward; the 7B practically never emits them, a tiny model can.
        cfg = self.backbone.config
        self.suppress_ids = [i for i in (cfg.image_token_id, cfg.video_token_id,
                                         getattr(cfg, "vision_start_token_id", None),
                                         getattr(cfg, "vision_end_token_id", None)) if i is not None]
        self._head_fp32: torch.Tensor | None = None
        self.decoder: StaticDecoder | None = None
        if perf.decode == "static":
            mode = perf.compile_mode or ("reduce-overhead" if device.type == "cuda" else None)
            self.decoder = StaticDecoder(self.backbone, adapter=perf.decode_adapter, compile=perf.compile_decode,
                                         compile_mode=mode,
                                         stop_check_every=perf.stop_check_every)
        self.model.eval()

    # ----------------------------------------------------------------------------- adapters
    def _adapter_params(self, role: str) -> list[torch.nn.Parameter]:
        tag = f".{role}."
        return [p for n, p in self.model.named_parameters() if "lora_" in n and tag in n]

    def activate(self, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
        self.model.set_adapter(role)
        # set_adapter may switch requires_grad off for the inactive adapter; both stay trainable
        # because each role has its own optimiser and only the active one receives gradients.
        for r in ROLES:
            for p in self.params[r]:
                p.requires_grad_(True)

    def adapter_state(self, role: str) -> dict[str, torch.Tensor]:
        tag = f".{role}."
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if "lora_" in n and tag in n}

    # ----------------------------------------------------------------------------- inputs
    def _eos_ids(self) -> list[int]:
        gc = self.backbone.generation_config
        ids = gc.eos_token_id if gc.eos_token_id is not None else self.tokenizer.eos_token_id
        ids = ids if isinstance(ids, list) else [ids]
        for tok in ("<|im_end|>", "<|endoftext|>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid not in ids:
                ids.append(tid)
        return [i for i in ids if i is not None]

    def prompt_texts(self, role: str, questions: list[str] | None, n: int) -> list[str]:
        msgs = [proposer_messages() for _ in range(n)] if role == "proposer" else [solver_messages(q) for q in questions]
        return [self.processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in msgs]

    def encode_prompts(self, role: str, images: list[Image.Image], questions: list[str] | None) -> dict:
        texts = self.prompt_texts(role, questions, len(images))
        enc = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in enc.items()}

    def encode_images(self, images: list[Image.Image]) -> ImageInputs:
        """Processor + vision tower, once per image per iteration (shared by both roles' passes)."""
        out = ImageInputs(pixel_values=[], image_grid_thw=[])
        for img in images:
            enc = self.processor.image_processor(images=[img], return_tensors="pt")
            out.pixel_values.append(enc["pixel_values"].to(self.device))
            out.image_grid_thw.append(enc["image_grid_thw"].to(self.device))
        return out

    # ----------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(self, role: str, images: list[Image.Image], questions: list[str] | None, *,
                 num_return_sequences: int, max_new_tokens: int, temperature: float, top_p: float,
                 batch_size: int | None = None, fixed_length: bool = False) -> list[RolloutBatch]:
        """Sample ``num_return_sequences`` completions per image, in as few generate calls as batch_size allows."""
        self.activate(role)
        self.model.eval()
        n = num_return_sequences
        total = len(images) * n
        bs = total if batch_size is None else max(1, min(batch_size, total))
        plan: list[tuple[list[int], int]] = []        # (image indices, sequences per image)
        if bs >= n:
            per_call = bs // n
            for s in range(0, len(images), per_call):
                plan.append((list(range(s, min(s + per_call, len(images)))), n))
        else:
            for i in range(len(images)):
                left = n
                while left > 0:
                    plan.append(([i], min(bs, left)))
                    left -= min(bs, left)
        batches = []
        for idxs, k in plan:
            enc = self.encode_prompts(role, [images[i] for i in idxs],
                                      None if questions is None else [questions[i] for i in idxs])
            # Every sampling setting explicit: Qwen2.5-VL-7B ships a near-greedy generation config
            # (top_k=1, top_p=0.001, repetition_penalty=1.05) that would otherwise apply.
            gen_kwargs = dict(
                do_sample=True, temperature=temperature, top_p=top_p, top_k=0, repetition_penalty=1.0,
                max_new_tokens=max_new_tokens, num_return_sequences=k, use_cache=self.use_cache,
                pad_token_id=self.tokenizer.pad_token_id, suppress_tokens=self.suppress_ids,
            )
            if fixed_length:   # throughput benchmarks: decode exactly max_new_tokens
                # No stop token, and none sampled either: the completion mask would otherwise cut there.
                gen_kwargs.update(eos_token_id=None, suppress_tokens=self.suppress_ids + self.eos_ids)
            sample_logprobs = None
            if self.decoder is not None:
                out = self.decoder.generate(
                    enc, num_return_sequences=k, max_new_tokens=max_new_tokens, temperature=temperature,
                    suppress_ids=gen_kwargs["suppress_tokens"],
                    eos_ids=[] if fixed_length else self.eos_ids, pad_id=self.tokenizer.pad_token_id, role=role)
                seqs, sample_logprobs = out.sequences, out.sample_logprobs
            else:
                seqs = self.model.generate(**enc, **gen_kwargs)
            batch = self._rollout_batch(enc, seqs, [i for i in idxs for _ in range(k)], k)
            batch.sample_logprobs = sample_logprobs
            batches.append(batch)
        return batches

    def _rollout_batch(self, enc: dict, seqs: torch.Tensor, image_index: list[int], k: int) -> RolloutBatch:
        p = enc["input_ids"].shape[1]
        completion = seqs[:, p:]
        is_eos = torch.zeros_like(completion, dtype=torch.bool)
        for e in self.eos_ids:
            is_eos |= completion == e
        # keep tokens up to and including the first end-of-sequence token
        after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
        completion_mask = (~after_eos).long()
        texts = self.tokenizer.batch_decode(
            [c[m.bool()] for c, m in zip(completion, completion_mask)], skip_special_tokens=True
        )
        grid = enc["image_grid_thw"].repeat_interleave(k, dim=0)
        return RolloutBatch(
            sequences=seqs, prompt_mask=enc["attention_mask"].repeat_interleave(k, dim=0),
            completion_mask=completion_mask, mm_token_type_ids=enc["mm_token_type_ids"].repeat_interleave(k, dim=0),
            image_grid_thw=grid, image_index=image_index, texts=texts,
        )

    # ----------------------------------------------------------------------------- log-probs and KL
    def _hidden(self, batch: RolloutBatch, features: list[torch.Tensor]) -> torch.Tensor:
        """Last hidden states at the positions that predict completion tokens: [B, T, H]."""
        attn = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
        mm = torch.cat([batch.mm_token_type_ids, torch.zeros_like(batch.completion_mask)], dim=1)
        feats = BaseModelOutputWithPooling(pooler_output=tuple(features[i] for i in batch.image_index))
        out = self.backbone.model(
            input_ids=batch.sequences, attention_mask=attn, image_grid_thw=batch.image_grid_thw,
            mm_token_type_ids=mm, mm_encoder_outputs={"image": feats}, use_cache=False,
        )
        h = out.last_hidden_state
        p, t = batch.prompt_len, batch.completion_mask.shape[1]
        return h[:, p - 1: p - 1 + t]

    def image_features(self, images: ImageInputs, grad: bool = False,
                       only: set[int] | None = None) -> list[torch.Tensor | None]:
        """Vision-tower output per image (under the active adapter); ``only`` limits it to those images."""
        feats: list[torch.Tensor | None] = []
        with torch.set_grad_enabled(grad):
            for i, (pv, grid) in enumerate(zip(images.pixel_values, images.image_grid_thw)):
                if only is not None and i not in only:
                    feats.append(None)
                    continue
                out = self.backbone.model.get_image_features(pv, grid, return_dict=True)
                feats.append(out.pooler_output[0])
        return feats

    def _head_weight(self) -> torch.Tensor:
        """The LM head's weight in fp32 (eq. 7 log-probs and KL): a bf16 head output rounds logits to
        ~3 digits, a noise floor far above the KL of a small adapter change. The head is frozen, so the
        fp32 copy (vocab x hidden x 4 bytes, 2.2 GB for the 7B) is made once."""
        w = self.backbone.lm_head.weight
        if w.dtype == torch.float32:
            return w
        if self._head_fp32 is None:
            self._head_fp32 = w.detach().float()
        return self._head_fp32

    def completion_logprobs(self, role: str, batch: RolloutBatch, features: list[torch.Tensor] | None,
                            ref_features: list[torch.Tensor], *, kl_estimator: str = "exact",
                            chunk_tokens: int = 64, temperature: float = 1.0,
                            images: ImageInputs | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 7 ingredients: per-token log pi(y_t) and per-token KL(pi || pi_ref), both [B, T], with grad.

        Both are of the distribution that sampling drew from: logits / temperature, with the
        suppressed vision-placeholder tokens removed. ``features=None`` (lora.train_vision)
        recomputes the image features from ``images`` with grad under this role's adapter, once per
        call, so each backward has its own graph.
        """
        self.activate(role)
        self.model.eval()
        with torch.no_grad(), self.model.disable_adapter():
            ref_h = self._hidden(batch, ref_features)
        self.model.train()
        if features is None:
            if images is None:
                raise ValueError("completion_logprobs needs `images` when `features` is None")
            features = self.image_features(images, grad=torch.is_grad_enabled(), only=set(batch.image_index))
        h = self._hidden(batch, features)
        tokens = batch.sequences[:, batch.prompt_len:]
        head = _Head(self._head_weight(), self.backbone.lm_head.bias, temperature, self.suppress_ids)
        fn = _exact_chunk if kl_estimator == "exact" else _sampled_chunk
        logps, kls = [], []
        for s in range(0, tokens.shape[1], chunk_tokens):
            sl = slice(s, s + chunk_tokens)
            if torch.is_grad_enabled():
                lp, kl = checkpoint(fn, head, h[:, sl], ref_h[:, sl], tokens[:, sl], use_reentrant=False)
            else:
                lp, kl = fn(head, h[:, sl], ref_h[:, sl], tokens[:, sl])
            logps.append(lp)
            kls.append(kl)
        # Stays in train mode: with perf.gradient_checkpointing the backward recomputes this forward,
        # and LoRA dropout must run there as it ran here (generate() switches back to eval).
        return torch.cat(logps, dim=1), torch.cat(kls, dim=1)

    # ----------------------------------------------------------------------------- step embeddings
    @torch.no_grad()
    def step_embeddings(self, steps: list[list[str]], max_tokens: int) -> list[torch.Tensor]:
        """Eq. 3: e_ij = L2-normalised mean of the backbone's input token embeddings of step j (<= max_tokens)."""
        flat = [s for rollout in steps for s in rollout]
        dim = self.backbone.get_input_embeddings().embedding_dim
        if not flat:
            return [torch.zeros(0, dim) for _ in steps]
        enc = self.tokenizer(flat, add_special_tokens=False, truncation=True, max_length=max_tokens,
                             padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        emb = self.backbone.get_input_embeddings()(ids).float()
        mean = (emb * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        e = F.normalize(mean, dim=-1).cpu()
        out, k = [], 0
        for rollout in steps:
            out.append(e[k: k + len(rollout)])
            k += len(rollout)
        return out


class _Head(torch.nn.Module):
    """Logits of the sampling distribution in fp32: (h W^T + b) / T, suppressed tokens at -inf."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float, suppress: list[int]):
        super().__init__()
        self.weight, self.bias, self.temperature, self.suppress = weight, bias, temperature, suppress

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        logits = F.linear(h.float(), self.weight, bias)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        if self.suppress:
            idx = torch.tensor(self.suppress, device=logits.device)
            logits = logits.index_fill(-1, idx, float("-inf"))
        return logits


def _exact_chunk(lm_head: torch.nn.Module, h: torch.Tensor, ref_h: torch.Tensor,
                 tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7 exact KL over the vocabulary, sum_v pi(v) (log pi(v) - log pi_ref(v)), for one chunk."""
    logp = F.log_softmax(lm_head(h).float(), dim=-1)
    ref_logp = F.log_softmax(lm_head(ref_h).float(), dim=-1)
    # The suppressed tokens have probability 0 under both; -inf - -inf there would make a NaN (and a NaN grad).
    diff = torch.where(logp.isfinite(), logp - ref_logp, 0.0)
    kl = (logp.exp() * diff).sum(-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), kl


def _sampled_chunk(lm_head: torch.nn.Module, h: torch.Tensor, ref_h: torch.Tensor,
                   tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7 KL from the sampled token only: value k3 = exp(d) - d - 1 (d = log pi_ref(y) - log pi(y)),
    gradient stopgrad(log pi(y) - log pi_ref(y)) * grad log pi(y).

    Both are unbiased for KL(pi || pi_ref) on tokens sampled from pi; differentiating k3 itself
    would give the gradient of KL(pi_ref || pi) instead. Only the sampled token's logit and the
    logsumexp are kept, never a [.., vocab] log-softmax.
    """
    def token_logp(hidden: torch.Tensor) -> torch.Tensor:
        logits = lm_head(hidden).float()
        return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)

    logp = token_logp(h)
    ref_logp = token_logp(ref_h).detach()
    d = (ref_logp - logp).detach()
    k3 = torch.exp(d) - d - 1.0
    # value k3, gradient of the score-function term (the second summand is 0 in value)
    return logp, k3 + (-d) * (logp - logp.detach())
