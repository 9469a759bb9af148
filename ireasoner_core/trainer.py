"""The iReasoner self-evolution loop (SPEC.md, "One training iteration"), top to bottom.

Per global iteration t, on each process:

1. take ``images_per_iteration`` images from the pool: global pool slots are consumed in order
   (``image_slot``), and the checkpoint stores how many, so a resumed run continues where the
   last one stopped even with another number of processes;
2. the Proposer samples one question per image; the Solver samples N rollouts per question;
3. parse, embed steps, compute the rewards of eq. 1-6 with lambda(t) from the global iteration;
4. one KL-regularised REINFORCE update of the Solver (eq. 7), either batched (one optimiser
   step, loss averaged over rollouts) or per rollout (one step each, as the authors' release);
   every ``proposer_update_every`` iterations the same for the Proposer with r^p = g(H);
5. EMA baselines after each reward and the KL controller of eq. 8 after each update, per role.

Data parallelism (``accelerate launch``): every process takes different images and the LoRA
gradients are averaged with one all-reduce per update; rewards entering the baselines and the
KL entering the controller are shared too, so every process holds identical adapters,
baselines and betas. Only the main process writes files and calls callbacks.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from peft.utils import load_peft_weights, set_peft_model_state_dict

from . import checkpoint as ckpt
from .callbacks import COMPLETIONS_KEY, JsonlLogger, ProgressBar, TrainerCallback, completion_rows
from .config import EMBEDDED_MODEL, TrainConfig
from .data.pool import ImagePoolError, PoolManifest, load_image, sample_pool
from .model import resolve_dtype
from .parsing import parse_question, parse_rollout
from .policy import ROLES, Policy, RolloutBatch
from .preempt import StopRequest, TrainingInterrupted, stop_on_signals
from .prompts import FALLBACK_QUESTION
from .rundir import check_resumed_pool, config_changed_error, run_dir_lock
from .storage import save_torch, writing
from .rewards import (kl_controller, leave_one_out, proposer_reward, reward_control, solver_rewards, update_baseline,
                      warmup_lambda)


@dataclass
class TrainResult:
    output_dir: Path
    iterations: int
    start_iteration: int
    solver_adapter: Path
    proposer_adapter: Path
    metrics_path: Path
    seconds: float
    images_skipped: int
    config_hash: str

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass
class RoleState:
    """Per-role scalars of eq. 7-8 that persist across iterations."""

    baseline: float = 0.0
    beta: float = 1e-3


@dataclass
class UpdateStats:
    loss: float = 0.0
    kl: float = 0.0
    grad_norm: float = 0.0


class Trainer:
    def __init__(self, cfg: TrainConfig, callbacks: Sequence[TrainerCallback] = (), backbone: tuple | None = None):
        self.cfg = cfg
        # Checked here, before minutes of model loading, not at validation: a sweep plans its
        # variants against the manifest its pool task is about to write.
        if cfg.data.manifest is not None and not Path(cfg.data.manifest).is_file():
            raise ImagePoolError(f"data.manifest: file not found: {cfg.data.manifest}")
        # cpu=True when there is no CUDA/ROCm device: accelerate then runs processes started by
        # `accelerate launch --multi_gpu` / torchrun as a gloo group (MULTI_CPU) instead of alone.
        self.acc = Accelerator(cpu=not torch.cuda.is_available())
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.out = Path(cfg.checkpoint.output_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.metrics_path = self.out / "metrics.jsonl"
        self.diag_path = self.out / "diagnostics.jsonl"
        self.main = self.acc.is_main_process
        self.jsonl = JsonlLogger(self.metrics_path)
        self.callbacks: list[TrainerCallback] = []
        if self.main:
            self.callbacks = [self.jsonl, *callbacks]
            if cfg.progress_bar:
                self.callbacks.append(ProgressBar(cfg.schedule.iterations))
        self.images_skipped = 0
        # Where the image order (re)starts: a resume sets both from the checkpoint (see image_slot).
        self._start_iteration, self._start_slots = 0, 0
        # Called as hook(phase, "start" | "end") around each timed phase, inside its wall time at the
        # end (so a GPU synchronize is counted); benchmarks read per-phase peak memory through it.
        self.phase_hooks: list[Callable[[str, str], None]] = []
        # Set by a signal handler (preempt.stop_on_signals) or by the flow running this in a thread.
        self.stop = StopRequest()

        # Identical LoRA initialisation on every process, then a distinct sampling stream per rank.
        _seed_everything(cfg.seed)
        dtype = resolve_dtype(cfg.model.dtype, self.acc.device)
        self.policy = Policy(cfg.model, cfg.lora, cfg.perf, self.acc.device, dtype, backbone=backbone)
        self.opt = {
            role: torch.optim.AdamW(self.policy.params[role], lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
            for role in ROLES
        }
        self.state = {role: RoleState(beta=cfg.kl.beta_init) for role in ROLES}
        _seed_everything(cfg.seed + 1000 * self.rank + 1)
        self.pool = self._prepare_pool()

    # ----------------------------------------------------------------------------- data
    def _prepare_pool(self) -> list[str]:
        d = self.cfg.data
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        if d.manifest is not None:
            manifest = PoolManifest.read(d.manifest)
        else:
            folder = d.image_dir
            if folder is None:
                if self.cfg.model.name_or_path != EMBEDDED_MODEL:
                    raise ImagePoolError("data.image_dir is required for a non-embedded model")
                folder = self.out / "synthetic_images"
                if self.main:
                    from .data.synthetic import generate_synthetic

                    if not (folder / "ground_truth.jsonl").exists():
                        generate_synthetic(folder, d.synthetic_images, seed=self.cfg.seed)
                self.acc.wait_for_everyone()
            manifest = sample_pool([Path(folder)], d.pool_size, self.cfg.seed, d.include_subfolders)
        self.images_skipped = len(manifest.skipped)
        self._named_skips: set[str] = set()  # images skipped at load and already named in a warning
        if self.main:
            check_resumed_pool(self.out, self.cfg.checkpoint.resume, manifest.images)
            manifest.write(self.out / "pool.json")
        return list(manifest.images)

    def _image_path(self, slot: int) -> str:
        n = len(self.pool)
        epoch, pos = divmod(slot, n)
        if epoch == 0:
            return self.pool[pos]
        order = list(self.pool)
        random.Random(self.cfg.seed + epoch).shuffle(order)
        return order[pos]

    def _slot(self, iteration: int, k: int) -> int:
        """Pool slot of this process's k-th image at a global iteration (after a resume, too)."""
        return image_slot(iteration, self.rank, k, world=self.world, per_process=self.cfg.schedule.images_per_iteration,
                          start_iteration=self._start_iteration, start_slots=self._start_slots)

    def _images_for(self, iteration: int):
        """Images of this process at a global iteration (images, unreadable ones skipped, paths).

        An unreadable image is replaced from the slots past the run's last one, which no
        iteration of this run takes, so the replacement is not seen twice (while the pool is
        larger than the run's slots).
        """
        m = self.cfg.schedule.images_per_iteration
        run_slots = image_slot(self.cfg.schedule.iterations + 1, 0, 0, world=self.world, per_process=m,
                               start_iteration=self._start_iteration, start_slots=self._start_slots)
        images, paths, skipped = [], [], 0
        for k in range(m):
            slot = self._slot(iteration, k)
            for attempt in range(len(self.pool)):
                path = self._image_path(slot + attempt * run_slots)
                try:
                    # Images over the decode cap are downscaled once and cached in the run folder.
                    images.append(load_image(path, cache_dir=self.out / "image_cache"))
                    paths.append(path)
                    break
                except ImagePoolError as err:
                    skipped += 1
                    # Named once, not only counted, so that the user can find the file (a later epoch draws it again).
                    if path not in self._named_skips:
                        self._named_skips.add(path)
                        warnings.warn(f"skipping image: {err}", stacklevel=2)
            else:
                raise ImagePoolError("no image in the pool can be decoded")
        return images, skipped, paths

    # ----------------------------------------------------------------------------- resume
    def _resume(self) -> int:
        c = self.cfg.checkpoint
        loaded = self._load_newest_checkpoint() if c.resume else None
        if loaded is None:
            if self.main and not c.resume:
                shutil.rmtree(self.ckpt_root, ignore_errors=True)
                for p in (self.metrics_path, self.diag_path):
                    p.unlink(missing_ok=True)
            if self.main and c.resume:
                # no complete checkpoint: whatever lines a crashed run left describe nothing we keep
                for p in (self.metrics_path, self.diag_path):
                    p.unlink(missing_ok=True)
            self.acc.wait_for_everyone()
            return 0
        latest, state, weights, rng = loaded
        if state["config_hash"] != self.cfg.hash() and not c.resume_changed_config:
            raise config_changed_error(self.out, state["config_hash"], self.cfg)
        for role in ROLES:
            set_peft_model_state_dict(self.policy.model, weights[role], adapter_name=role)
            self.opt[role].load_state_dict(state["optimizer"][role])
            self.state[role] = RoleState(**state["roles"][role])
        self.images_skipped = state.get("images_skipped", self.images_skipped)
        iteration = state["iteration"]
        saved_world = state.get("world", 1)
        # checkpoints written before slots were stored: every iteration had taken world x m slots
        self._start_iteration = iteration
        self._start_slots = state.get("slots_consumed",
                                      iteration * saved_world * self.cfg.schedule.images_per_iteration)
        rng_file = latest / f"rng-rank{self.rank}.pt"
        if rng is not None and saved_world == self.world:
            _set_rng(rng)
        elif self.main:
            why = (f"it was written by {saved_world} processes and this run has {self.world}"
                   if saved_world != self.world else f"{rng_file.name} is missing")
            warnings.warn(f"resuming {self.out} at iteration {iteration} without restoring the random-number "
                          f"states: {why}; sampling continues from fresh per-process seeds, so the run will not "
                          "repeat an uninterrupted one exactly (the image order and schedule still do)",
                          RuntimeWarning, stacklevel=2)
        if self.main:
            self.jsonl.truncate_after(iteration)
            JsonlLogger(self.diag_path).truncate_after(iteration)
        self.acc.wait_for_everyone()
        return iteration

    def _load_newest_checkpoint(self) -> tuple[Path, dict[str, Any], dict[str, Any], Any] | None:
        """The newest complete checkpoint that loads, read; None when there is none.

        One that fails (checksum, truncated or empty file) is set aside as ``.corrupt-<n>`` with a
        warning naming the file and the reason, and the previous one is tried.
        """
        chosen, loaded, error = None, None, None
        if self.main:
            for path in reversed(ckpt.complete_checkpoints(self.ckpt_root)):
                try:
                    loaded, chosen = self._read_checkpoint(path), path
                    break
                except ckpt.CheckpointError as err:
                    aside = ckpt.set_aside(path)
                    warnings.warn(f"checkpoint {path.name} cannot be loaded, set aside as {aside.name}: {err}",
                                  RuntimeWarning, stacklevel=2)
            aside = ckpt.set_aside_checkpoints(self.ckpt_root)
            if chosen is None and aside:
                # Starting over silently would throw away the run's progress: the user decides.
                error = (f"{self.ckpt_root}: no checkpoint can be loaded (set aside as corrupt: "
                         f"{', '.join(p.name for p in aside)}); to start over, move them elsewhere to keep them and "
                         "set checkpoint.resume=false, or use another checkpoint.output_dir")
        if self.world > 1:
            from accelerate.utils import broadcast_object_list

            shared = [str(chosen) if chosen is not None else None, error]
            broadcast_object_list(shared, from_process=0)
            chosen, error = (Path(shared[0]) if shared[0] else None), shared[1]
        if error:
            raise ckpt.CheckpointError(error)
        if chosen is not None and loaded is None:
            loaded = self._read_checkpoint(chosen)
        return (chosen, *loaded) if chosen is not None else None

    def _read_checkpoint(self, path: Path) -> tuple[dict[str, Any], dict[str, Any], Any]:
        """Checksums verified, then trainer state, adapter weights and this rank's rng state (None if absent)."""
        ckpt.verify(path)

        def read(file: Path, load: Callable[[Path], Any]) -> Any:
            try:
                return load(file)
            except Exception as err:  # noqa: BLE001  torch/pickle/safetensors raise many types for one cause: a damaged file
                reason = (str(err).strip().splitlines() or [""])[0]
                raise ckpt.CheckpointError(f"{file}: {type(err).__name__}: {reason}") from None

        state = read(path / "trainer_state.pt", lambda f: torch.load(f, map_location="cpu", weights_only=False))
        weights = {}
        for role in ROLES:
            folder = path / "adapters" / role
            named = next(iter(sorted(folder.glob("adapter_model.*"))), folder)  # name the file where there is one
            weights[role] = read(named, lambda f, d=folder: load_peft_weights(str(d), device=str(self.acc.device)))
        rng_file = path / f"rng-rank{self.rank}.pt"
        rng = read(rng_file, lambda f: torch.load(f, weights_only=False)) if rng_file.exists() else None
        return state, weights, rng

    def _save_checkpoint(self, iteration: int) -> Path | None:
        partial = None
        if self.main:
            partial = ckpt.new_partial_dir(self.ckpt_root, iteration)
        partial = _broadcast_path(self.acc, partial)
        save_torch(_get_rng(), partial / f"rng-rank{self.rank}.pt")
        if self.main:
            with writing(partial / "adapters"):  # a full disk or file-size limit names the folder
                self.policy.model.save_pretrained(str(partial / "adapters"), selected_adapters=list(ROLES))
            save_torch({
                "iteration": iteration, "config_hash": self.cfg.hash(), "world": self.world,
                "roles": {r: asdict(s) for r, s in self.state.items()},
                "optimizer": {r: o.state_dict() for r, o in self.opt.items()},
                "images_skipped": self.images_skipped,
                "slots_consumed": self._slot(iteration + 1, 0),
            }, partial / "trainer_state.pt")
        self.acc.wait_for_everyone()
        final = None
        if self.main:
            final = ckpt.finalize(partial, iteration, self.cfg.checkpoint.keep_last)
            for cb in self.callbacks:
                cb.on_checkpoint(final, iteration)
        self.acc.wait_for_everyone()
        return final

    # ----------------------------------------------------------------------------- updates
    def _sync_grads(self, role: str) -> None:
        if self.world == 1:
            return
        params = self.policy.params[role]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        flat = self.acc.reduce(flat, reduction="mean")
        k = 0
        for p in params:
            n = p.numel()
            p.grad = flat[k: k + n].view_as(p).clone()
            k += n

    def _all_rewards(self, rewards: list[float]) -> list[float]:
        """Every process's rewards in rank order, so the EMA baselines stay identical everywhere."""
        if self.world == 1:
            return list(rewards)
        t = torch.tensor(rewards, dtype=torch.float64, device=self.acc.device)
        return self.acc.gather(t).cpu().tolist()

    def _mean_all(self, value: float) -> float:
        if self.world == 1:
            return value
        return self.acc.reduce(torch.tensor([value], dtype=torch.float64, device=self.acc.device), "mean").item()

    def _step(self, role: str, batches: list[RolloutBatch], advantages: list[float],
              images_feat, ref_feat, images=None) -> tuple[float, float, float]:
        """Eq. 7 for the given rollouts, one optimiser step; returns (loss, mean token KL, grad norm).

        ``images_feat=None`` (lora.train_vision): each forward recomputes the image features from
        ``images`` under this role's adapter, so every backward has its own graph.
        """
        opt, st, kcfg = self.opt[role], self.state[role], self.cfg.kl
        opt.zero_grad(set_to_none=True)
        total = sum(b.sequences.shape[0] for b in batches)
        loss_sum, kl_tok_sum, tok_sum, k = 0.0, 0.0, 0.0, 0
        for b in batches:
            logp, kl = self.policy.completion_logprobs(
                role, b, images_feat, ref_feat, kl_estimator=kcfg.estimator, chunk_tokens=kcfg.chunk_tokens,
                temperature=self.cfg.sampling.temperature, images=images)
            mask = b.completion_mask.to(logp.dtype)
            ntok = mask.sum(1).clamp(min=1.0)
            mean_logp = (logp * mask).sum(1) / ntok
            mean_kl = (kl * mask).sum(1) / ntok
            adv = torch.tensor(advantages[k: k + b.sequences.shape[0]], dtype=logp.dtype, device=logp.device)
            per_rollout = -adv * mean_logp + st.beta * mean_kl
            (per_rollout.sum() / total).backward()
            loss_sum += per_rollout.detach().sum().item()
            kl_tok_sum += (kl.detach() * mask).sum().item()
            tok_sum += mask.sum().item()
            k += b.sequences.shape[0]
        self._sync_grads(role)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.params[role], self.cfg.optim.grad_clip).item()
        opt.step()
        opt.zero_grad(set_to_none=True)
        # eq. 8 reads the KL per completion token (eq. 7's average), over every process's tokens
        kl_mean = self._mean_all(kl_tok_sum) / max(self._mean_all(tok_sum), 1.0)
        st.beta = kl_controller(st.beta, kl_mean, kcfg)                 # eq. 8, after each update
        return loss_sum / max(total, 1), kl_mean, grad_norm

    def _update(self, role: str, batches: list[RolloutBatch], rewards: list[float], feats, ref_feats,
                images=None) -> UpdateStats:
        """Batched (one step) or per-rollout (one step each, the release) update of one role."""
        st, m = self.state[role], self.cfg.optim.baseline_momentum
        stats = UpdateStats()
        if self.cfg.schedule.update_mode == "batched":
            advantages = [r - st.baseline for r in rewards]
            stats.loss, stats.kl, stats.grad_norm = self._step(role, batches, advantages, feats, ref_feats, images)
            for r in self._all_rewards(rewards):
                st.baseline = update_baseline(st.baseline, r, m)
            return stats
        rows = [(b, i) for b in batches for i in range(b.sequences.shape[0])]
        for j, (b, i) in enumerate(rows):
            loss, kl, gn = self._step(role, [b.select([i])], [rewards[j] - st.baseline], feats, ref_feats, images)
            for r in self._all_rewards([rewards[j]]):
                st.baseline = update_baseline(st.baseline, r, m)
            stats.loss += loss / len(rows)
            stats.kl += kl / len(rows)
            stats.grad_norm += gn / len(rows)
        return stats

    # ----------------------------------------------------------------------------- one iteration
    def iteration(self, t: int) -> dict[str, Any]:
        cfg, s, pol = self.cfg, self.cfg.sampling, self.policy
        timer = _PhaseTimer(self.phase_hooks)
        images, skipped, paths = self._images_for(t)
        self.images_skipped += int(self._mean_all(skipped) * self.world) if self.world > 1 else skipped

        with timer("propose"):
            enc = pol.encode_images(images)
            with torch.no_grad(), pol.model.disable_adapter():
                ref_feats = pol.image_features(enc)
            # The vision tower carries no adapter unless lora.train_vision, so policy features equal the
            # reference's; with it, each update recomputes them under its own role's adapter (feats=None).
            feats = ref_feats if not cfg.lora.train_vision else None
            prop_batches = pol.generate("proposer", images, None, num_return_sequences=1,
                                        max_new_tokens=s.proposer_max_new_tokens, temperature=s.temperature,
                                        top_p=s.top_p, batch_size=cfg.schedule.rollout_batch_size)
            prop_texts = [tx for b in prop_batches for tx in b.texts]
            questions = [parse_question(tx, FALLBACK_QUESTION) for tx in prop_texts]

        with timer("rollouts"):
            sol_batches = pol.generate("solver", images, questions, num_return_sequences=s.num_rollouts,
                                       max_new_tokens=s.solver_max_new_tokens, temperature=s.temperature,
                                       top_p=s.top_p, batch_size=cfg.schedule.rollout_batch_size)

        with timer("rewards"):
            lam = warmup_lambda(t, cfg.schedule.iterations, cfg.rewards)
            by_image: list[list[int]] = [[] for _ in images]     # flat rollout rows per image
            texts = []
            for b in sol_batches:
                for i, tx in zip(b.image_index, b.texts):
                    by_image[i].append(len(texts))
                    texts.append(tx)
            parsed = [parse_rollout(tx, cfg.rewards.max_reasoning_steps) for tx in texts]
            embeds = pol.step_embeddings([p.steps for p in parsed], cfg.rewards.step_embed_max_tokens)
            per_image = [solver_rewards([parsed[r] for r in rows], [embeds[r] for r in rows], lam, cfg.rewards)
                         for rows in by_image]
            r_sol = [0.0] * len(texts)
            for rows, sr in zip(by_image, per_image):
                for r, v in zip(rows, sr.r_sol):
                    r_sol[r] = v
            r_prop = [proposer_reward(sr.entropy, cfg.rewards.proposer_mu_h, cfg.rewards.proposer_sigma_h)
                      for sr in per_image]
            # The logged signals stay the method's own; only what the updates see is controlled.
            key = f"{cfg.seed}/{t}/{self.acc.process_index}"
            r_sol = reward_control(r_sol, cfg.rewards.control, f"{key}/solver")
            r_prop_trained = reward_control(r_prop, cfg.rewards.control, f"{key}/proposer")

        with timer("update"):
            sol_stats = self._update("solver", sol_batches, r_sol, feats, ref_feats, enc)
            prop_updated = t % cfg.schedule.proposer_update_every == 0
            if prop_updated:
                prop_stats = self._update("proposer", prop_batches, r_prop_trained, feats, ref_feats, enc)
            else:
                prop_stats = UpdateStats(float("nan"), float("nan"), float("nan"))
                for r in self._all_rewards(r_prop_trained):       # the baseline tracks every proposer reward
                    self.state["proposer"].baseline = update_baseline(
                        self.state["proposer"].baseline, r, cfg.optim.baseline_momentum)

        record = self._record(t, lam, per_image, r_prop, parsed, sol_batches, prop_batches, sol_stats,
                              prop_stats, prop_updated, questions, timer)
        if self.main and cfg.log_completions_every and t % cfg.log_completions_every == 0:
            record[COMPLETIONS_KEY] = completion_rows(t, paths, questions, texts, parsed, by_image, per_image, r_prop)
        if self.main and t % cfg.log_diagnostics_every == 0:
            self._write_diagnostics(t, per_image[0], [embeds[r] for r in by_image[0]], questions[0],
                                    [parsed[r].answer for r in by_image[0]])
        return record

    def _record(self, t, lam, per_image, r_prop, parsed, sol_batches, prop_batches, sol, prop, prop_updated,
                questions, timer) -> dict[str, Any]:
        mean = lambda xs: float(np.mean(xs)) if len(xs) else 0.0  # noqa: E731
        step_cos, step_cos_images = defined_mean([sr.mean_step_cos for sr in per_image])
        numeric = {
            "lambda": lam,
            "proposer_reward": mean(r_prop),
            "answer_entropy": mean([sr.entropy for sr in per_image]),
            "majority_density": mean([sr.majority_density for sr in per_image]),
            "group_size": mean([sr.group_size for sr in per_image]),
            "mean_step_cos": step_cos,   # over the images that compared steps; NaN (null in JSONL) if none
            "r_ans_mean": mean([x for sr in per_image for x in sr.r_ans]),
            "r_step_mean": mean([x for sr in per_image for x in sr.r_step]),
            "r_sol_mean": mean([x for sr in per_image for x in sr.r_sol]),
            "step_positions_used": mean([sr.positions_used for sr in per_image]),
            "mean_steps_per_rollout": mean([sr.mean_steps_per_rollout for sr in per_image]),
            "kl_solver": sol.kl, "beta_solver": self.state["solver"].beta, "loss_solver": sol.loss,
            "grad_norm_solver": sol.grad_norm, "baseline_solver": self.state["solver"].baseline,
            "kl_proposer": prop.kl, "beta_proposer": self.state["proposer"].beta, "loss_proposer": prop.loss,
            "grad_norm_proposer": prop.grad_norm, "baseline_proposer": self.state["proposer"].baseline,
            "tagged_fraction": mean([1.0 if p.has_answer_tag else 0.0 for p in parsed]),
        }
        if self.world > 1:      # every process's signals, averaged over the processes that measured them
            keys = list(numeric)
            # weight: 1 per process, mean_step_cos by its images that have it; an undefined value weighs 0
            weights = [0.0 if not math.isfinite(numeric[k]) else
                       float(step_cos_images) if k == "mean_step_cos" else 1.0 for k in keys]
            sums = [numeric[k] * w if w else 0.0 for k, w in zip(keys, weights)]
            vals = torch.tensor(sums + weights, dtype=torch.float64, device=self.acc.device)
            vals = self.acc.reduce(vals, "sum").cpu().tolist()
            numeric = {k: s / w if w else math.nan for k, s, w in zip(keys, vals[:len(keys)], vals[len(keys):])}
        tokens = lambda bs, mask: int(sum(getattr(b, mask).sum().item() for b in bs))  # noqa: E731
        record = {
            "iteration": t, **numeric,
            "proposer_updated": int(prop_updated),
            "images_skipped": self.images_skipped,
            "rollouts": sum(b.sequences.shape[0] for b in sol_batches),
            "rollout_tokens": tokens(sol_batches, "completion_mask") + tokens(prop_batches, "completion_mask"),
            "prompt_tokens": tokens(sol_batches, "prompt_mask") + tokens(prop_batches, "prompt_mask"),
            **timer.seconds(),
            "question": questions[0],
            "answers": [p.answer for p in parsed[: self.cfg.sampling.num_rollouts]],
        }
        return record

    def _write_diagnostics(self, t, sr, embeds, question, answers) -> None:
        """Figure 7: leave-one-out step similarities S_ij over the dominant group and the depth profile D_j."""
        S, D = leave_one_out(embeds, sr.group)
        nan_to_none = lambda x: None if x is None or (isinstance(x, float) and math.isnan(x)) else x  # noqa: E731
        row = {"iteration": t, "group": list(sr.group), "question": question, "answers": answers,
               "S": [[nan_to_none(v) for v in r] for r in S.tolist()], "D": [nan_to_none(v) for v in D.tolist()]}
        with self.diag_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    # ----------------------------------------------------------------------------- the loop
    def _stop_agreed(self) -> bool:
        """Whether any process was asked to stop; every process gets the same answer (and signal)."""
        if self.world > 1:      # so that all ranks checkpoint the same iteration
            flag = torch.tensor([self.stop.signum or 0], dtype=torch.int64, device=self.acc.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if int(flag.item()):
                self.stop.request(int(flag.item()))
        return self.stop.requested

    def train(self) -> TrainResult:
        cfg = self.cfg
        t0 = time.perf_counter()
        start = self._resume()
        if self.main:
            cfg.to_yaml(self.out / "config.yaml")
        for cb in self.callbacks:
            cb.on_train_start(cfg, start)
        total = cfg.schedule.iterations
        last_saved: Path | None = None
        for t in range(start + 1, total + 1):
            # Asked before the first iteration (while loading or resuming): nothing new to save. Later,
            # the check after each iteration sees it; one that lands just past that check ends the next.
            if t == start + 1 and self._stop_agreed():
                raise TrainingInterrupted(self.stop.signum, None, start)
            record = self.iteration(t)
            for cb in self.callbacks:
                cb.on_iteration(record)
            stopping = self._stop_agreed()
            if t % cfg.checkpoint.every == 0 or t == total or stopping:
                last_saved = self._save_checkpoint(t)
            if stopping and t < total:
                raise TrainingInterrupted(self.stop.signum, last_saved, t)
        final = self.out / "final"
        if self.main and (start < total or not (final / "solver").is_dir()):
            partial = self.out / f"final.partial-{os.getpid()}"
            shutil.rmtree(partial, ignore_errors=True)
            with writing(partial):
                self.policy.model.save_pretrained(str(partial), selected_adapters=list(ROLES))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
        self.acc.wait_for_everyone()
        result = TrainResult(
            output_dir=self.out, iterations=total, start_iteration=start, solver_adapter=final / "solver",
            proposer_adapter=final / "proposer", metrics_path=self.metrics_path,
            seconds=time.perf_counter() - t0, images_skipped=self.images_skipped, config_hash=cfg.hash(),
        )
        if self.main:
            (self.out / "result.json").write_text(json.dumps(result.to_json(), indent=2))
            for cb in self.callbacks:
                cb.on_train_end(result)
        return result


def train(cfg: TrainConfig, callbacks: Sequence[TrainerCallback] = (), stop: StopRequest | None = None) -> TrainResult:
    """Run (or resume) one training run described by ``cfg``.

    ``stop``: given, the caller stops the training through it (a flow running it in a thread); else
    SIGTERM and SIGINT do, when this is the main thread. Either way a stop raises TrainingInterrupted
    after a checkpoint of the current iteration.
    """
    rank = int(os.environ.get("RANK", "0"))
    with stop_on_signals(stop := stop or StopRequest(), announce=rank == 0):
        if rank != 0:  # rank 0 holds the run directory for the whole group
            return _train(cfg, callbacks, stop)
        with run_dir_lock(Path(cfg.checkpoint.output_dir)):
            ckpt.remove_leftovers(Path(cfg.checkpoint.output_dir), cfg.checkpoint.keep_last)
            return _train(cfg, callbacks, stop)


def _train(cfg: TrainConfig, callbacks: Sequence[TrainerCallback], stop: StopRequest) -> TrainResult:
    trainer = Trainer(cfg, callbacks)
    trainer.stop = stop
    return trainer.train()


class _PhaseTimer:
    def __init__(self, hooks: Sequence[Callable[[str, str], None]] = ()):
        self._s: dict[str, float] = {}
        self._hooks = hooks

    def __call__(self, phase: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                for hook in timer._hooks:
                    hook(phase, "start")
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                for hook in timer._hooks:
                    hook(phase, "end")
                timer._s[phase] = timer._s.get(phase, 0.0) + time.perf_counter() - self.t

        return _Ctx()

    def seconds(self) -> dict[str, float]:
        out = {f"seconds_{k}": v for k, v in self._s.items()}
        out["seconds"] = sum(self._s.values())
        return out


def defined_mean(values: Sequence[float]) -> tuple[float, int]:
    """Mean of the finite values and how many there are; (NaN, 0) when none is.

    For per-image signals that an image may not have (``mean_step_cos`` where no step position had
    ``min_group`` members of G): an image that measured nothing neither counts as 0 nor drags the mean.
    """
    defined = [float(v) for v in values if math.isfinite(v)]
    return (math.fsum(defined) / len(defined), len(defined)) if defined else (math.nan, 0)


def image_slot(iteration: int, rank: int, k: int, *, world: int, per_process: int,
               start_iteration: int = 0, start_slots: int = 0) -> int:
    """Global pool slot of process ``rank``'s k-th image at a global iteration.

    Each iteration takes world x per_process consecutive slots, rank-major; a run resumed at
    ``start_iteration`` continues from the ``start_slots`` slots already consumed, whatever the
    number of processes that consumed them.
    """
    return start_slots + ((iteration - start_iteration - 1) * world + rank) * per_process + k


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _get_rng() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _broadcast_path(acc: Accelerator, path: Path | None) -> Path:
    if acc.num_processes == 1:
        return path
    from accelerate.utils import broadcast_object_list

    obj = [str(path) if path is not None else None]
    broadcast_object_list(obj, from_process=0)
    return Path(obj[0])
