"""The benchmark harness (issue 5): its arithmetic by hand, its CPU path on the embedded model,
and the GPU mode's model construction (full 7B on the meta device, a scaled-down copy run on CPU).

No test here asserts a wall-clock time: timings are only checked for consistency with each other.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from benchmarks import throughput
from benchmarks.measure import PHASES, IterationStats, covering_iterations, summarize
from benchmarks.qwen7b import (
    DecodeCall,
    bandwidth_fraction,
    build_random_backbone,
    decode_kv_bytes,
    decode_steps,
    decode_weight_bytes,
    embedded_processor,
    kv_bytes_per_token,
    peak_bandwidth,
    qwen2_5_vl_7b_config,
)
from ireasoner_core.config import build_config


def _it(seconds, rollouts, resp, prompt, phases, peaks):
    return IterationStats(iteration=1, seconds=seconds, rollouts=rollouts, response_tokens=resp, prompt_tokens=prompt,
                          proposer_updated=False, phase_seconds=phases, phase_peak_memory_bytes=peaks,
                          solver_decode=[])


def test_summarize_rates_are_total_work_over_total_time():
    a = _it(2.0, 10, 100, 300, {"propose": 0.5, "rollouts": 1.0, "rewards": 0.1, "logprobs": 0.2, "update": 0.1},
            {"propose": 100, "rollouts": 300, "rewards": 200, "update": 400})
    b = _it(3.0, 10, 100, 300, {"propose": 0.5, "rollouts": 2.0, "rewards": 0.1, "logprobs": 0.2, "update": 0.1},
            {"propose": 100, "rollouts": 300, "rewards": 200, "update": 500})
    s = summarize([a, b], devices=2)
    assert s["seconds_per_iteration"] == pytest.approx(2.5)
    assert s["rollouts_per_s"] == pytest.approx(20 / 5.0)                 # 4.0
    assert s["tokens_per_s_per_device"] == pytest.approx(800 / 5.0 / 2)   # EasyR1: 80.0
    assert s["peak_memory_bytes"] == 500
    ro = s["phases"]["rollouts"]
    assert ro.seconds == pytest.approx(1.5)
    assert ro.rollouts_per_s == pytest.approx(20 / 3.0)
    assert ro.tokens_per_s_per_device == pytest.approx(800 / 3.0 / 2)
    assert ro.peak_memory_bytes == 300
    assert s["phases"]["logprobs"].peak_memory_bytes is None   # nested in the update phase
    with pytest.raises(ValueError, match="no measured iterations"):
        summarize([])


def test_scaling_exponent_by_hand():
    assert throughput.scaling_exponent([1, 4, 16], [3.0, 6.0, 12.0]) == pytest.approx(0.5)   # 3 N^0.5
    assert throughput.scaling_exponent([1, 2, 8], [1.0, 2.0, 8.0]) == pytest.approx(1.0)     # linear
    assert throughput.scaling_exponent([2, 8], [5.0, 5.0]) == pytest.approx(0.0)             # flat
    with pytest.raises(ValueError, match=">= 2"):
        throughput.scaling_exponent([5], [1.0])


def test_covering_iterations_and_side_by_side_settings():
    assert covering_iterations(8, 4) == [1, 2]
    assert covering_iterations(3, 1) == [1, 2, 3]
    with pytest.raises(ValueError, match="images=10 is not a multiple of images_per_iteration=4"):
        covering_iterations(10, 4)
    rel = throughput.release_overrides()
    assert rel == {"schedule.images_per_iteration": 1, "schedule.rollout_batch_size": 1,
                   "schedule.update_mode": "per_rollout"}
    assert throughput.defaults_overrides(4)["schedule.rollout_batch_size"] is None


def test_decode_bandwidth_arithmetic_by_hand():
    calls = [DecodeCall(batch=2, prompt_len=10, new_tokens=4), DecodeCall(batch=1, prompt_len=5, new_tokens=1)]
    assert decode_steps(calls) == 3 + 0          # the prefill yields the first token of each call
    # steps j = 1..3 of the first call read 2 x (10 + j) tokens: 2 x (11 + 12 + 13) = 72 tokens x 100 B
    assert decode_kv_bytes(calls, kv_per_token=100) == 7200
    assert bandwidth_fraction(1e9 * 100, 0.1, 2000.0) == pytest.approx(0.5)   # 1 TB/s of 2 TB/s
    with pytest.raises(ValueError, match="must be positive"):
        bandwidth_fraction(1.0, 0.0, 2000.0)


def test_peak_bandwidth_table_by_device_name():
    assert peak_bandwidth("NVIDIA H100 80GB HBM3")[1] == 3350.0
    assert peak_bandwidth("NVIDIA H100 PCIe")[1] == 2000.0
    assert peak_bandwidth("NVIDIA H100 NVL")[1] == 3900.0
    assert peak_bandwidth("NVIDIA H200")[1] == 4800.0
    assert peak_bandwidth("AMD Instinct MI250X")[1] == pytest.approx(1638.4)
    assert peak_bandwidth("Tesla T4") is None


@pytest.fixture(scope="module")
def processor():
    return embedded_processor(112 * 112)


def test_7b_architecture_has_the_published_size_and_the_tokenizers_ids(processor):
    tok = processor.tokenizer
    cfg = qwen2_5_vl_7b_config(tok)
    for attr, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")):
        assert getattr(cfg, attr) == tok.convert_tokens_to_ids(token)
    model = build_random_backbone(cfg, tok, "meta", torch.bfloat16)   # shapes only, no memory
    assert sum(p.numel() for p in model.parameters()) == 8_292_166_656   # Qwen2.5-VL-7B-Instruct
    # Per decoder layer: q 3584*3584+3584, k and v 3584*512+512 each, o 3584*3584,
    # gate/up/down 3*3584*18944, two norms 2*3584 = 233,057,792; x 28 layers = 6,525,618,176;
    # + final norm 3,584 + LM head 152,064*3584 = 544,997,376 -> 7,070,619,136 params x 2 bytes.
    assert decode_weight_bytes(model, adapter=None) == 14_141_238_272
    assert kv_bytes_per_token(cfg, torch.bfloat16) == 2 * 28 * 4 * 128 * 2   # 57,344


def test_7b_config_rejects_a_vocab_smaller_than_the_tokenizer(processor):
    from benchmarks.qwen7b import (
        QWEN2_5_VL_7B_TEXT,
        QWEN2_5_VL_7B_VISION,
        qwen2_5_vl_config,
    )

    with pytest.raises(ValueError, match="vocab_size=16 is smaller than the tokenizer"):
        qwen2_5_vl_config(processor.tokenizer, {**QWEN2_5_VL_7B_TEXT, "vocab_size": 16}, QWEN2_5_VL_7B_VISION)


def test_gpu_mode_needs_scaled_down_off_gpu():
    with pytest.raises(SystemExit):
        throughput.parse_args(["--gpu-7b", "--device", "cpu"])


def test_side_by_side_settings_see_the_same_images(tmp_path):
    from ireasoner_core.trainer import Trainer

    base = {"checkpoint": {"output_dir": str(tmp_path)}, "progress_bar": False, "data": {"synthetic_images": 8}}
    defaults = Trainer(build_config(base, throughput.defaults_overrides(2)))
    release = Trainer(build_config(base, throughput.release_overrides()))
    d_images, _, _ = defaults._images_for(1)
    r_images = [release._images_for(t)[0][0] for t in covering_iterations(2, 1)]
    assert [im.tobytes() for im in d_images] == [im.tobytes() for im in r_images]


def _check_setting(r: dict, rollouts_per_iteration: int, response_tokens_per_iteration: int) -> None:
    """Every rate recomputed from the recorded counts and seconds (no time is asserted)."""
    its = r["iterations"]
    assert all(it["rollouts"] == rollouts_per_iteration for it in its)
    assert all(it["response_tokens"] == response_tokens_per_iteration for it in its)   # fixed-length
    secs = sum(it["seconds"] for it in its)
    assert r["rollouts_per_s"] == pytest.approx(sum(it["rollouts"] for it in its) / secs)
    tokens = sum(it["response_tokens"] + it["prompt_tokens"] for it in its)
    assert r["tokens_per_s_per_device"] == pytest.approx(tokens / secs)
    for it in its:
        assert set(it["phase_seconds"]) == set(PHASES)
        assert all(v >= 0 for v in it["phase_seconds"].values())
        assert sum(it["phase_seconds"].values()) <= it["seconds"]
        assert set(it["phase_peak_memory_bytes"]) == {"propose", "rollouts", "rewards", "update"}
        assert all(v > 0 for v in it["phase_peak_memory_bytes"].values())


def test_cpu_harness_on_the_embedded_model(tmp_path):
    out = tmp_path / "cpu"
    report = throughput.main([
        "--threads", "1", "--images", "2", "--defaults-images-per-iteration", "2", "--warmup", "0",
        "--n", "1,2", "--images-per-iteration", "1", "--max-new-tokens", "6", "--iterations", "1",
        "--set", "sampling.num_rollouts=2", "--set", "sampling.solver_max_new_tokens=6",
        "--set", "sampling.proposer_max_new_tokens=4", "--workdir", str(tmp_path / "work"), "--output", str(out),
    ])
    data = json.loads(out.with_suffix(".json").read_text())
    assert "Ratio of rollouts/s" in out.with_suffix(".md").read_text()
    sbs = data["side_by_side"]
    assert sbs["interleaved"] is True
    d, r = sbs["defaults"], sbs["release-equivalent"]
    # defaults: 2 images x 2 rollouts in one generate call; 4 x 6 solver + 2 x 4 proposer tokens
    _check_setting(d, 4, 4 * 6 + 2 * 4)
    assert [c for it in d["iterations"] for c in it["solver_decode"]] == [
        {"batch": 4, "prompt_len": d["iterations"][0]["solver_decode"][0]["prompt_len"], "new_tokens": 6}]
    # release-equivalent: one image per iteration, one rollout per generate call, one step per rollout
    assert len(r["iterations"]) == 2
    _check_setting(r, 2, 2 * 6 + 1 * 4)
    assert all([c["batch"] for c in it["solver_decode"]] == [1, 1] for it in r["iterations"])
    assert sbs["ratio_rollouts_per_s"] == pytest.approx(d["rollouts_per_s"] / r["rollouts_per_s"])
    assert d["memory_kind"].startswith("peak RSS")
    rows = data["scaling"]["rows"]
    assert [row["overrides"]["sampling.num_rollouts"] for row in rows] == [1, 2]
    assert rows[0]["overrides"]["rewards.min_group"] == 1          # N = 1 lowers eq. 3's minimum group
    for row, n in zip(rows, (1, 2)):
        _check_setting(row, n, n * 6 + 4)
    (e,) = data["scaling"]["exponents"]
    s1, s2 = rows[0]["seconds_per_iteration"], rows[1]["seconds_per_iteration"]
    assert e["exponent"] == pytest.approx(math.log(s2 / s1) / math.log(2))   # two points: the slope itself
    assert report["embedded_model"]["build_version"] == data["embedded_model"]["build_version"]


def test_gpu_mode_cpu_side_with_a_scaled_down_7b(tmp_path):
    out = tmp_path / "gpu"
    throughput.main([
        "--gpu-7b", "--device", "cpu", "--scaled-down", "--image-pixels", str(112 * 112), "--threads", "1",
        "--images", "1", "--defaults-images-per-iteration", "1", "--warmup", "0", "--no-scaling",
        "--set", "sampling.num_rollouts=2", "--set", "sampling.solver_max_new_tokens=4",
        "--set", "sampling.proposer_max_new_tokens=3", "--peak-bandwidth-gbs", "100",
        "--workdir", str(tmp_path / "work"), "--output", str(out),
    ])
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["gpu_7b"]["gradient_checkpointing"] is True and data["gpu_7b"]["dtype"] == "float32"
    d = data["side_by_side"]["defaults"]
    _check_setting(d, 2, 2 * 4 + 3)
    # Scaled-down text model, float32: per layer q 65,792 + k 32,896 + v 32,896 + o 65,536 + MLP 1,032,192
    # + norms 512 = 1,229,824; x 2 layers + final norm 256 + LM head 152,064*256 = 41,388,288 params;
    # LoRA r 16 (solver adapter): per layer 16*(512 + 384 + 384 + 512 + 3*1600) = 105,472, x 2 = 210,944.
    assert d["decode_weight_bytes"] == (41_388_288 + 210_944) * 4
    assert d["kv_bytes_per_token"] == 2 * 2 * 1 * 128 * 4
    bw = data["bandwidth"]["settings"]
    assert bw["defaults"]["decode_steps"] == 3                      # one call of 4 new tokens
    assert bw["release-equivalent"]["decode_steps"] == 2 * 3        # two calls of one rollout
    for name in ("defaults", "release-equivalent"):
        b, setting = bw[name], data["side_by_side"][name]
        secs = sum(it["phase_seconds"]["rollouts"] for it in setting["iterations"])
        assert b["fraction_weights"] == pytest.approx(setting["decode_weight_bytes"] * b["decode_steps"] / secs / 100e9)
        assert b["fraction_weights_and_kv"] > b["fraction_weights"]


@pytest.mark.slow
def test_random_7b_checkpoint_runs_through_the_trainers_command_line(tmp_path):
    """What a GPU session without weights runs: write the checkpoint, then the 7B config's CLI on it."""
    from benchmarks.qwen7b import SCALED_DOWN_TEXT
    from benchmarks.qwen7b import main as qwen7b_main
    from ireasoner_core.cli import main as cli_main
    from ireasoner_core.data.synthetic import generate_synthetic

    ckpt = tmp_path / "q7b"
    assert qwen7b_main([str(ckpt), "--scaled-down", "--device", "cpu", "--image-pixels", str(112 * 112)]) == 0
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["text_config"]["hidden_size"] == SCALED_DOWN_TEXT["hidden_size"]
    assert cfg["text_config"]["vocab_size"] == 152_064 and cfg["vision_config"]["patch_size"] == 14
    with pytest.raises(SystemExit):   # never writes over a folder that holds something
        qwen7b_main([str(ckpt), "--scaled-down", "--device", "cpu"])

    generate_synthetic(tmp_path / "images", 2, seed=0)
    run = tmp_path / "run"
    config = Path(__file__).resolve().parents[1] / "configs" / "qwen2.5-vl-7b.yaml"
    rc = cli_main(["train", "--config", str(config), "--set", f"model.name_or_path={ckpt}",
                   "--set", f"data.image_dir={tmp_path / 'images'}", "--set", "schedule.iterations=1",
                   "--set", "sampling.num_rollouts=2", "--set", "sampling.solver_max_new_tokens=4",
                   "--set", "sampling.proposer_max_new_tokens=3", "--set", "progress_bar=false",
                   "--output-dir", str(run)])
    assert rc == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1] and rows[0]["rollouts"] == 2
    # The Solver's adapter was trained on the checkpoint's layers: LoRA on 7 projections x 2 layers.
    from safetensors import safe_open
    with safe_open(str(run / "final" / "solver" / "adapter_model.safetensors"), "pt") as f:
        names = f.keys()   # a safe_open handle has keys() but is not iterable
        lora_a = {k: f.get_tensor(k).shape for k in names if "lora_A" in k}
    assert len(lora_a) == 7 * SCALED_DOWN_TEXT["num_hidden_layers"]
    assert all(shape[0] == 16 for shape in lora_a.values())   # rank 16, the 7B config's


