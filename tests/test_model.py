"""Backbone loading and the embedded tiny Qwen2.5-VL: cache, atomic build, lock, format after warm-start.

Cache-mechanics tests build the untrained variant (about a second) into a temporary directory;
behaviour tests use the warm-started build from ``conftest.embedded_model_dir`` (built once per
machine). Nothing here reaches a hub: connections are refused where a load happens.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: E402

from ireasoner_core import model as model_mod  # noqa: E402
from ireasoner_core import prompts  # noqa: E402
from ireasoner_core.config import ModelConfig  # noqa: E402
from ireasoner_core.data.synthetic import make_item  # noqa: E402
from ireasoner_core.embedded import build as build_mod  # noqa: E402
from ireasoner_core.embedded.tokenizer import FORMAT_TAGS  # noqa: E402
from ireasoner_core.model import (  # noqa: E402
    BUILD_FILE,
    ModelLoadError,
    build_embedded_main,
    ensure_embedded_model,
    load_backbone,
    resolve_dtype,
    resolve_model_path,
)
from ireasoner_core.parsing import parse_rollout  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Measured on the warm-started build (see BUILD.json): ~0.9 of solver rollouts carry an <answer>
# tag at temperature 1; the test asks for a clear majority, leaving room for sampling noise.
MIN_ANSWER_TAG_FRACTION = 0.6


@pytest.fixture
def untrained_builds(monkeypatch):
    """Build the untrained variant (seconds) and count how many builds really run."""
    monkeypatch.setattr(build_mod, "WARM_START", False)
    calls: list[Path] = []
    real = model_mod.build_embedded

    def counting(out_dir, **kw):
        calls.append(Path(out_dir))
        return real(out_dir, **kw)

    monkeypatch.setattr(model_mod, "build_embedded", counting)
    return calls


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# --------------------------------------------------------------------------- dtype


def test_resolve_dtype():
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32  # bf16 matmuls are slow on CPU
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    assert resolve_dtype("float16", "cpu") is torch.float16
    with pytest.raises(ValueError, match="float64"):
        resolve_dtype("float64", "cpu")


# --------------------------------------------------------------------------- cache mechanics


def test_cache_is_reused(tmp_path, untrained_builds):
    first = ensure_embedded_model(tmp_path, progress=False)
    stamp = (first / BUILD_FILE).stat().st_mtime_ns
    second = ensure_embedded_model(tmp_path, progress=False)
    assert second == first == tmp_path / build_mod.build_version()
    assert len(untrained_builds) == 1
    assert (second / BUILD_FILE).stat().st_mtime_ns == stamp
    # force rebuilds in place; nothing but the build and its lock file is left in the root
    ensure_embedded_model(tmp_path, force=True, progress=False)
    assert len(untrained_builds) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, f".{first.name}.lock"])


def test_half_built_directories_are_never_used(tmp_path, untrained_builds):
    version = build_mod.build_version()
    # A final-looking directory without BUILD.json (a copy interrupted half way) ...
    (tmp_path / version).mkdir()
    (tmp_path / version / "config.json").write_text("{}")
    # ... and the temporary directory of a build that died.
    stale = tmp_path / f".{version}.building-dead"
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    path = ensure_embedded_model(tmp_path, progress=False)
    assert len(untrained_builds) == 1
    assert path == tmp_path / version
    assert json.loads((path / BUILD_FILE).read_text())["build_version"] == version
    assert json.loads((path / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    assert not stale.exists()


def test_untrained_build_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.setattr(build_mod, "WARM_START", False)
    a = ensure_embedded_model(tmp_path / "a", progress=False)
    b = ensure_embedded_model(tmp_path / "b", progress=False)
    for name in ("tokenizer.json", "model.safetensors", "config.json", "chat_template.jinja"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


_RACE = """
import sys
from ireasoner_core import model
from ireasoner_core.embedded import build
build.WARM_START = False
real, built = model.build_embedded, []
model.build_embedded = lambda out, **kw: (built.append(out), real(out, **kw))[1]
path = model.ensure_embedded_model(sys.argv[1], progress=False)
print(len(built), path)
"""


@pytest.mark.slow
def test_two_processes_build_once(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _RACE, str(tmp_path)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    lines = [o[0].strip().splitlines()[-1].split() for o in outs]
    assert sorted(int(n) for n, _ in lines) == [0, 1]  # one built, the other waited and reused it
    assert lines[0][1] == lines[1][1]


# --------------------------------------------------------------------------- path errors


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match=str(missing)):
        load_backbone(ModelConfig(name_or_path=str(missing)))


def test_non_qwen_directory_is_rejected(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=f"{empty}.*config.json"):
        load_backbone(ModelConfig(name_or_path=str(empty)))
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelLoadError, match=f"{llama}.*'llama'.*qwen2_5_vl"):
        load_backbone(ModelConfig(name_or_path=str(llama)))


def test_uncached_hub_id_is_named(no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="nobody-here/not-a-model.*neither a local directory"):
        load_backbone(ModelConfig(name_or_path="nobody-here/not-a-model"))


def test_non_embedded_path_is_passed_through(tmp_path):
    assert resolve_model_path(ModelConfig(name_or_path="Qwen/Qwen2.5-VL-7B-Instruct")) == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert resolve_model_path(ModelConfig(name_or_path=str(tmp_path))) == str(tmp_path)


# --------------------------------------------------------------------------- the warm-started build


@pytest.fixture(scope="session")
def backbone(embedded_model_dir):
    # Points the config at the cache root that conftest's fixture built into.
    cfg = ModelConfig(embedded_cache_dir=embedded_model_dir.parent, dtype="float32")
    return load_backbone(cfg)


def test_loaded_backbone_is_a_frozen_qwen2_5_vl(backbone, embedded_model_dir):
    model, processor = backbone
    assert type(model) is Qwen2_5_VLForConditionalGeneration
    assert model.config.model_type == "qwen2_5_vl"
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert processor.tokenizer.padding_side == "left"
    assert processor.tokenizer.pad_token == "<|endoftext|>"
    info = json.loads((embedded_model_dir / BUILD_FILE).read_text())
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["warm_start"]["loss_final"] < info["warm_start"]["loss_first"]


def test_load_makes_no_network_access(embedded_model_dir, no_network):
    model, _ = load_backbone(ModelConfig(name_or_path=str(embedded_model_dir)))
    assert type(model) is Qwen2_5_VLForConditionalGeneration


def test_chat_template_renders_image_placeholder(backbone):
    _, processor = backbone
    text = processor.apply_chat_template(prompts.solver_messages("How many bars are there?"), tokenize=False,
                                         add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n")
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many bars are there?\n" in text
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_format_tags_are_single_tokens_kept_by_decode(backbone):
    tok = backbone[1].tokenizer
    for tag in FORMAT_TAGS + ["<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|vision_start|>"]:
        ids = tok.encode(tag, add_special_tokens=False)
        assert len(ids) == 1, tag
    text = "<think>\nStep 1: a\n</think>\n<answer>7</answer><|im_end|>"
    assert tok.decode(tok.encode(text, add_special_tokens=False), skip_special_tokens=True) == text[:-len("<|im_end|>")]


def test_image_pixels_are_capped_by_config(embedded_model_dir):
    image = make_item(0, "bar")[1]  # 224 x 224
    # 224x224 under a 252*252 budget (patch 42 x merge 2 = multiples of 84): 252x252 = 6x6 patches
    # -> 9 merged tokens, where the checkpoint alone would upscale to 504x504.
    _, proc = load_backbone(ModelConfig(name_or_path=str(embedded_model_dir), max_image_pixels=252 * 252))
    out = proc(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[image], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 6, 6]]
    assert int((out["input_ids"] == proc.image_token_id).sum()) == 9
    # The config default (448*448) is also lmms-eval's min_pixels, which the checkpoint's processor
    # resizes to the same 504x504 grid: 12x12 patches, 36 tokens.
    _, proc = load_backbone(ModelConfig(name_or_path=str(embedded_model_dir)))
    out = proc(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[image], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 12, 12]]


@pytest.mark.slow
def test_batched_sampling_follows_the_solver_format(backbone):
    model, processor = backbone
    items = [make_item(1000 + i, kind) for i, kind in enumerate(["bar", "pie", "diagram", "geometry"])]
    questions = [it.qa[0].question for it, _ in items]
    texts = [processor.apply_chat_template(prompts.solver_messages(q), tokenize=False, add_generation_prompt=True)
             for q in questions]
    inputs = processor(text=texts, images=[im for _, im in items], return_tensors="pt", padding=True)
    lengths = inputs["attention_mask"].sum(1)
    assert (inputs["attention_mask"][:, -1] == 1).all() and lengths.min() < lengths.max()  # left padding
    torch.manual_seed(0)
    out = model.generate(**inputs, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, num_return_sequences=5,
                         max_new_tokens=160)
    assert out.shape[0] == len(items) * 5
    decoded = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    parsed = [parse_rollout(t, max_steps=8) for t in decoded]
    tagged = sum(p.has_answer_tag for p in parsed) / len(parsed)
    assert tagged >= MIN_ANSWER_TAG_FRACTION, decoded[:3]
    assert sum(len(p.steps) >= 1 for p in parsed) / len(parsed) >= MIN_ANSWER_TAG_FRACTION, decoded[:3]


@pytest.mark.slow
def test_proposer_prompt_yields_question_tags(backbone):
    model, processor = backbone
    images = [make_item(2000 + i, kind)[1] for i, kind in enumerate(["line", "pie", "geometry"])]
    text = processor.apply_chat_template(prompts.proposer_messages(), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text] * len(images), images=images, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    out = model.generate(**inputs, do_sample=True, temperature=1.0, top_k=0, num_return_sequences=5,
                         max_new_tokens=96)
    decoded = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    tagged = sum("<question>" in t and "</question>" in t for t in decoded) / len(decoded)
    assert tagged >= MIN_ANSWER_TAG_FRACTION, decoded[:3]


def test_build_embedded_main_prints_the_path(embedded_model_dir, capsys):
    assert build_embedded_main(["--cache-dir", str(embedded_model_dir.parent), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(embedded_model_dir)
