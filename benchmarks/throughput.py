"""Throughput benchmark of the iReasoner trainer (issue 5): side-by-side ratio, scaling table, GPU mode.

    .venv/bin/python -m benchmarks.throughput --output benchmarks/results/cpu            # embedded default
    .venv/bin/python -m benchmarks.throughput --gpu-7b --output benchmarks/results/h100  # 7B architecture

Writes ``<output>.json`` (every iteration's figures) and ``<output>.md`` (the tables), and prints
the Markdown. See docs/benchmarks.md for the recorded results and what each column means.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # nothing here may reach a hub

import torch
import transformers

from ireasoner_core.config import TrainConfig, build_config, load_config

from .measure import PHASE_LABELS, PHASES, SettingResult, SettingRunner, covering_iterations, run_setting
from .qwen7b import (PAPER_IMAGE_PIXELS, PEAK_BANDWIDTH_GBS, bandwidth_fraction, build_random_backbone,
                     decode_kv_bytes, decode_steps, embedded_processor, peak_bandwidth, qwen2_5_vl_7b_config)

DEFAULT_NS = [1, 2, 5, 8, 16]
DEFAULT_MS = [1, 4, 8]
DEFAULT_TS = [64, 128, 256]


def defaults_overrides(images_per_iteration: int) -> dict[str, Any]:
    """The trainer's defaults: every rollout of every image in one generate call, one batched update."""
    return {"schedule.images_per_iteration": images_per_iteration, "schedule.rollout_batch_size": None,
            "schedule.update_mode": "batched"}


def release_overrides() -> dict[str, Any]:
    """The authors' release: one image, rollouts one at a time, one optimiser step per rollout."""
    return {"schedule.images_per_iteration": 1, "schedule.rollout_batch_size": 1,
            "schedule.update_mode": "per_rollout"}


