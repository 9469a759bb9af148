"""Backbone loading, and the embedded default: a tiny Qwen2.5-VL shipped with the code.

``load_backbone`` loads any Qwen2.5-VL checkpoint the same way, whether it is
``Qwen/Qwen2.5-VL-7B-Instruct`` from the local Hugging Face cache, a local directory, or the
embedded model whose weights ship in ``ireasoner_core/embedded/weights`` (checked by sha256 at
load; nothing is ever downloaded or built for it).

The embedded model
------------------
Real Qwen2.5-VL components (``Qwen2_5_VLForConditionalGeneration``, ``Qwen2_5_VLProcessor``,
a Qwen2 byte-level BPE tokenizer, Qwen's chat layout), shrunk until a CPU can build, warm-start
and train it in minutes. Shapes (``ireasoner_core/embedded/architecture.py``):

* language model: hidden 128, 4 layers, 4 attention heads of dim 32 with 2 key/value heads
  (grouped-query attention as in Qwen2.5-VL), SwiGLU MLP 384, M-RoPE sections [4, 6, 6]
  (= head_dim/2, the 7B's [16, 24, 24] proportions), untied LM head as in the 7B. Four layers,
  not one, so LoRA on q/k/v/o/gate/up/down has several places to act; 128 wide so a
  forward/backward over 5 rollouts of ~250 tokens takes well under a second on one CPU core.
* vision tower: 2 blocks, hidden 64, 4 heads, patch 42, temporal patch 2, spatial merge 2,
  windows of 4x4 merged tokens with the last block global (``fullatt_block_indexes``), so
  windowed and full attention and the 2x2 patch merger all run exactly as in the 7B;
  out_hidden_size = 128. The patch is 3x the 7B's so that lmms-eval's standard pixel limits
  (min 448x448) give the same 36-token grid the model trains on.
* processor: images resized to 448x448 .. 504x504 pixels, i.e. 36 merged image tokens (a 224 px
  synthetic chart becomes 504x504, 12x12 patches), so a Solver prompt stays ~130 tokens.
* tokenizer: byte-level BPE (Qwen2's pre-tokenizer, one digit per token) trained on the prompt
  text and the synthetic QA (~770 tokens: the corpus is templated text, and rows it never uses
  would only be noise for the LoRA updates), Qwen2.5-VL's 14 special tokens, and the role format
  tags ``<think> </think> <answer> </answer> <question> </question> <rationale> </rationale>``
  as single non-special tokens (decode keeps them).

About 1.9 M parameters (0.68 M of them the frozen 42 px patch embedding). The warm-start (``embedded/warmstart.py``, docs/embedded_model.md)
keeps the vision tower at its random, background-free init and trains the merger and the language
model (1,050 AdamW steps of 8 sequences: image transcripts first, then Solver, benchmark-formatted
Solver, lmms-eval direct-answer and Proposer targets) on synthetic chart/diagram/geometry images,
so both roles emit their tags and lmms-eval's direct prompts get direct answers. The model reads
little of the image, so its N rollouts agree sometimes and differ often, which is what the
answer-level and step rewards need to have a signal. BUILD.json records the measured scores.

The weights ship with the code (``embedded/shipped.py``) so that every machine runs the same
model. ``build_embedded_into`` builds the recipe again into ``<cache>/<build-version>/``
(default ``~/.cache/ireasoner/embedded``, or ``$IREASONER_EMBEDDED_CACHE``), named by the recipe
and the weights' hash; ``ireasoner replace-embedded`` puts such a build in place of the shipped copy.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoConfig,
    AutoProcessor,
    PreTrainedModel,
    ProcessorMixin,
    Qwen2_5_VLForConditionalGeneration,
)

from ireasoner_core.config import EMBEDDED_MODEL, ModelConfig
from ireasoner_core.embedded.build import BUILD_FILE, build_embedded, recipe_version
from ireasoner_core.embedded.shipped import EmbeddedIntegrityError, shipped_model_dir, write_manifest
from ireasoner_core.embedded.warmstart import WarmStartConfig

CACHE_ENV = "IREASONER_EMBEDDED_CACHE"
QWEN2_5_VL_MODEL_TYPE = "qwen2_5_vl"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """A model path does not exist or does not hold a Qwen2.5-VL checkpoint; the message names it."""


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """'auto' = bfloat16 on a GPU that supports it (SPEC: bf16), float32 elsewhere; names honoured."""
    if name in _DTYPES:
        return _DTYPES[name]
    if name != "auto":
        raise ValueError(f"model.dtype: unknown dtype {name!r}; expected 'auto' or one of {sorted(_DTYPES)}")
    device = torch.device(device)
    # bf16 matmuls on CPU are emulated and several times slower than float32.
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def default_cache_root() -> Path:
    """Where embedded builds live unless a config names a directory."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "ireasoner" / "embedded"


def is_complete_build(path: Path) -> bool:
    """A build directory counts only once its BUILD.json (written last) is there."""
    return (Path(path) / BUILD_FILE).is_file()


