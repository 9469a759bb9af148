"""Run configuration: every knob of the iReasoner trainer, with SPEC.md's defaults.

One pydantic model per concern (model, LoRA, sampling, rewards, KL, optimiser, schedule,
data, checkpointing, performance), gathered in ``TrainConfig``. Validation happens at load
time so that a wrong value fails before any model is built, with an error naming the field
and the value. Ablations (paper tables 2 and 3) are named presets of field overrides, applied
by ``apply_ablation``; the resulting config records which one it came from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

EMBEDDED_MODEL = "embedded"


class _Section(BaseModel):
    # extra="forbid": a typo in a YAML key is an error, not a silently ignored setting.
    # allow_inf_nan=False: an infinite or NaN float (`lr: .inf`) passes every bound check and
    # would only surface as a NaN loss a few iterations in.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Section):
    name_or_path: str = Field(
        EMBEDDED_MODEL,
        description="'embedded' for the tiny Qwen2.5-VL shipped with the code, a local directory, or a hub id "
        "such as Qwen/Qwen2.5-VL-7B-Instruct (used only if its weights are already in the local cache "
        "or the machine can reach the hub).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto' = bfloat16 where the device supports it, else float32 (SPEC: bf16)."
    )
    attn_implementation: str = Field("sdpa", description="'sdpa' (default), 'eager' or 'flash_attention_2'.")
    max_image_pixels: int = Field(
        448 * 448, gt=0, description="Images are resized by the processor to at most this many pixels."
    )


LANGUAGE_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_PROJECTIONS = ("qkv", "proj")  # visual.blocks.*.attn; the visual MLP reuses the language names


class LoRAConfig(_Section):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Projection names adapted in the language model.",
    )
    train_vision: bool = Field(
        False,
        description="Also adapt matching modules of the vision tower. Off by default: SPEC.md trains the "
        "language model only (a bare name list would silently match the visual MLP).",
    )

    @model_validator(mode="after")
    def _known_targets(self) -> "LoRAConfig":
        # Checked here, not when peft wraps the model: a typo should fail in a second, not after a 7B load.
        known = LANGUAGE_PROJECTIONS + (VISION_PROJECTIONS if self.train_vision else ())
        if not self.target_modules:
            raise ValueError("lora.target_modules: empty; name at least one of " + ", ".join(known))
        unknown = [m for m in self.target_modules if m not in known]
        if unknown:
            hint = (f" ({', '.join(VISION_PROJECTIONS)} are vision-tower modules: set lora.train_vision=true)"
                    if set(unknown) & set(VISION_PROJECTIONS) else "")
            raise ValueError(f"lora.target_modules: {', '.join(map(repr, unknown))} is not a Qwen2.5-VL projection; "
                             f"known: {', '.join(known)}{hint}")
        return self


class SamplingConfig(_Section):
    num_rollouts: int = Field(5, gt=0, description="N, Solver rollouts per (image, question) (SPEC eq. 1).")
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Must be 1.0 (SPEC.md sampling row); see the check.")
    solver_max_new_tokens: int = Field(256, gt=0)
    proposer_max_new_tokens: int = Field(128, gt=0)

    @field_validator("top_p")
    @classmethod
    def _full_support(cls, v: float) -> float:
        # The update scores the sampled tokens under the full (tempered) distribution; a nucleus
        # would make it off-policy, and its KL to a reference with another nucleus can be infinite.
        if v != 1.0:
            raise ValueError(f"top_p={v} is not supported: the update's log-probabilities and KL are those of "
                             "the full distribution (SPEC.md samples with top-p 1.0); use temperature instead")
        return v


class RewardConfig(_Section):
    gamma_density: float = Field(0.7, ge=0.0, description="Eq. 2: rho = (|G|/N)^gamma_density.")
    min_group: int = Field(2, ge=1, description="Dominant groups smaller than this get zero step reward.")
    step_embed_max_tokens: int = Field(64, gt=0, description="Eq. 3: tokens per step text that are embedded.")
    position_decay: float = Field(0.15, ge=0.0, description="Eq. 4: w_j = exp(-decay (j-1)).")
    max_reasoning_steps: int = Field(8, gt=0, description="Steps parsed per rollout (paper table 3).")
    length_target_words: int = Field(64, gt=0, description="Eq. 5: L, words before <answer>.")
    alpha: float = Field(0.7, ge=0.0, description="Eq. 5: exponent on p(a_i).")
    eta: float = Field(0.05, ge=0.0, le=1.0, description="Eq. 5: length-penalty weight.")
    answer_reward: Literal["soft", "discrete"] = Field(
        "soft", description="'soft' = p(a_i)^alpha (eq. 5); 'discrete' = 1[a_i = dominant answer]."
    )
    lambda_start: float = Field(0.0, ge=0.0, le=1.0, description="Eq. 6 warm-up: lambda before the ramp.")
    lambda_end: float = Field(0.7, ge=0.0, le=1.0, description="Eq. 6 warm-up: lambda at the end of training.")
    warmup_fraction: float = Field(0.3, ge=0.0, le=1.0, description="Eq. 6 warm-up: f, fraction held at lambda_start.")
    proposer_mu_h: float = Field(0.90, description="Proposer reward centre mu_H (nats).")
    proposer_sigma_h: float = Field(0.35, gt=0.0, description="Proposer reward width sigma_H (nats).")
    control: Literal["none", "negated", "random"] = Field(
        "none", description="Reward control (not in SPEC.md's method): 'negated' trains on -r (Solver and "
        "Proposer), 'random' on rewards drawn uniformly from [0, 1) per rollout, independent of what it wrote. "
        "The controls of the mini sweep: a mechanism that works must not work with these.")


class KLConfig(_Section):
    beta_init: float = Field(1e-3, ge=0.0, description="Eq. 8: initial beta for each role.")
    target: float = Field(0.02, gt=0.0, description="Eq. 8: tau, target KL per token.")
    gain: float = Field(0.10, ge=0.0, description="Eq. 8: k.")
    beta_min: float = Field(1e-8, ge=0.0)
    beta_max: float = Field(100.0, gt=0.0)
    estimator: Literal["exact", "sampled"] = Field(
        "exact",
        description="'exact' = sum over the vocabulary (SPEC default); 'sampled' = from the sampled token only "
        "(no sum over the vocabulary): reports k3 and differentiates stopgrad(log pi - log pi_ref) log pi, both "
        "unbiased for KL(pi || pi_ref); noisier.",
    )
    chunk_tokens: int = Field(
        64, gt=0, description="Completion positions per chunk in the exact KL, so the full [rollouts x tokens x "
        "vocab] tensor is never held at once."
    )

    @model_validator(mode="after")
    def _bounds(self) -> "KLConfig":
        if self.beta_min > self.beta_max:
            raise ValueError(f"beta_min={self.beta_min} must not exceed beta_max={self.beta_max}")
        return self


class OptimConfig(_Section):
    lr: float = Field(1e-6, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    baseline_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="EMA baseline: b <- m b + (1-m) r.")


class ScheduleConfig(_Section):
    iterations: int = Field(2500, gt=0, description="T, global iterations (one image each by default).")
    proposer_update_every: int = Field(5, gt=0, description="One Proposer update every k iterations.")
    update_mode: Literal["batched", "per_rollout"] = Field(
        "batched",
        description="'batched' = one optimiser step per image batch, loss averaged over rollouts; "
        "'per_rollout' = one step per rollout, as in the authors' release.",
    )
    images_per_iteration: int = Field(1, gt=0, description="Images per iteration and process (paper: 1).")
    rollout_batch_size: int | None = Field(
        None, gt=0, description="Sequences per generate/forward call; None = all images x N at once."
    )


class DataConfig(_Section):
    image_dir: Path | None = Field(None, description="Folder of unlabeled images (None with the embedded model: synthetic).")
    manifest: Path | None = Field(None, description="A pool manifest (JSON) written by the pool sampler; wins over image_dir.")
    include_subfolders: bool = Field(True, description="Also scan first-level sub-folders.")
    pool_size: int | None = Field(None, gt=0, description="Sample at most this many images (None = all).")
    synthetic_images: int = Field(64, gt=0, description="Images generated when no folder is given.")


class CheckpointConfig(_Section):
    output_dir: Path = Field(Path("runs/default"), description="Run directory: checkpoints, JSONL, config.")
    every: int = Field(50, gt=0, description="Save a checkpoint every this many iterations (and at the end).")
    keep_last: int = Field(2, gt=0, description="Complete checkpoints kept on disk.")
    resume: bool = Field(True, description="Resume from the newest complete checkpoint in output_dir.")
    resume_changed_config: bool = Field(
        False, description="Resume even if the config changed since the checkpoint (e.g. a larger "
        "schedule.iterations); the run's history then mixes both configs.")


class PerfConfig(_Section):
    gradient_checkpointing: bool = False
    use_cache: bool = Field(True, description="KV cache during generation.")
    compile: bool = Field(False, description="torch.compile the language model's forward (GPU only helps).")
    decode: Literal["generate", "static"] = Field(
        "generate", description="Rollout sampler: Hugging Face `generate`, or `static` (ireasoner_core/decode.py: "
        "prefill once per image, static KV cache, one decode step per token).")
    decode_adapter: Literal["merged", "unmerged"] = Field(
        "merged", description="With decode=static: the active role's LoRA merged into a separate copy of the "
        "projections (rewritten every call; one more copy of those weights) or applied unmerged in the step.")
    compile_decode: bool = Field(False, description="With decode=static: torch.compile the decode step "
                                 "(fullgraph; a CUDA graph on a GPU). The first call of each shape compiles.")
    compile_mode: str | None = Field(None, description="torch.compile mode for the decode step; None picks "
                                     "reduce-overhead (CUDA graphs) on a GPU and the default elsewhere.")
    stop_check_every: int = Field(8, gt=0, description="With decode=static: steps between checks that every "
                                  "rollout has ended (each check waits for the device).")


ABLATIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "soft_only": {"rewards.lambda_start": 0.0, "rewards.lambda_end": 0.0},
    "step_only": {"rewards.lambda_start": 1.0, "rewards.lambda_end": 1.0},
    "no_warmup": {"rewards.lambda_start": 0.7, "rewards.lambda_end": 0.7},
    "no_position_decay": {"rewards.position_decay": 0.0},
    "no_density": {"rewards.gamma_density": 0.0},
    "no_length_penalty": {"rewards.eta": 0.0},
    "soft_gamma_0.5": {"rewards.alpha": 0.5},
    "soft_gamma_1.0": {"rewards.alpha": 1.0},
    "discrete": {"rewards.answer_reward": "discrete", "rewards.lambda_start": 0.0, "rewards.lambda_end": 0.0},
    "discrete_plus_step": {"rewards.answer_reward": "discrete"},
    "max_steps_4": {"rewards.max_reasoning_steps": 4},
    "max_steps_6": {"rewards.max_reasoning_steps": 6},
    "max_steps_8": {"rewards.max_reasoning_steps": 8},
    "max_steps_10": {"rewards.max_reasoning_steps": 10},
}
"""SPEC.md's ablation table as overrides of the full method. ``no_warmup`` sets lambda to
lambda_end from the first iteration; it reads lambda_end's default (0.7) when applied."""

