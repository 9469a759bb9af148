"""Rollouts with a static KV cache: prefill once per image, then one compiled decode step per token.

Hugging Face ``generate`` spends a decode step of the 7B mostly on host work (Python and operator
dispatch per decoder layer, mask building, cache bookkeeping, a stop check that syncs with the
device), not on arithmetic. This loop runs the same Hugging Face modules (the LoRA-wrapped
projections included, so the active role's adapter is read live at every step) with:

* prefill once per image: the prompt of each image is encoded once and its keys/values are copied
  into that image's N rollout rows of a static cache (``generate`` re-runs the prompt per rollout);
* M-RoPE positions kept per row: a completion token's position is its row's last prompt position
  plus one plus the step, all three M-RoPE axes equal (text tokens), so rows with prompts of
  different lengths or images of different grids stay right;
* grouped-query attention on the cache as it is (queries grouped per key/value head), with no
  copy of K/V per query head;
* fixed shapes: the batch and the cache length (the prompt plus the new tokens, rounded up to a
  multiple of ``cache_bucket``) do not change within a call, and the write position is a tensor, so
  the step compiles once per shape and replays (a CUDA graph under ``reduce-overhead`` on a GPU);
* sampling as ``generate`` samples (suppressed tokens at -inf, logits / temperature, softmax,
  ``torch.multinomial``), one draw per step for all rows, so a seed gives the same ids; the stop
  check reads the device every ``stop_check_every`` steps only.

It also returns each sampled token's log-probability under the distribution it was drawn from, the
quantity eq. 7's update recomputes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb


@dataclass
class Decoded:
    """One call's output, shaped as ``generate`` returns it plus the sampling log-probabilities."""

    sequences: torch.Tensor        # [B, P + T'] prompt rows (repeated per rollout) + completion ids
    sample_logprobs: torch.Tensor  # [B, T'] log-prob of each sampled token under the sampling distribution