def build_embedded_into(cache_dir: Path | None = None, *, recipe: WarmStartConfig | None = None,
                        warm_start: bool = True, progress: bool = True) -> Path:
    """Build the embedded recipe from scratch into ``<cache>/<build-version>/`` and return that directory.

    The build happens in a temporary sibling and is renamed into place once BUILD.json and the
    manifest are written, so a half-built directory never carries a version name. Two builds with
    the same weights share one directory (the name holds the weights' hash)."""
    root = (Path(cache_dir) if cache_dir is not None else default_cache_root()).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    if progress:
        print(f"[ireasoner] building the embedded recipe {recipe_version(recipe)} into {root} (a few minutes on CPU)",
              file=sys.stderr, flush=True)
    try:
        info = build_embedded(tmp, recipe=recipe, warm_start=warm_start, progress=progress)
        write_manifest(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = root / info["build_version"]
    if is_complete_build(final):
        shutil.rmtree(tmp, ignore_errors=True)  # the same weights, built before
    else:
        if final.exists():  # a leftover without BUILD.json: move it aside so the rename is atomic
            shutil.rmtree(final)
        os.rename(tmp, final)
    return final


def resolve_model_path(model_cfg: ModelConfig) -> str:
    """'embedded' -> the shipped embedded model (its hashes verified); anything else as given."""
    if model_cfg.name_or_path == EMBEDDED_MODEL:
        try:
            return str(shipped_model_dir())
        except EmbeddedIntegrityError as err:
            raise ModelLoadError(str(err)) from None
    return model_cfg.name_or_path


def _looks_local(name: str) -> bool:
    # A hub id is exactly "owner/name"; anything absolute, relative-dotted, ~ or deeper is a path.
    return (name.startswith(("/", ".", "~")) or name.count("/") != 1 or os.sep != "/" and os.sep in name)


def _check_qwen2_5_vl(path: str) -> None:
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelLoadError(f"model.name_or_path: {path} is a file, expected a model directory")
        cfg_file = local / "config.json"
        if not cfg_file.is_file():
            raise ModelLoadError(f"model.name_or_path: {path} has no config.json; not a Qwen2.5-VL checkpoint")
        try:
            model_type = json.loads(cfg_file.read_text()).get("model_type")
        except json.JSONDecodeError as err:
            raise ModelLoadError(f"model.name_or_path: {cfg_file} is not valid JSON: {err}") from None
    elif _looks_local(path):
        raise ModelLoadError(f"model.name_or_path: directory not found: {path}")
    else:
        try:
            model_type = AutoConfig.from_pretrained(path).model_type
        except OSError as err:
            raise ModelLoadError(
                f"model.name_or_path: {path} is neither a local directory nor available from the Hugging Face "
                f"cache or hub (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}): {err}"
            ) from None
    if model_type != QWEN2_5_VL_MODEL_TYPE:
        raise ModelLoadError(
            f"model.name_or_path: {path} holds model_type {model_type!r}, expected {QWEN2_5_VL_MODEL_TYPE!r} "
            "(a Qwen2.5-VL checkpoint)"
        )


def _cap_image_pixels(processor: ProcessorMixin, max_pixels: int) -> None:
    """Resize images to at most ``max_pixels`` (never above the checkpoint's own limit)."""
    ip = processor.image_processor
    size = dict(ip.size) if ip.size is not None else {}
    saved_max = size.get("longest_edge") or size.get("max_pixels") or max_pixels
    new_max = min(int(saved_max), int(max_pixels))
    new_min = min(int(size.get("shortest_edge") or size.get("min_pixels") or new_max), new_max)
    ip.size = {"shortest_edge": new_min, "longest_edge": new_max}
    # Older processor versions read these attributes instead of the size dict.
    for attr, value in (("max_pixels", new_max), ("min_pixels", new_min)):
        if hasattr(ip, attr):
            setattr(ip, attr, value)


_WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


def _check_weight_files(folder: Path, path: str) -> None:
    """A local checkpoint has weight files and each safetensors header covers its file (not truncated)."""
    files = sorted(f for pattern in _WEIGHT_FILES for f in folder.glob(pattern))
    if not files:
        raise ModelLoadError(f"model.name_or_path: {path} has no weights (no model.safetensors or "
                             "pytorch_model.bin); was the download or copy complete?")
    for f in files:
        if f.suffix != ".safetensors":
            continue
        try:
            with safe_open(str(f), framework="pt"):  # reads the header only: seconds for a 7B checkpoint
                pass
        except (SafetensorError, OSError) as err:
            raise ModelLoadError(f"model.name_or_path: {f} is truncated or corrupt ({_first_line(err)}); "
                                 "download or copy it again") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def load_backbone(model_cfg: ModelConfig, device: torch.device | str = "cpu",
                  dtype: torch.dtype | None = None) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Frozen Qwen2.5-VL in eval mode plus its processor (left padding, pad token set)."""
    path = resolve_model_path(model_cfg)
    _check_qwen2_5_vl(path)
    device = torch.device(device)
    dtype = dtype if dtype is not None else resolve_dtype(model_cfg.dtype, device)
    local = Path(path).expanduser()
    source = str(local) if local.exists() else path
    if local.is_dir():
        _check_weight_files(local, path)
    try:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            source, dtype=dtype, attn_implementation=model_cfg.attn_implementation
        )
    except (OSError, SafetensorError) as err:  # a hub download cut short, an unreadable shard
        raise ModelLoadError(f"model.name_or_path: cannot load the weights of {path}: {_first_line(err)}") from None
    model.to(device)
    model.eval()
    model.requires_grad_(False)

    try:
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError) as err:  # no tokenizer or processor files, or unreadable ones
        raise ModelLoadError(f"model.name_or_path: cannot load the processor of {path}: {_first_line(err)}") from None
    _cap_image_pixels(processor, model_cfg.max_image_pixels)
    tok = processor.tokenizer
    # Batched generation appends to the right end of every row.
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = "<|endoftext|>" if "<|endoftext|>" in tok.get_vocab() else tok.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, processor