CONTROLS: dict[str, dict[str, Any]] = {
    "negated": {"rewards.control": "negated"},
    "random_reward": {"rewards.control": "random"},
}
"""Reward controls of the full method (not SPEC.md ablations): the mini sweep's checks that a gain
comes from what the rewards say, not from training as such."""

NAMED_VARIANTS: dict[str, dict[str, Any]] = {**ABLATIONS, **CONTROLS}
"""Every name a run's ``ablation`` (and a sweep's variant) may take."""

TABLE2_ABLATIONS = [
    "full", "soft_only", "step_only", "no_warmup", "no_position_decay", "no_density",
    "no_length_penalty", "soft_gamma_0.5", "soft_gamma_1.0", "discrete", "discrete_plus_step",
]
TABLE3_ABLATIONS = ["max_steps_4", "max_steps_6", "max_steps_8", "max_steps_10"]


class TrainConfig(_Section):
    run_name: str = "ireasoner"
    seed: int = Field(0, ge=0)
    ablation: str = Field("full", description="Name from SPEC.md's ablation table; applied by apply_ablation.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoRAConfig = Field(default_factory=LoRAConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    rewards: RewardConfig = Field(default_factory=RewardConfig)
    kl: KLConfig = Field(default_factory=KLConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    perf: PerfConfig = Field(default_factory=PerfConfig)
    log_diagnostics_every: int = Field(
        50, gt=0, description="Every this many iterations, log figure 7's leave-one-out step similarities."
    )
    log_completions_every: int = Field(
        10, ge=0, description="Every this many iterations, hand the callbacks that iteration's generations (the "
        "Proposer's question, each Solver rollout, its parsed answer and rewards) as record['completions']; "
        "the MLflow logger appends them to the run's train/completions.json table. 0 = never.",
    )
    progress_bar: bool = True

    @field_validator("ablation")
    @classmethod
    def _known_ablation(cls, v: str) -> str:
        if v not in NAMED_VARIANTS:
            raise ValueError(f"unknown ablation {v!r}; known: {', '.join(NAMED_VARIANTS)}")
        return v

    @model_validator(mode="after")
    def _data_source(self) -> "TrainConfig":
        d = self.data
        if d.manifest is None and d.image_dir is not None and not Path(d.image_dir).is_dir():
            what = "is a file, not a folder" if Path(d.image_dir).exists() else "folder not found"
            raise ValueError(f"data.image_dir: {what}: {d.image_dir}")
        if d.manifest is None and d.image_dir is None and self.model.name_or_path != EMBEDDED_MODEL:
            raise ValueError("data.image_dir: required unless model.name_or_path is 'embedded' (synthetic images)")
        if self.rewards.min_group > self.sampling.num_rollouts:
            raise ValueError(
                f"rewards.min_group={self.rewards.min_group} exceeds sampling.num_rollouts={self.sampling.num_rollouts}"
            )
        return self

    def hash(self) -> str:
        """Stable short hash of everything that changes what is trained (not where it is written)."""
        payload = self.model_dump(mode="json", exclude={"checkpoint", "progress_bar", "run_name",
                                                        "log_completions_every"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def flat(self) -> dict[str, Any]:
        """Dotted-key view, e.g. {'rewards.alpha': 0.7, ...}: MLflow params, sweep overrides."""
        return _flatten(self.model_dump(mode="json"))

    def to_yaml(self, path: Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and the value."""


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def flat_overrides(overrides: dict[str, Any], source: str = "overrides") -> dict[str, Any]:
    """Overrides with dotted keys only: a section given as a mapping changes only the fields it names."""
    # {"sampling": {"temperature": 0.7}} would otherwise replace the whole section, silently
    # dropping the base config's other sampling fields for their defaults.
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        for k, v in (_flatten(value, f"{key}.") if isinstance(value, dict) else {key: value}).items():
            if k in out and out[k] != v:
                raise ConfigError(f"{source}: {k} is given twice, as {out[k]!r} and as {v!r}")
            out[k] = v
    return out


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = d
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
    node[parts[-1]] = value


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {loc}: {e['msg']}{shown}")
    return "\n".join(lines)


def build_config(data: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
                 source: str = "<dict>") -> TrainConfig:
    """Validate a nested dict plus dotted overrides, then apply the named ablation."""
    raw: dict[str, Any] = json.loads(json.dumps(data or {}, default=str))
    overrides = flat_overrides(overrides or {})
    for key, value in overrides.items():
        _set_dotted(raw, key, value)
    ablation = raw.get("ablation", "full")
    if ablation not in NAMED_VARIANTS:
        raise ConfigError(f"invalid configuration ({source}):\n  ablation: unknown ablation {ablation!r}; "
                          f"known: {', '.join(NAMED_VARIANTS)}")
    for key, value in NAMED_VARIANTS[ablation].items():
        # An explicit override the ablation would silently replace is an error, not a loss: which
        # of the two the user meant cannot be guessed (no_warmup with lambda_end=0.3 is neither).
        if key in overrides and overrides[key] != value:
            raise ConfigError(f"invalid configuration ({source}):\n  override {key}={overrides[key]!r} contradicts "
                              f"ablation {ablation!r}, which sets {key}={value!r}; drop the override, or use "
                              "ablation=full with the fields you want")
        _set_dotted(raw, key, value)
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def build_model_config(data: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
                       source: str = "model") -> ModelConfig:
    """Validate a model section on its own (``model.``-prefixed overrides): what a baseline
    evaluates needs no data, schedule or run directory, whatever the model is."""
    raw: dict[str, Any] = json.loads(json.dumps(data or {}, default=str))
    for key, value in flat_overrides(overrides or {}).items():
        _set_dotted(raw, key.removeprefix("model."), value)
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Load a YAML config file, apply dotted overrides and the named ablation, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return build_config(read_config_yaml(path), overrides, source=str(path))


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Two `schedule:` blocks would otherwise leave only the second, and the first's values
        # would be replaced by the defaults without a word. Merge keys (<<) may be overridden.
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                seen = first_line.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error names it
                continue
            if seen is not None:
                raise DuplicateKeyError(key, key_node.start_mark.line + 1, seen)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping key given twice in a YAML document."""

    def __init__(self, key: Any, line: int, first_line: int) -> None:
        super().__init__(f"line {line}: key {key!r} is given twice (first on line {first_line}); "
                         "YAML would keep only the last; merge the two")
        self.key, self.line, self.first_line = key, line, first_line


def load_yaml(text: str) -> Any:
    """Parse YAML as ``yaml.safe_load`` does, but refusing duplicate keys (DuplicateKeyError)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # safe: UniqueKeyLoader is a SafeLoader


def read_config_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; ConfigError naming the file (and the line) if it is not one."""
    try:
        data = load_yaml(Path(path).read_text()) or {}
    except DuplicateKeyError as err:
        raise ConfigError(f"config file {path}, {err}") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f", line {where.line + 1}" if where is not None else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{at}: {what}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path}: cannot read it: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping, got {type(data).__name__}")
    return data


def apply_ablation(cfg: TrainConfig, name: str) -> TrainConfig:
    """Return a copy of ``cfg`` with the ablation ``name`` applied (SPEC.md ablation table)."""
    data = cfg.model_dump(mode="json")
    data["ablation"] = name
    return build_config(data, source=f"ablation {name}")