def _bucket(n: int, size: int) -> int:
    return -(-n // size) * size


class RolloutKVCache:
    """The rollouts' KV cache (not transformers' ``StaticCache``: the prompt is written once per image and
    copied into its rows, and the step reads the buffers directly). Per-layer K/V buffers [B, kv_heads, S, head_dim] and the key-validity mask [B, S], reused across calls
    of the same shape so that their addresses stay fixed (what a replayed CUDA graph needs)."""

    def __init__(self, layers: int, batch: int, length: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch, kv_heads, length, head_dim)
        # Zeros, not empty: a masked slot's probability is 0, but 0 * NaN garbage would still be NaN.
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.valid = torch.zeros(batch, length, dtype=torch.bool, device=device)
        for t in (*self.keys, *self.values, self.valid):
            torch._dynamo.mark_static_address(t)

    def load_prompt(self, prompt_kv: list[tuple[torch.Tensor, torch.Tensor]], prompt_mask: torch.Tensor,
                    rows_per_prompt: int) -> None:
        """Copy each prompt's prefill K/V into its ``rows_per_prompt`` consecutive rows (row r holds prompt r // N)."""
        p = prompt_mask.shape[1]
        for i, (k, v) in enumerate(prompt_kv):
            self.keys[i][:, :, :p].copy_(k.repeat_interleave(rows_per_prompt, dim=0))
            self.values[i][:, :, :p].copy_(v.repeat_interleave(rows_per_prompt, dim=0))
        self.valid.zero_()
        self.valid[:, :p].copy_(prompt_mask.bool().repeat_interleave(rows_per_prompt, dim=0))


Spec = tuple  # (weight, bias | None, lora_A | None, lora_B | None, scaling): one projection as the step computes it
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _linear(x: torch.Tensor, spec: Spec) -> torch.Tensor:
    """x W^T + b, plus the LoRA term s * (x A^T) B^T computed as peft's Linear computes it (unmerged)."""
    w, b, a, bb, s = spec
    y = F.linear(x, w, b)
    if a is None:
        return y
    return (y + F.linear(F.linear(x.to(a.dtype), a), bb) * s).to(y.dtype)


def _rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2.5-VL's RMSNorm: normalised in fp32, scaled in the input dtype."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(x.dtype)


def _lora_linear(mod: torch.nn.Module, role: str | None) -> Spec:
    """A projection's frozen weight and bias, with ``role``'s LoRA A/B and scaling if it carries that adapter."""
    base = getattr(mod, "base_layer", mod)
    if role is not None and role in getattr(mod, "lora_A", {}):
        if role in getattr(mod, "lora_variant", {}):
            raise ValueError(f"perf.decode=static: adapter {role!r} is a LoRA variant (e.g. DoRA); only plain LoRA "
                             "is decoded by the static loop")
        return base.weight, base.bias, mod.lora_A[role].weight, mod.lora_B[role].weight, mod.scaling[role]
    return base.weight, base.bias, None, None, 1.0


class StaticDecoder:
    """Sampling loop over a Qwen2.5-VL backbone (``Qwen2_5_VLForConditionalGeneration``, possibly LoRA-wrapped).

    ``adapter`` picks how the active role's LoRA enters the step:

    * ``unmerged``: the step computes ``x W^T + s (x A^T) B^T`` from the live peft parameters; no
      extra memory, nothing to refresh, two small matmuls more per projection;
    * ``merged``: a separate copy of the decoder layers' projections (q/k/v fused into one matrix,
      gate/up into another) holds ``W + s B A`` of the active role, rewritten from the frozen weights
      at the start of every call, so it always follows the latest update and never drifts (no
      merge/unmerge cycles); it costs one more copy of those weights (13 GB for the 7B in bf16).
    """

    def __init__(self, backbone: torch.nn.Module, *, adapter: str = "merged", compile: bool = False,
                 compile_mode: str | None = None, stop_check_every: int = 8, cache_bucket: int = 64):
        if adapter not in ("merged", "unmerged"):
            raise ValueError(f"perf.decode_adapter={adapter!r}: expected 'merged' or 'unmerged'")
        self.backbone, self.adapter = backbone, adapter
        self.lm = backbone.model.language_model
        cfg = self.lm.config
        if cfg.hidden_act != "silu":
            raise ValueError(f"perf.decode=static: hidden_act {cfg.hidden_act!r} is not the silu of Qwen2.5-VL")
        self._check_lora_targets()
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.heads, self.kv_heads, self.eps = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.rms_norm_eps
        self.scaling = self.head_dim ** -0.5
        self.stop_check_every = max(1, stop_check_every)
        self.cache_bucket = max(1, cache_bucket)
        self._caches: dict[tuple, RolloutKVCache] = {}
        self._merged: list[tuple[torch.Tensor, ...]] | None = None
        self.step = self._step
        if compile:
            # fullgraph: a graph break would split the step and stop a CUDA graph from replaying it.
            self.step = torch.compile(self._step, fullgraph=True, dynamic=False, mode=compile_mode)

    def _check_lora_targets(self) -> None:
        for name, mod in self.backbone.named_modules():
            parts = name.split(".")
            if not hasattr(mod, "lora_A") or "visual" in parts:   # the vision tower runs in the prefill, as is
                continue
            if parts[-1] not in PROJECTIONS or "layers" not in parts:
                raise ValueError(f"perf.decode=static: LoRA on {name} is not decoded by the static loop (only the "
                                 f"language model's {', '.join(PROJECTIONS)})")

    # ----------------------------------------------------------------------------- weights of one call
    def _layer_weights(self, role: str | None) -> tuple:
        """Per decoder layer: (input norm, attention-input projections, o_proj, post norm, MLP-input projections, down)."""
        if self.adapter == "merged":
            return self._refresh_merged(role)
        layers = []
        for layer in self.lm.layers:
            a, m = layer.self_attn, layer.mlp
            specs = [_lora_linear(p, role) for p in (a.q_proj, a.k_proj, a.v_proj, a.o_proj,
                                                    m.gate_proj, m.up_proj, m.down_proj)]
            for spec in specs:
                for t in spec[:4]:
                    if t is not None:
                        torch._dynamo.mark_static_address(t)
            layers.append((layer.input_layernorm.weight, tuple(specs[:3]), specs[3],
                           layer.post_attention_layernorm.weight, tuple(specs[4:6]), specs[6]))
        return tuple(layers)

    def _merge_groups(self) -> list[list[tuple[torch.nn.Module, ...]]]:
        """Per layer, the projections that share one merged matrix: q/k/v, o, gate/up, down."""
        return [[(layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj), (layer.self_attn.o_proj,),
                 (layer.mlp.gate_proj, layer.mlp.up_proj), (layer.mlp.down_proj,)] for layer in self.lm.layers]

    @torch.no_grad()
    def _refresh_merged(self, role: str | None) -> tuple:
        """Write W + s B A of ``role`` into the merged copy (allocated on first use), from the frozen W every time,
        in place: no temporary of a weight's size, so the 7B's refresh costs no memory beyond the copy itself."""
        groups = self._merge_groups()
        if self._merged is None:
            # Fixed buffers, rewritten in place: a replayed CUDA graph reads them at the same addresses.
            self._merged = []
            for layer, layer_groups in zip(self.lm.layers, groups):
                specs = []
                for mods in layer_groups:
                    bases = [getattr(m, "base_layer", m) for m in mods]
                    w = torch.empty((sum(x.weight.shape[0] for x in bases), bases[0].weight.shape[1]),
                                    dtype=bases[0].weight.dtype, device=bases[0].weight.device)
                    has_bias = any(x.bias is not None for x in bases)   # a fused matrix: zeros where one has none
                    bias = torch.empty(w.shape[0], dtype=w.dtype, device=w.device) if has_bias else None
                    for t in (w, bias):
                        if t is not None:
                            torch._dynamo.mark_static_address(t)
                    specs.append((w, bias, None, None, 1.0))
                qkv, o, gu, down = specs
                self._merged.append((layer.input_layernorm.weight, (qkv,), o, layer.post_attention_layernorm.weight,
                                     (gu,), down))
        for merged, layer_groups in zip(self._merged, groups):
            for (buf, bias, *_), mods in zip((merged[1][0], merged[2], merged[4][0], merged[5]), layer_groups):
                row = 0
                for mod in mods:
                    w, b, a, bb, s = _lora_linear(mod, role)
                    rows = slice(row, row + w.shape[0])
                    buf[rows].copy_(w)
                    if a is not None:
                        buf[rows].addmm_(bb.to(buf.dtype), a.to(buf.dtype), alpha=s)
                    if bias is not None:
                        bias[rows].copy_(b) if b is not None else bias[rows].zero_()
                    row += w.shape[0]
        return tuple(self._merged)

    # ----------------------------------------------------------------------------- the decoder layers
    def _layers(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layers: tuple,
                cache: tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor] | None,
                prompt_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The decoder stack on ``x`` [B, L, H]: with ``cache`` = (keys, values, write slots, additive bias [B, S]),
        one new token per row against the static cache; without, a prompt attending causally to itself
        (``prompt_mask`` marks its padding), its per-layer K/V returned for the cache."""
        b, seq = x.shape[:2]
        nq, nkv, group = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.heads // self.kv_heads
        prompt_kv = []
        for i, (ln1, attn_in, o_proj, ln2, mlp_in, down) in enumerate(layers):
            h = _rms_norm(x, ln1, self.eps)
            outs = [_linear(h, spec) for spec in attn_in]
            q, k, v = outs[0].split([nq, nkv, nkv], dim=-1) if len(outs) == 1 else outs
            q = q.reshape(b, seq, self.heads, self.head_dim).transpose(1, 2)
            k = k.reshape(b, seq, self.kv_heads, self.head_dim).transpose(1, 2)
            v = v.reshape(b, seq, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            if cache is None:
                prompt_kv.append((k, v))
                o = _prompt_attention(q, k, v, prompt_mask, self.scaling)
            else:
                keys, values, write, bias = cache
                keys[i].index_copy_(2, write, k)
                values[i].index_copy_(2, write, v)
                # Query head j reads key/value head j // group: group the queries instead of repeating K/V.
                qg = q.reshape(b, self.kv_heads, group, self.head_dim)
                scores = torch.matmul(qg, keys[i].transpose(-1, -2)).float() * self.scaling + bias[:, None, None, :]
                o = torch.matmul(torch.softmax(scores, dim=-1).to(values[i].dtype), values[i])
                o = o.reshape(b, self.heads, seq, self.head_dim)                   # [B, heads, 1, D]
            x = x + _linear(o.transpose(1, 2).reshape(b, seq, nq), o_proj)
            h = _rms_norm(x, ln2, self.eps)
            outs = [_linear(h, spec) for spec in mlp_in]
            gate, up = outs[0].chunk(2, dim=-1) if len(outs) == 1 else outs
            x = x + _linear(F.silu(gate) * up, down)
        return _rms_norm(x, self.lm.norm.weight, self.eps), prompt_kv

    def _step(self, tokens: torch.Tensor, positions: torch.Tensor, write: torch.Tensor, layers: tuple,
              keys: list[torch.Tensor], values: list[torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
        """One decode step: logits (fp32) of the next token for every row, the tokens' K/V written at slot ``write``."""
        b = tokens.shape[0]
        x = self.lm.embed_tokens(tokens).unsqueeze(1)                              # [B, 1, H]
        # All three M-RoPE axes of a text token carry the same position.
        cos, sin = self.lm.rotary_emb(x, positions.view(1, b, 1).expand(3, b, 1))
        valid.index_fill_(1, write, True)
        # The dtype minimum, not -inf: exp underflows to 0 all the same, and no -inf - -inf can make a NaN.
        bias = torch.zeros(valid.shape, dtype=torch.float32, device=x.device).masked_fill(~valid, torch.finfo(torch.float32).min)
        x, _ = self._layers(x, cos, sin, layers, (keys, values, write, bias))
        return self.backbone.lm_head(x[:, 0]).float()

    # ----------------------------------------------------------------------------- prefill
    def _prefill(self, enc: dict, layers: tuple) -> tuple[torch.Tensor, list, torch.Tensor]:
        """Each prompt once: last-position logits [G, V], per-layer K/V, and each prompt's next text position [G]."""
        model = self.backbone.model
        ids, mask = enc["input_ids"], enc["attention_mask"]
        x = model.get_input_embeddings()(ids)
        if enc.get("pixel_values") is not None:
            feats = model.get_image_features(enc["pixel_values"], enc["image_grid_thw"], return_dict=True)
            feats = torch.cat(feats.pooler_output, dim=0).to(x.device, x.dtype)
            image_mask, _ = model.get_placeholder_mask(ids, inputs_embeds=x, image_features=feats)
            x = x.masked_scatter(image_mask, feats)
        positions, _ = model.get_rope_index(ids, mm_token_type_ids=enc["mm_token_type_ids"],
                                            image_grid_thw=enc.get("image_grid_thw"), attention_mask=mask)
        cos, sin = self.lm.rotary_emb(x, positions)
        h, kv = self._layers(x, cos, sin, layers, None, prompt_mask=mask.bool())
        logits = self.backbone.lm_head(h[:, -1]).float()
        next_pos = positions.masked_fill((mask == 0).unsqueeze(0), -1).amax(dim=(0, 2)) + 1
        return logits, kv, next_pos

    def _cache(self, batch: int, length: int, dtype: torch.dtype, device: torch.device) -> RolloutKVCache:
        key = (batch, length, dtype, device)
        if key not in self._caches:
            if len(self._caches) >= 4:   # prompt lengths vary little per run; keep memory bounded
                self._caches.pop(next(iter(self._caches)))
            self._caches[key] = RolloutKVCache(len(self.lm.layers), batch, length, self.kv_heads, self.head_dim,
                                            dtype, device)
        return self._caches[key]

    # ----------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(self, enc: dict, *, num_return_sequences: int, max_new_tokens: int, temperature: float,
                 suppress_ids: list[int], eos_ids: list[int], pad_id: int, role: str | None = None,
                 greedy: bool = False) -> Decoded:
        """Sample ``num_return_sequences`` completions per prompt row of ``enc`` (rows r*N .. r*N+N-1 for prompt r)
        under ``role``'s adapter (the prefill runs through the peft model as its active adapter stands)."""
        n, steps = num_return_sequences, max_new_tokens
        layers = self._layer_weights(role)
        logits, prompt_kv, next_pos = self._prefill(enc, layers)
        prompt_ids = enc["input_ids"].repeat_interleave(n, dim=0)
        b, p = prompt_ids.shape
        device = prompt_ids.device
        cache = self._cache(b, _bucket(p + steps, self.cache_bucket), prompt_kv[0][0].dtype, device)
        cache.load_prompt(prompt_kv, enc["attention_mask"], n)
        del prompt_kv
        positions = next_pos.repeat_interleave(n)
        suppress = torch.tensor(suppress_ids, dtype=torch.long, device=device)
        eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
        out = torch.full((b, steps), pad_id, dtype=torch.long, device=device)
        logps = torch.zeros(b, steps, dtype=torch.float32, device=device)
        done = torch.zeros(b, dtype=torch.bool, device=device)
        logits = logits.repeat_interleave(n, dim=0)
        steps_at = torch.arange(steps, dtype=torch.long, device=device) + p   # cache slot of each new token
        taken = 0
        for t in range(steps):
            if t > 0:
                logits = self.step(out[:, t - 1], positions + (t - 1), steps_at[t - 1: t], layers,
                                   cache.keys, cache.values, cache.valid)
            tok, lp = _sample(logits, temperature, suppress, greedy)
            tok = torch.where(done, pad_id, tok)
            out[:, t] = tok
            logps[:, t] = lp
            if eos.numel():
                done |= torch.isin(tok, eos)
            taken = t + 1
            if taken % self.stop_check_every == 0 and bool(done.all()):
                break
        # Trim to what generate returns: up to the step at which the last row finished.
        length = taken
        if eos.numel() and bool(done.all()):
            finished_at = torch.isin(out[:, :taken], eos).long().argmax(dim=1)   # first eos per row
            length = int(finished_at.max()) + 1
        return Decoded(sequences=torch.cat([prompt_ids, out[:, :length]], dim=1), sample_logprobs=logps[:, :length])


def _prompt_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                      scaling: float) -> torch.Tensor:
    """Causal attention of a left-padded prompt over itself (grouped-query). A padding position also sees
    itself, so that its row is never all -inf: its output is never read, but a NaN there would reach the
    cache, and a masked slot's weight 0 times NaN is NaN."""
    seq = q.shape[2]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()
    allowed = (causal & mask[:, None, :]) | torch.eye(seq, dtype=torch.bool, device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], scale=scaling, enable_gqa=True)


def _sample(logits: torch.Tensor, temperature: float, suppress: torch.Tensor,
            greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from softmax((logits with suppressed ids at -inf) / T), as ``generate`` draws it (or its
    argmax), and its log-probability under that distribution (eq. 7's log pi)."""
    scores = logits
    if suppress.numel():
        scores = scores.index_fill(-1, suppress, float("-inf"))
    if temperature != 1.0:
        scores = scores / temperature
    probs = F.softmax(scores, dim=-1)
    tok = scores.argmax(dim=-1) if greedy else torch.multinomial(probs, num_samples=1).squeeze(1)
    lp = F.log_softmax(scores, dim=-1).gather(-1, tok.unsqueeze(-1)).squeeze(-1)
    return tok, lp