def scaling_exponent(ns: list[int], seconds: list[float]) -> float:
    """Least-squares slope b of log(seconds) = a + b log(N): b < 1 means sub-linear growth in N."""
    if len(ns) < 2 or len(ns) != len(seconds):
        raise ValueError(f"need >= 2 matching (N, seconds) points, got {len(ns)} and {len(seconds)}")
    xs, ys = [math.log(n) for n in ns], [math.log(s) for s in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError(f"N values must differ, got {ns}")
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def side_by_side(base: TrainConfig, num_images: int, images_per_iteration: int, warmup: int,
                 factory: Callable[[], tuple] | None, interleave: bool = True) -> dict[str, Any]:
    """Defaults vs release-equivalent on the same pool slots 0..num_images-1 and the same seed.

    ``interleave``: both trainers live at once and alternate (one defaults iteration, then the
    release iterations over the same images), so a load change on a shared machine hits both
    alike; otherwise one after the other (one model in memory at a time, for the 7B).
    """
    m = images_per_iteration
    plan = {"defaults": (defaults_overrides(m), covering_iterations(num_images, m)),
            "release-equivalent": (release_overrides(), covering_iterations(num_images, 1))}
    out: dict[str, Any] = {"images": num_images, "interleaved": interleave}
    if not interleave:
        for name, (over, measured) in plan.items():
            warm = list(range(len(measured) + 1, len(measured) + 1 + warmup))   # images outside the measured set
            _log(f"side-by-side: {name} ({len(measured)} iterations, {warmup} warm-up)")
            out[name] = run_setting(base, name, over, measured=measured, warmup=warm, backbone_factory=factory)
    else:
        runners = {}
        try:
            for name, (over, measured) in plan.items():
                runners[name] = SettingRunner(base, name, over, backbone_factory=factory)
                runners[name].warmup(list(range(len(measured) + 1, len(measured) + 1 + warmup)))
            for k in plan["defaults"][1]:
                _log(f"side-by-side: defaults iteration {k}, then release-equivalent iterations "
                     f"{(k - 1) * m + 1}..{k * m} (same images)")
                runners["defaults"].measure(k)
                for t in range((k - 1) * m + 1, k * m + 1):
                    runners["release-equivalent"].measure(t)
            for name, r in runners.items():
                out[name] = r.result()
        finally:
            for r in runners.values():
                r.close()
    out["ratio_rollouts_per_s"] = out["defaults"].rollouts_per_s / out["release-equivalent"].rollouts_per_s
    return out


def scaling(base: TrainConfig, ns: list[int], ms: list[int], ts: list[int], iterations: int, warmup: int,
            factory: Callable[[], tuple] | None) -> dict[str, Any]:
    """The defaults over N x images per iteration x solver max-new-tokens, plus the exponent in N per (m, T)."""
    rows: list[SettingResult] = []
    measured = list(range(1, iterations + 1))
    warm = list(range(iterations + 1, iterations + 1 + warmup))
    for m in ms:
        for t in ts:
            for n in ns:
                over = {**defaults_overrides(m), "sampling.num_rollouts": n, "sampling.solver_max_new_tokens": t,
                        # eq. 3's minimum group cannot exceed N (validated), so N = 1 lowers it.
                        "rewards.min_group": min(base.rewards.min_group, n)}
                _log(f"scaling: N={n} images/iteration={m} max_new_tokens={t}")
                rows.append(run_setting(base, f"N={n} m={m} T={t}", over, measured=measured, warmup=warm,
                                        backbone_factory=factory))
    exponents = []
    for m in ms:
        for t in ts:
            pts = [(r.overrides["sampling.num_rollouts"], r.seconds_per_iteration) for r in rows
                   if r.overrides["schedule.images_per_iteration"] == m
                   and r.overrides["sampling.solver_max_new_tokens"] == t]
            if len(pts) >= 2:
                ns_, secs = zip(*pts)
                exponents.append({"images_per_iteration": m, "solver_max_new_tokens": t,
                                  "exponent": scaling_exponent(list(ns_), list(secs)),
                                  "seconds_by_n": dict(pts)})
    return {"rows": rows, "exponents": exponents}


def decode_bandwidth(result: SettingResult, peak_gbs: float | None) -> dict[str, Any]:
    """Solver decoding against the memory-bandwidth bound: weights (and KV cache) read per step x steps / time."""
    calls = [c for it in result.iterations for c in it.solver_decode]
    seconds = sum(it.phase_seconds["rollouts"] for it in result.iterations)
    steps = decode_steps(calls)
    weights = result.decode_weight_bytes * steps
    kv = decode_kv_bytes(calls, result.kv_bytes_per_token)
    out = {"decode_steps": steps, "rollout_seconds": seconds, "ms_per_step": 1e3 * seconds / max(steps, 1),
           "weight_bytes_per_step": result.decode_weight_bytes, "weights_gb_per_s": weights / seconds / 1e9,
           "weights_and_kv_gb_per_s": (weights + kv) / seconds / 1e9, "peak_gb_per_s": peak_gbs}
    if peak_gbs:
        out["fraction_weights"] = bandwidth_fraction(weights, seconds, peak_gbs)
        out["fraction_weights_and_kv"] = bandwidth_fraction(weights + kv, seconds, peak_gbs)
    return out


# ----------------------------------------------------------------------------- reporting
def machine_info(device: str) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "load_average_start": list(os.getloadavg()), "device": device}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
    return info


def embedded_info() -> dict[str, Any]:
    """Which embedded build ran (its tokenizer/processor serve the 7B mode too)."""
    from ireasoner_core.embedded.shipped import shipped_model_dir

    info = json.loads((shipped_model_dir() / "BUILD.json").read_text())
    return {"build_version": info["build_version"], "parameters": info["parameters"],
            "warm_start": bool(info.get("warm_start"))}


def _gib(b: int | None) -> str:
    return "—" if b is None else f"{b / 2**30:.2f} GiB"


def _row(r: SettingResult, label: str) -> str:
    o = r.overrides
    return (f"| {label} | {o.get('schedule.images_per_iteration')} | {o.get('schedule.rollout_batch_size') or 'all'} "
            f"| {o.get('schedule.update_mode')} | {r.seconds_per_iteration:.2f} | {r.rollouts_per_s:.3f} "
            f"| {r.tokens_per_s_per_device:.0f} | {_gib(r.peak_memory_bytes)} |")


