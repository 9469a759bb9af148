"""The experiment spec: the one parameter of the ``ireasoner`` flow.

A spec names the image sources, the pool, the model, the variants (SPEC.md's ablation names,
``baseline`` for the untrained model, or explicit overrides), the seeds, the evaluation tasks
and the resources. Prefect validates it with pydantic before the flow body runs, so a bad
value (unknown variant, negative iterations, missing image folder, an override the run config
rejects) fails the flow run at parameter validation, before any training, with a message that
names the field. Every variant's run config is built once here for that reason.

``plan_variants`` expands a spec into one ``VariantPlan`` per variant and seed: the resolved
run config, its hash and a run directory that depends only on (variant, seed, config hash,
data hash), so a retried or re-run variant finds its own checkpoints and resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ireasoner_core.config import (
    NAMED_VARIANTS,
    EMBEDDED_MODEL,
    TABLE2_ABLATIONS,
    TABLE3_ABLATIONS,
    ConfigError,
    TrainConfig,
    build_config,
    build_model_config,
    flat_overrides,
    read_config_yaml,
)
from tasks.conventions import BASELINE
from tasks.provenance import REPO_ROOT

VARIANT_GROUPS: dict[str, list[str]] = {"table2": TABLE2_ABLATIONS, "table3": TABLE3_ABLATIONS}
"""Shorthands in ``variants``: every ablation of paper table 2 / table 3."""


class _Spec(BaseModel):
    # allow_inf_nan=False: as in the run config, an infinite or NaN number is never a setting.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def resolve_path(path: str | Path) -> Path:
    """Expand ``$VARS`` and ``~``; relative paths are relative to the repository root."""
    p = Path(os.path.expandvars(os.path.expanduser(str(path))))
    return p if p.is_absolute() else REPO_ROOT / p


class VariantSpec(_Spec):
    """One trained (or baseline) model of the sweep."""

    name: str = Field(description="Label of the variant in MLflow and in the results table.")
    ablation: str = Field("full", description="SPEC.md ablation name, or 'baseline' (no training).")
    overrides: dict[str, Any] = Field(default_factory=dict,
                                      description="Dotted run-config overrides, e.g. {'rewards.eta': 0.1} "
                                                  "(a nested {'rewards': {'eta': 0.1}} changes only that field).")

    @field_validator("overrides")
    @classmethod
    def _dotted(cls, v: dict[str, Any]) -> dict[str, Any]:
        return flat_overrides(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\ ,"):
            raise ValueError(f"variant name {v!r} must be non-empty without '/', '\\\\', spaces or commas")
        return v

    @field_validator("ablation")
    @classmethod
    def _ablation(cls, v: str) -> str:
        if v != BASELINE and v not in NAMED_VARIANTS:
            raise ValueError(f"unknown ablation {v!r}; known: {BASELINE}, {', '.join(NAMED_VARIANTS)}")
        return v


class ImagesSpec(_Spec):
    sources: list[str] = Field(
        default_factory=list,
        description="Folders of unlabeled images ($VARS expanded, relative = repo root). Empty: synthetic "
        "images (embedded model only).")
    pool_size: int | None = Field(None, gt=0, description="Images sampled into the pool (None = all).")
    pool_seed: int = Field(0, ge=0, description="Seed of the pool sample (and of synthetic images).")
    synthetic_images: int = Field(16, gt=0, description="Synthetic images generated when sources is empty.")
    synthetic_kinds: list[str] | None = Field(
        None, description="Kinds of synthetic image (bar, line, pie, diagram, geometry); None = all of them in turn.")

    @field_validator("synthetic_kinds")
    @classmethod
    def _known_kinds(cls, v: list[str] | None) -> list[str] | None:
        from ireasoner_core.data.synthetic import KINDS

        for i, k in enumerate(v or []):
            if k not in KINDS:
                raise ValueError(f"images.synthetic_kinds[{i}]: unknown kind {k!r}; known: {', '.join(KINDS)}")
        if v is not None and not v:
            raise ValueError("images.synthetic_kinds: an empty list; give kinds or leave it unset (all kinds)")
        return v

    @field_validator("sources")
    @classmethod
    def _folders_exist(cls, v: list[str]) -> list[str]:
        for i, s in enumerate(v):
            unset = [name for name in re.findall(r"\$\{?(\w+)\}?", s) if name not in os.environ]
            if unset:
                raise ValueError(f"images.sources[{i}]: {s!r} names the environment variable {unset[0]}, which is "
                                 f"unset on this machine; set {unset[0]} to the folder of unlabeled images (on the "
                                 "worker that runs the flow), or give images.sources a folder")
            p = resolve_path(s)
            if not p.is_dir():
                what = "is a file, not an image folder" if p.exists() else "image folder not found"
                raise ValueError(f"images.sources[{i}]: {what}: {s!r} (resolved to {p})")
        return v


class EvaluationSpec(_Spec):
    tasks: list[str] = Field(default_factory=list,
                             description="lmms-eval task names; empty = no evaluation (table lists iterations only).")
    limit: int | None = Field(None, gt=0, description="Evaluate at most this many items per task (quick runs).")
    protocol: Literal["lmms_eval", "solver"] = Field(
        "lmms_eval", description="'lmms_eval' = lmms-eval's Qwen2.5-VL prompting (paper table 1); 'solver' = the "
                                 "training prompt with reasoning (docs/evaluation.md).")
    sampled_k: int | None = Field(
        None, ge=0, description="Sampled accuracy avg@k: k answers per item at temperature 1, scored beside the "
                                "greedy one. None = 5 on the mini tasks and off on the others; 0 = off.")

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v: list[str]) -> list[str]:
        # Here, not at evaluation: a typo must fail before the pool and hours of training, not after.
        # Whether each dataset can be loaded stays an evaluation-time check (it needs the worker's cache).
        from ireasoner_core.evaluation.runner import EvaluationError, check_task_names

        try:
            check_task_names(v)
        except EvaluationError as err:
            raise ValueError(str(err)) from None
        return v


class ResourcesSpec(_Spec):
    devices_per_variant: int = Field(
        1, ge=1, description="Processes per variant; more than one launches `accelerate launch` as a subprocess.")
    launcher: Literal["auto", "in_process", "subprocess"] = Field(
        "auto", description="'auto' = in-process for one device, accelerate subprocess for several.")
    cpu: bool = Field(False, description="Pass --cpu to accelerate (gloo on CPU, for tests and laptops).")
    max_parallel_training: int = Field(
        1, ge=1, description="Value of the global concurrency limit 'ireasoner-training': training variants "
        "running at once (set it to the GPUs available / devices_per_variant).")
    dispatch: Literal["local", "workers"] = Field(
        "local", description="'local' = variants run as tasks of this flow run; 'workers' = each variant is "
        "its own flow run of deployment ireasoner-variant/variant, picked up by any worker of the pool.")
    threads_per_variant: int | None = Field(
        None, ge=1, description="CPU threads (OMP_NUM_THREADS) of each training subprocess; None = torch's default "
        "(every core). On a CPU with several trainings at once, cores / max_parallel_training.")
    retries: int = Field(2, ge=0, description="Prefect retries of a training task; each resumes from its checkpoint.")
    retry_delay_seconds: float = Field(10.0, ge=0)

    @model_validator(mode="after")
    def _threads_need_a_subprocess(self) -> "ResourcesSpec":
        in_process = self.launcher == "in_process" or (self.launcher == "auto" and self.devices_per_variant == 1)
        if self.threads_per_variant is not None and in_process:
            raise ValueError(f"resources.threads_per_variant={self.threads_per_variant}: sets the threads of training "
                             "subprocesses, but these trainings run in the flow's process; set resources.launcher: "
                             "subprocess")
        return self


class ExperimentSpec(_Spec):
    """What to run: image pool, model, variants × seeds, evaluation, resources."""

    name: str = Field("smoke", description="Sweep label: MLflow parent run name and run-directory folder.")
    base_config: str | None = Field(
        "configs/tiny.yaml", description="Run-config YAML every variant starts from (None = SPEC.md defaults).")
    model: str | None = Field(None, description="model.name_or_path ('embedded', a folder or a hub id).")
    images: ImagesSpec = Field(default_factory=ImagesSpec)
    iterations: int | None = Field(None, gt=0, description="schedule.iterations for every variant.")
    overrides: dict[str, Any] = Field(default_factory=dict,
                                      description="Dotted run-config overrides applied to every variant (a "
                                                  "nested section changes only the fields it names).")
    variants: list[str | VariantSpec] = Field(
        default_factory=lambda: ["full"],
        description="Ablation names of SPEC.md, 'baseline', 'table2'/'table3' (all of that paper table), "
        "or {name, ablation, overrides}.")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="Training seeds per variant.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    runs_dir: str = Field("runs", description="Where run directories, pools and reports go (relative = repo root).")

    @field_validator("name")
    @classmethod
    def _sweep_name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\ ,"):
            raise ValueError(f"name {v!r} must be non-empty without '/', '\\\\', spaces or commas")
        return v

    @field_validator("overrides")
    @classmethod
    def _dotted(cls, v: dict[str, Any]) -> dict[str, Any]:
        # Dotted keys only, so that a variant's or a change's overrides merge field by field.
        return flat_overrides(v)

    @field_validator("base_config")
    @classmethod
    def _config_exists(cls, v: str | None) -> str | None:
        if v is not None and not resolve_path(v).is_file():
            raise ValueError(f"base_config: file not found: {v!r} (resolved to {resolve_path(v)})")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        for i, s in enumerate(v):
            if s < 0:
                raise ValueError(f"seeds[{i}]: must be >= 0, got {s}")
        if len(set(v)) != len(v):
            raise ValueError(f"seeds: duplicates in {v}")
        return v

    @field_validator("variants", mode="after")
    @classmethod
    def _expand_variants(cls, v: list[str | VariantSpec]) -> list[str | VariantSpec]:
        out: list[str | VariantSpec] = []
        for i, item in enumerate(v):
            if isinstance(item, VariantSpec):
                out.append(item)
            elif item in VARIANT_GROUPS:
                out.extend(VARIANT_GROUPS[item])
            elif item == BASELINE or item in NAMED_VARIANTS:
                out.append(item)
            else:
                known = [BASELINE, *VARIANT_GROUPS, *NAMED_VARIANTS]
                raise ValueError(f"variants[{i}]: unknown variant {item!r}; known: {', '.join(known)}")
        names = [x.name if isinstance(x, VariantSpec) else x for x in out]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variants: duplicate names {dupes}")
        if not out:
            raise ValueError("variants: at least one variant is required")
        return out

    @model_validator(mode="after")
    def _configs_valid(self) -> ExperimentSpec:
        # Build every variant's run config now: a bad override fails here, before any training.
        # The model section first, on its own: a baseline-only sweep builds no run config, and the
        # model may come from `model`, base_config or a `model.name_or_path` override.
        try:
            model = self.model_config_dict()["name_or_path"]
        except ConfigError as err:
            raise ValueError(str(err)) from None
        if not self.images.sources and model != EMBEDDED_MODEL:
            raise ValueError(f"images.sources: required unless model is 'embedded' (synthetic images); model is {model!r}")
        _check_model_folder(model)
        for v in self.variant_specs():
            if v.ablation == BASELINE:
                continue
            try:
                self.train_config(v, seed=self.seeds[0], manifest=None)
            except ConfigError as err:
                raise ValueError(f"variant {v.name!r}: {err}") from None
        return self

    # ---------------------------------------------------------------------------------------
    def variant_specs(self) -> list[VariantSpec]:
        return [x if isinstance(x, VariantSpec) else VariantSpec(name=x, ablation=x) for x in self.variants]

    def base_dict(self) -> dict[str, Any]:
        if self.base_config is None:
            return {}
        # ConfigError is a ValueError: pydantic reports it as a validation error naming the file.
        return read_config_yaml(resolve_path(self.base_config))

    def train_config(self, variant: VariantSpec, seed: int, manifest: Path | None,
                     output_dir: Path | None = None) -> TrainConfig:
        """The resolved run config of one variant and seed (raises ConfigError naming the field)."""
        overrides: dict[str, Any] = dict(self.overrides)
        if self.iterations is not None:
            overrides["schedule.iterations"] = self.iterations
        if self.model is not None:
            overrides["model.name_or_path"] = self.model
        overrides.update(variant.overrides)
        overrides.update({"ablation": variant.ablation, "seed": seed, "run_name": f"{self.name}/{variant.name}",
                          "progress_bar": False})
        if manifest is not None:
            overrides["data.manifest"] = str(manifest)
            overrides["data.image_dir"] = None
        elif self.images.sources:
            overrides["data.image_dir"] = str(resolve_path(self.images.sources[0]))
        if output_dir is not None:
            overrides["checkpoint.output_dir"] = str(output_dir)
        return build_config(self.base_dict(), overrides, source=f"variant {variant.name}")

    def model_config_dict(self) -> dict[str, Any]:
        """The model section every variant shares (what a baseline evaluates)."""
        # The model section alone: a TrainConfig would also demand data.image_dir for any model
        # but 'embedded', and the baseline trains nothing.
        overrides = {"model.name_or_path": self.model} if self.model is not None else {}
        overrides.update({k: v for k, v in self.overrides.items() if k.startswith("model.")})
        return build_model_config(self.base_dict().get("model", {}) or {}, overrides).model_dump(mode="json")


def _check_model_folder(name: str) -> None:
    """A model given as a folder must be one, checked where the flow runs (the worker that will load
    it) before the pool is sampled: otherwise every variant and the baseline fail one by one, after
    their retries. A hub id is left to the loader. Same reading of a name as ireasoner_core.model:
    an existing path, or anything but exactly "owner/name", is a folder."""
    if name == EMBEDDED_MODEL:
        return
    p = Path(name).expanduser()
    if not p.exists() and not name.startswith(("/", ".", "~")) and name.count("/") == 1:
        return  # a hub id
    if not p.is_dir():
        what = "is a file, not a model folder" if p.exists() else "model folder not found"
        raise ValueError(f"model: {what}: {name!r} (resolved to {p.absolute()} on this machine)")
    if not (p / "config.json").is_file():
        raise ValueError(f"model: {name!r} has no config.json; expected a Qwen2.5-VL checkpoint folder")


class VariantPlan(BaseModel):
    """One unit of the sweep: a variant × seed, with its resolved config and run directory."""

    key: str                   # "<variant>-s<seed>": unique in the sweep, used in task names and the table
    variant: str
    ablation: str
    seed: int
    baseline: bool
    config: dict[str, Any]     # TrainConfig JSON (empty for the baseline)
    model: dict[str, Any]      # ModelConfig JSON
    config_hash: str
    output_dir: str


def config_identity_hash(cfg: dict[str, Any]) -> str:
    """Hash of what a config trains, independent of where data, checkpoints and caches live."""
    payload = json.loads(json.dumps(cfg))
    # What is logged, and where, is not what is trained (TrainConfig.hash leaves the same out).
    for k in ("checkpoint", "progress_bar", "run_name", "log_completions_every"):
        payload.pop(k, None)
    for k in ("manifest", "image_dir"):
        payload.get("data", {}).pop(k, None)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def plan_variants(spec: ExperimentSpec, manifest: Path | None, data_hash: str, source_hash: str
                  ) -> list[VariantPlan]:
    """Expand the spec into variant × seed plans, each with a run directory fixed by
    (variant, seed, config hash, data hash, source hash): a retry or a re-run of the same
    thing resumes there, while changed code or data never resumes another's checkpoints."""
    ident = f"{data_hash[:8]}-{source_hash[:8]}"
    runs = resolve_path(spec.runs_dir)
    model = spec.model_config_dict()
    plans = []
    for v in spec.variant_specs():
        for seed in spec.seeds:
            key = f"{v.name}-s{seed}"
            if v.ablation == BASELINE and seed != spec.seeds[0]:
                continue  # the untrained model does not depend on a training seed
            if v.ablation == BASELINE:
                h = config_identity_hash({"baseline": True, "model": model})
                plans.append(VariantPlan(key=key, variant=v.name, ablation=BASELINE, seed=seed, baseline=True,
                                         config={}, model=model, config_hash=h,
                                         output_dir=str(runs / spec.name / f"{key}-{h[:8]}-{ident}")))
                continue
            cfg = spec.train_config(v, seed, manifest).model_dump(mode="json")
            h = config_identity_hash(cfg)
            out = runs / spec.name / f"{key}-{h[:8]}-{ident}"
            cfg["checkpoint"]["output_dir"] = str(out)
            plans.append(VariantPlan(key=key, variant=v.name, ablation=v.ablation, seed=seed, baseline=False,
                                     config=cfg, model=cfg["model"], config_hash=h, output_dir=str(out)))
    return plans
