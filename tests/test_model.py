"""Backbone loading and the shipped embedded tiny Qwen2.5-VL: path errors, format after warm-start.

Behaviour tests use the shipped weights (``conftest.embedded_model_dir``); the build and the
manifest are tested in test_embedded_shipped.py. Nothing here reaches a hub: connections are
refused where a load happens.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: E402

from ireasoner_core import prompts  # noqa: E402
from ireasoner_core.config import ModelConfig  # noqa: E402
from ireasoner_core.data.synthetic import make_item  # noqa: E402
from ireasoner_core.embedded.tokenizer import FORMAT_TAGS  # noqa: E402
from ireasoner_core.model import (  # noqa: E402
    BUILD_FILE,
    ModelLoadError,
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
    # The model path 'embedded' itself: the shipped copy that conftest's fixture verified.
    return load_backbone(ModelConfig(dtype="float32"))


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