def test_decode_overhead_measures_each_depth_and_path_and_rejects_bad_arguments(capsys):
    """Today's path and the static one side by side (the compiled columns are the same code with
    torch.compile on the step; tests/test_decode.py checks that compile)."""
    from benchmarks import decode_overhead

    rows = decode_overhead.main(["--layers", "1,3", "--tokens", "2", "--repeats", "1", "--paths", "generate,static"])
    assert [r["layers"] for r in rows] == [1, 3]
    assert all(r["generate, LoRA unmerged"] > 0 and r["static eager, merged copy"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert "| 3 |" in out and "x lower than today's (3 layers)" in out and "per decoder layer" in out
    for bad in (["--layers", "0,2"], ["--layers", "two"], ["--tokens", "1"], ["--paths", "vllm"]):
        with pytest.raises(SystemExit):
            decode_overhead.main(bad)
    err = capsys.readouterr().err
    assert "--layers" in err and "--paths 'vllm'" in err


def test_gpu_mode_can_decode_with_a_static_cache(tmp_path, monkeypatch):
    """--cache-implementation static reaches generate() through the trainer's Policy (counted at the cache)."""
    from transformers import StaticCache

    made = []
    init = StaticCache.__init__

    def counting_init(self, *args, **kwargs):
        made.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(StaticCache, "__init__", counting_init)
    out = tmp_path / "gpu"
    throughput.main([
        "--gpu-7b", "--device", "cpu", "--scaled-down", "--image-pixels", str(112 * 112), "--threads", "1",
        "--no-side-by-side", "--n", "2", "--images-per-iteration", "1", "--max-new-tokens", "4", "--warmup", "0",
        "--cache-implementation", "static", "--set", "sampling.proposer_max_new_tokens=3", "--peak-bandwidth-gbs", "100",
        "--workdir", str(tmp_path / "work"), "--output", str(out),
    ])
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["gpu_7b"]["cache_implementation"] == "static"
    assert made, "generate never built a StaticCache"
    (row,) = data["scaling"]["rows"]
    _check_setting(row, 2, 2 * 4 + 3)
