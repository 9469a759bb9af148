"""Run ``Trainer.iteration`` under one setting and measure it per phase.

Phases (the trainer's four, with its update split in two):

* ``propose``: vision tower once per image + one Proposer sample per image;
* ``rollouts``: the N Solver rollouts per image (the generate calls);
* ``rewards``: parsing, step embeddings (eq. 3) and the rewards of eq. 1-6;
* ``logprobs``: the policy and reference forwards of eq. 7 (log-probs and exact/sampled KL);
* ``update``: the rest of the trainer's update phase: backward, gradient clipping, optimiser step.

Figures per iteration and per phase: wall seconds, rollouts/s, tokens/s per device with EasyR1's
definition (prompt + response tokens of every sequence / step time / devices) and peak memory:
peak RSS on CPU (``VmHWM``, reset per phase through ``/proc/self/clear_refs``), the caching
allocator's ``max_memory_allocated`` on GPU (reset per phase). Decoding is fixed-length
(``Policy.generate(fixed_length=True)``), so token counts are the same for every configuration.
"""

from __future__ import annotations

import functools
import gc
import resource
import time
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import BaseModel

from ireasoner_core.config import TrainConfig, build_config
from ireasoner_core.trainer import Trainer

from .qwen7b import DecodeCall, decode_weight_bytes, kv_bytes_per_token

PHASES = ("propose", "rollouts", "rewards", "logprobs", "update")
PHASE_LABELS = {
    "propose": "propose (vision + Proposer sample)",
    "rollouts": "Solver rollouts",
    "rewards": "parsing + step embeddings + rewards",
    "logprobs": "log-probs + reference (eq. 7 forwards)",
    "update": "backward + optimiser step",
}


class MemoryProbe:
    """Peak memory since the last ``reset``: RSS high-water mark on CPU, allocator peak on GPU."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.kind = "cuda max_memory_allocated" if self.cuda else "peak RSS (VmHWM)"
        self._can_reset = True

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        if self._can_reset:
            try:   # Linux >= 4.0: "5" resets the process's peak RSS to its current RSS
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self._can_reset = False
                self.kind = "peak RSS since process start (ru_maxrss; per-phase reset unavailable)"

    def peak(self) -> int:
        if self.cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        status = Path("/proc/self/status")
        if self._can_reset and status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def current(self) -> int:
        if self.cuda:
            return int(torch.cuda.memory_allocated(self.device))
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


class PhaseStats(BaseModel):
    seconds: float                    # mean wall seconds per iteration
    rollouts_per_s: float             # rollouts / phase seconds
    tokens_per_s_per_device: float    # (prompt + response tokens) / phase seconds / devices
    peak_memory_bytes: int | None     # None where the phase is nested in another (logprobs in update)


class IterationStats(BaseModel):
    iteration: int
    seconds: float                     # wall time of Trainer.iteration, image loading and record included
    rollouts: int
    response_tokens: int
    prompt_tokens: int
    proposer_updated: bool
    phase_seconds: dict[str, float]
    phase_peak_memory_bytes: dict[str, int]
    solver_decode: list[DecodeCall]


class SettingResult(BaseModel):
    name: str
    overrides: dict[str, Any]
    devices: int
    memory_kind: str
    memory_before_bytes: int           # weights and runtime resident before the first iteration
    decode_weight_bytes: int           # weights one Solver decode step reads (qwen7b.decode_weight_bytes)
    kv_bytes_per_token: int            # KV cache per token over all decoder layers
    iterations: list[IterationStats]
    seconds_per_iteration: float
    rollouts_per_s: float
    tokens_per_s_per_device: float
    peak_memory_bytes: int
    phases: dict[str, PhaseStats]


def summarize(iterations: list[IterationStats], devices: int = 1) -> dict[str, Any]:
    """Totals over the measured iterations: rates are total work / total seconds, memory is the max."""
    if not iterations:
        raise ValueError("no measured iterations to summarise")
    if devices < 1:
        raise ValueError(f"devices={devices} must be >= 1")
    n = len(iterations)
    seconds = sum(it.seconds for it in iterations)
    rollouts = sum(it.rollouts for it in iterations)
    tokens = sum(it.response_tokens + it.prompt_tokens for it in iterations)
    phases = {}
    for ph in PHASES:
        s = sum(it.phase_seconds.get(ph, 0.0) for it in iterations)
        peaks = [it.phase_peak_memory_bytes[ph] for it in iterations if ph in it.phase_peak_memory_bytes]
        phases[ph] = PhaseStats(
            seconds=s / n, rollouts_per_s=rollouts / s if s > 0 else float("inf"),
            tokens_per_s_per_device=tokens / s / devices if s > 0 else float("inf"),
            peak_memory_bytes=max(peaks) if peaks else None,
        )
    return {
        "seconds_per_iteration": seconds / n,
        "rollouts_per_s": rollouts / seconds,
        "tokens_per_s_per_device": tokens / seconds / devices,
        "peak_memory_bytes": max(max(it.phase_peak_memory_bytes.values(), default=0) for it in iterations),
        "phases": phases,
    }


class _Instrument:
    """Hooks on one Trainer: per-phase peak memory, the log-prob forwards' time, generate calls."""

    def __init__(self, trainer: Trainer, probe: MemoryProbe):
        self.probe = probe
        self.peaks: dict[str, int] = {}
        self.logprob_seconds = 0.0
        self.solver_calls: list[DecodeCall] = []
        trainer.phase_hooks.append(self._hook)
        pol = trainer.policy
        generate, logprobs = pol.generate, pol.completion_logprobs

        @functools.wraps(generate)
        def fixed_length_generate(role, *args, **kwargs):
            # Fixed-length decoding: every configuration samples the same number of tokens.
            batches = generate(role, *args, fixed_length=True, **kwargs)
            if role == "solver":
                self.solver_calls += [DecodeCall(batch=b.sequences.shape[0], prompt_len=b.prompt_len,
                                                 new_tokens=b.sequences.shape[1] - b.prompt_len) for b in batches]
            return batches

        @functools.wraps(logprobs)
        def timed_logprobs(*args, **kwargs):
            probe.sync()
            t0 = time.perf_counter()
            out = logprobs(*args, **kwargs)
            probe.sync()
            self.logprob_seconds += time.perf_counter() - t0
            return out

        pol.generate = fixed_length_generate
        pol.completion_logprobs = timed_logprobs

    def _hook(self, phase: str, event: str) -> None:
        self.probe.sync()
        if event == "start":
            self.probe.reset()
        else:
            self.peaks[phase] = max(self.peaks.get(phase, 0), self.probe.peak())

    def begin(self) -> None:
        self.peaks, self.logprob_seconds, self.solver_calls = {}, 0.0, []