def _phase_table(r: SettingResult) -> list[str]:
    lines = [f"Per phase, {r.name} (mean over {len(r.iterations)} iterations):", "",
             "| phase | s / iteration | rollouts/s | tokens/s/device | peak memory |", "|---|---|---|---|---|"]
    for ph in PHASES:
        p = r.phases[ph]
        mem = _gib(p.peak_memory_bytes) if p.peak_memory_bytes is not None else "(in update)"
        lines.append(f"| {PHASE_LABELS[ph]} | {p.seconds:.3f} | {p.rollouts_per_s:.2f} "
                     f"| {p.tokens_per_s_per_device:.0f} | {mem} |")
    return lines + [""]


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"## {report['title']}", "",
             f"Machine: {m.get('gpu', m['cpu'])}; {m['cpu_count']} CPUs, torch threads {m['torch_threads']}, "
             f"load average at start {m['load_average_start'][0]:.2f}; torch {m['torch']}, "
             f"transformers {m['transformers']}.", ""]
    if report.get("embedded_model"):
        e = report["embedded_model"]
        lines += [f"Embedded model {e['build_version']} ({e['parameters']:,} parameters, warm-start "
                  f"{'yes' if e['warm_start'] else 'no'}).", ""]
    lines += [f"Command: `{report['command']}`", ""]
    head = ["| configuration | images/iteration | rollout batch | update | s / iteration | rollouts/s "
            "| tokens/s/device | peak memory |", "|---|---|---|---|---|---|---|---|"]
    sbs = report.get("side_by_side")
    if sbs:
        d, r = sbs["defaults"], sbs["release-equivalent"]
        how = "interleaved iteration by iteration" if sbs["interleaved"] else "one after the other"
        lines += [f"### Side by side ({sbs['images']} images, same pool slots and seed, {how})", "", *head,
                  _row(d, "defaults"), _row(r, "release-equivalent"), "",
                  f"**Ratio of rollouts/s, defaults / release-equivalent: {sbs['ratio_rollouts_per_s']:.1f}x**", "",
                  *_phase_table(d), *_phase_table(r)]
    sc = report.get("scaling")
    if sc:
        lines += ["### Scaling (defaults: all rollouts in one batch, batched update)", "",
                  "| N | images/iteration | solver tokens | s / iteration | rollouts/s | tokens/s/device | peak memory "
                  "| propose s | rollouts s | rewards s | log-probs s | update s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sc["rows"]:
            o = r.overrides
            ph = " | ".join(f"{r.phases[p].seconds:.2f}" for p in PHASES)
            lines.append(f"| {o['sampling.num_rollouts']} | {o['schedule.images_per_iteration']} "
                         f"| {o['sampling.solver_max_new_tokens']} | {r.seconds_per_iteration:.2f} | {r.rollouts_per_s:.2f} "
                         f"| {r.tokens_per_s_per_device:.0f} | {_gib(r.peak_memory_bytes)} | {ph} |")
        lines.append("")
        if sc["exponents"]:
            lines += ["Growth of seconds per iteration in N (least-squares exponent b of s ~ N^b; b < 1 is "
                      "sub-linear):", "", "| images/iteration | solver tokens | b | s(N_max) / s(N_min) "
                      "| N_max / N_min |", "|---|---|---|---|---|"]
        for e in sc["exponents"]:
            by_n = {int(k): v for k, v in e["seconds_by_n"].items()}
            lo, hi = min(by_n), max(by_n)
            lines.append(f"| {e['images_per_iteration']} | {e['solver_max_new_tokens']} | {e['exponent']:.2f} "
                         f"| {by_n[hi] / by_n[lo]:.2f} | {hi / lo:.0f} |")
        if sc["exponents"]:
            lines.append("")
    bw = report.get("bandwidth")
    if bw:
        lines += ["### Decoding against the memory-bandwidth bound (Solver rollouts phase)", "",
                  (f"Peak bandwidth used: {bw['peak_label']} = {bw['peak_gb_per_s']} GB/s." if bw["peak_gb_per_s"]
                   else "No peak bandwidth known for this device (pass --peak-bandwidth-gbs)."), "",
                  "| configuration | decode steps | ms / step | weights GB/s | fraction (weights) "
                  "| fraction (weights + KV) |", "|---|---|---|---|---|---|"]
        for name, b in bw["settings"].items():
            fw = f"{b['fraction_weights']:.2f}" if "fraction_weights" in b else "—"
            fk = f"{b['fraction_weights_and_kv']:.2f}" if "fraction_weights_and_kv" in b else "—"
            lines.append(f"| {name} | {b['decode_steps']} | {b['ms_per_step']:.1f} | {b['weights_gb_per_s']:.0f} "
                         f"| {fw} | {fk} |")
        lines.append("")
    return "\n".join(lines)


def _json_default(o: Any) -> Any:
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _log(msg: str) -> None:
    print(f"[benchmarks] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def _ints(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _overrides(pairs: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for p in pairs:
        if "=" not in p:
            raise SystemExit(f"--set expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None,
                    help="run config (default configs/tiny.yaml; with --gpu-7b the SPEC defaults)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted config override")
    ap.add_argument("--no-side-by-side", action="store_true", help="skip defaults vs release-equivalent")
    ap.add_argument("--images", type=int, default=None,
                    help="images measured side by side (default 20 on CPU, 8 with --gpu-7b)")
    ap.add_argument("--defaults-images-per-iteration", type=int, default=None,
                    help="images per iteration of the defaults side (default 4 on CPU, 8 with --gpu-7b)")
    ap.add_argument("--no-scaling", action="store_true", help="skip the scaling table")
    ap.add_argument("--n", type=_ints, default=None, help="N values (default 1,2,5,8,16; --gpu-7b: 5)")
    ap.add_argument("--images-per-iteration", type=_ints, default=None,
                    help="images per iteration (default 1,4,8; --gpu-7b: 1,4,8,16)")
    ap.add_argument("--max-new-tokens", type=_ints, default=None,
                    help="solver max-new-tokens (default 64,128,256; --gpu-7b: 256)")
    ap.add_argument("--iterations", type=int, default=1, help="measured iterations per scaling point")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured iterations before each setting")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--gpu-7b", action="store_true",
                    help="Qwen2.5-VL-7B architecture, random bf16 weights, paper settings, on --device")
    ap.add_argument("--device", default=None, help="device of --gpu-7b (default cuda; cpu only with --scaled-down)")
    ap.add_argument("--scaled-down", action="store_true",
                    help="--gpu-7b with the CPU-sized copy of the 7B config (dry run of the GPU path)")
    ap.add_argument("--image-pixels", type=int, default=PAPER_IMAGE_PIXELS, help="--gpu-7b image budget (448x448)")
    ap.add_argument("--gradient-checkpointing", choices=["on", "off"], default="on",
                    help="--gpu-7b: activation checkpointing in the update (default on)")
    ap.add_argument("--cache-implementation", choices=["dynamic", "static"], default="dynamic",
                    help="--gpu-7b: the KV cache generate uses; static is what lets transformers compile the "
                         "decode step into a CUDA graph (default dynamic, as the trainer runs)")
    ap.add_argument("--peak-bandwidth-gbs", type=float, default=None,
                    help="device peak memory bandwidth in GB/s (default: from the datasheet table by device name)")
    ap.add_argument("--output", type=Path, default=None, help="write <output>.json and <output>.md")
    ap.add_argument("--workdir", type=Path, default=None, help="run directory (default: a temporary one)")
    args = ap.parse_args(argv)
    gpu = args.gpu_7b
    args.images = args.images or (8 if gpu else 20)
    args.defaults_images_per_iteration = args.defaults_images_per_iteration or (8 if gpu else 4)
    args.n = args.n or ([5] if gpu else DEFAULT_NS)
    args.images_per_iteration = args.images_per_iteration or ([1, 4, 8, 16] if gpu else DEFAULT_MS)
    args.max_new_tokens = args.max_new_tokens or ([256] if gpu else DEFAULT_TS)
    if gpu:
        args.device = args.device or "cuda"
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            ap.error("--gpu-7b needs a CUDA/ROCm device (torch.cuda.is_available() is False); "
                     "use --device cpu --scaled-down for a CPU dry run")
        if not args.device.startswith("cuda") and not args.scaled_down:
            ap.error(f"--gpu-7b on --device {args.device} needs --scaled-down (the 7B does not fit a CPU run)")
    return args


def gpu_setup(args: argparse.Namespace, workdir: Path) -> tuple[TrainConfig, Callable[[], tuple], dict[str, Any]]:
    """Base config at the paper's settings and a factory for the 7B architecture with random weights."""
    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32   # bf16 matmuls are emulated (slow) on CPU
    processor = embedded_processor(args.image_pixels)
    arch = qwen2_5_vl_7b_config(processor.tokenizer, scaled_down=args.scaled_down)
    base_dict = load_config(args.config).model_dump(mode="json") if args.config else {}
    over = {"model.name_or_path": "embedded", "model.dtype": "bfloat16" if cuda else "float32",
            "sampling.num_rollouts": 5, "sampling.solver_max_new_tokens": 256,
            "sampling.proposer_max_new_tokens": 128, "lora.r": 16, "lora.alpha": 32,
            "perf.gradient_checkpointing": args.gradient_checkpointing == "on",
            "checkpoint.output_dir": str(workdir), "progress_bar": False, **_overrides(args.set)}
    base = build_config(base_dict, over, source="--gpu-7b settings")
    attn = base.model.attn_implementation

    def factory() -> tuple:
        model = build_random_backbone(arch, processor.tokenizer, args.device, dtype, attn)
        if args.cache_implementation == "static":
            # Read by generate() from the model's generation config, which Policy.generate leaves in place.
            model.generation_config.cache_implementation = "static"
        return model, processor

    info = {"architecture": "Qwen2.5-VL-7B (published config), random weights" if not args.scaled_down
            else "scaled-down copy of the Qwen2.5-VL-7B config (CPU dry run)",
            "dtype": str(dtype).replace("torch.", ""), "image_pixels": args.image_pixels,
            "gradient_checkpointing": args.gradient_checkpointing == "on",
            "cache_implementation": args.cache_implementation}
    return base, factory, info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ireasoner-bench-"))
    device = args.device if args.gpu_7b else "cpu" if not torch.cuda.is_available() else "cuda"
    report: dict[str, Any] = {"command": " ".join(["python -m benchmarks.throughput", *(argv or sys.argv[1:])]),
                              "machine": machine_info(device)}
    try:
        if args.gpu_7b:
            base, factory, report["gpu_7b"] = gpu_setup(args, workdir)
            report["title"] = f"{report['gpu_7b']['architecture']} on {report['machine'].get('gpu', device)}"
        else:
            config = args.config or "configs/tiny.yaml"
            base = load_config(config, {**_overrides(args.set), "checkpoint.output_dir": str(workdir),
                                        "progress_bar": False})
            factory = None
            report["title"] = f"{config} ({base.model.name_or_path}) on {device}"
        report["base_config"] = base.model_dump(mode="json")
        report["embedded_model"] = embedded_info()
        t0 = time.perf_counter()
        if not args.no_side_by_side:
            report["side_by_side"] = side_by_side(base, args.images, args.defaults_images_per_iteration,
                                                  args.warmup, factory, interleave=not args.gpu_7b)
        if not args.no_scaling:
            report["scaling"] = scaling(base, args.n, args.images_per_iteration, args.max_new_tokens,
                                        args.iterations, args.warmup, factory)
        if args.gpu_7b:
            known = peak_bandwidth(report["machine"].get("gpu", ""))
            peak = args.peak_bandwidth_gbs or (known[1] if known else None)
            label = "--peak-bandwidth-gbs" if args.peak_bandwidth_gbs else known[0] if known else "unknown device"
            settings = {}
            if "side_by_side" in report:
                for k in ("defaults", "release-equivalent"):
                    settings[k] = decode_bandwidth(report["side_by_side"][k], peak)
            for r in report.get("scaling", {}).get("rows", []):
                settings[r.name] = decode_bandwidth(r, peak)
            report["bandwidth"] = {"peak_label": label, "peak_gb_per_s": peak, "settings": settings,
                                   "datasheet_gb_per_s": PEAK_BANDWIDTH_GBS}
        report["seconds_total"] = time.perf_counter() - t0
        report["machine"]["load_average_end"] = list(os.getloadavg())
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    md = markdown(report)
    print(md)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.with_suffix(".json").write_text(json.dumps(report, indent=1, default=_json_default))
        args.output.with_suffix(".md").write_text(md + "\n")
        _log(f"wrote {args.output.with_suffix('.json')} and {args.output.with_suffix('.md')}")
    return report


if __name__ == "__main__":
    main()