class SettingRunner:
    """One Trainer under ``base`` + ``overrides``, measured one iteration at a time.

    Iteration numbers decide the images (``Trainer._images_for``), so two runners measured on
    iterations that cover the same pool slots see the same images; every runner seeds the same.
    """

    def __init__(self, base: TrainConfig, name: str, overrides: dict[str, Any], *,
                 backbone_factory: Callable[[], tuple] | None = None, devices: int = 1):
        self.name, self.overrides, self.devices = name, dict(overrides), devices
        cfg = build_config(base.model_dump(mode="json"), overrides, source=f"benchmark setting {name!r}")
        self.trainer = Trainer(cfg, backbone=backbone_factory() if backbone_factory is not None else None)
        self.probe = MemoryProbe(self.trainer.acc.device)
        self._inst = _Instrument(self.trainer, self.probe)
        backbone = self.trainer.policy.backbone
        self.weight_bytes = decode_weight_bytes(backbone, "solver")
        self.kv_per_token = kv_bytes_per_token(backbone.config, next(backbone.parameters()).dtype)
        self.memory_before: int | None = None
        self.stats: list[IterationStats] = []

    def warmup(self, iterations: list[int]) -> None:
        for t in iterations:
            self.trainer.iteration(t)

    def measure(self, t: int) -> IterationStats:
        inst, probe = self._inst, self.probe
        probe.sync()
        if self.memory_before is None:
            self.memory_before = probe.current()
        inst.begin()
        t0 = time.perf_counter()
        rec = self.trainer.iteration(t)
        probe.sync()
        wall = time.perf_counter() - t0
        phase_seconds = {ph: rec.get(f"seconds_{ph}", 0.0) for ph in ("propose", "rollouts", "rewards")}
        phase_seconds["logprobs"] = inst.logprob_seconds
        phase_seconds["update"] = rec["seconds_update"] - inst.logprob_seconds
        it = IterationStats(
            iteration=t, seconds=wall, rollouts=rec["rollouts"], response_tokens=rec["rollout_tokens"],
            prompt_tokens=rec["prompt_tokens"], proposer_updated=bool(rec["proposer_updated"]),
            phase_seconds=phase_seconds, phase_peak_memory_bytes=dict(inst.peaks),
            solver_decode=list(inst.solver_calls),
        )
        self.stats.append(it)
        return it

    def result(self) -> SettingResult:
        return SettingResult(name=self.name, overrides=self.overrides, devices=self.devices,
                             memory_kind=self.probe.kind, memory_before_bytes=self.memory_before or 0,
                             decode_weight_bytes=self.weight_bytes, kv_bytes_per_token=self.kv_per_token,
                             iterations=self.stats, **summarize(self.stats, self.devices))

    def close(self) -> None:
        """Drop the Trainer (and its model) so the next setting has the memory."""
        self.trainer = self._inst = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_setting(base: TrainConfig, name: str, overrides: dict[str, Any], *, measured: list[int],
                warmup: list[int], backbone_factory: Callable[[], tuple] | None = None,
                devices: int = 1) -> SettingResult:
    """Run the ``warmup`` iterations unmeasured, then measure ``measured``, then free the model."""
    runner = SettingRunner(base, name, overrides, backbone_factory=backbone_factory, devices=devices)
    try:
        runner.warmup(warmup)
        for t in measured:
            runner.measure(t)
        return runner.result()
    finally:
        runner.close()


def covering_iterations(num_images: int, images_per_iteration: int) -> list[int]:
    """Iterations 1..K whose images are pool slots 0..num_images-1 (K = num_images / images per iteration)."""
    if num_images % images_per_iteration:
        raise ValueError(f"images={num_images} is not a multiple of images_per_iteration={images_per_iteration}")
    return list(range(1, num_images // images_per_iteration + 1))
