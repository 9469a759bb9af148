"""Host-side cost of one decode step against decoder depth, at widths where the arithmetic is negligible.

The 7B's decode step on an H100 took 81-97 ms whatever the batch (docs/benchmarks.md), far above
its bandwidth bound. This measures the part that does not depend on the accelerator: Python and
operator dispatch per decode step of ``Policy.generate`` on the 7B's layer structure shrunk to
width 64, at several depths, side by side in one run:

* today's path, Hugging Face ``generate`` (``perf.decode=generate``), with the LoRA adapter as
  trained (unmerged) and folded into the weights (``merge_adapter``);
* the static path (``perf.decode=static``, ireasoner_core/decode.py) uncompiled, and with the decode
  step compiled (``perf.compile_decode``), with the adapter merged into its copy and unmerged.

    .venv/bin/python -m benchmarks.decode_overhead --layers 2,8,28 --tokens 48 --threads 1
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # nothing here may reach a hub

import torch

from ireasoner_core.config import build_config
from ireasoner_core.data.synthetic import make_item
from ireasoner_core.decode import StaticDecoder
from ireasoner_core.policy import Policy

from .qwen7b import (
    SCALED_DOWN_TEXT,
    SCALED_DOWN_VISION,
    build_random_backbone,
    embedded_processor,
    qwen2_5_vl_config,
)

WIDTH = 64   # hidden size; head dim 32, so M-RoPE sections [4, 6, 6] as in the embedded model
# key -> (column, decode path, static decoder options); "generate-merged" folds the adapter in place first.
PATHS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "generate": ("generate, LoRA unmerged", "generate", {}),
    "generate-merged": ("generate, LoRA merged", "generate", {}),
    "static": ("static eager, merged copy", "static", {"adapter": "merged"}),
    "static-compiled": ("static compiled, merged copy", "static", {"adapter": "merged", "compile": True}),
    "static-compiled-unmerged": ("static compiled, unmerged", "static", {"adapter": "unmerged", "compile": True}),
}


def narrow_text(layers: int, vocab_size: int) -> dict[str, Any]:
    """The 7B text config's structure (GQA, M-RoPE, SwiGLU) at width 64 and ``layers`` layers."""
    return {**SCALED_DOWN_TEXT, "num_hidden_layers": layers, "hidden_size": WIDTH, "intermediate_size": 2 * WIDTH,
            "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": vocab_size, "mrope_section": [4, 6, 6]}


def measure(layers: list[int], tokens: int, repeats: int = 3, paths: list[str] | None = None) -> list[dict[str, Any]]:
    """ms per decode step of ``Policy.generate`` (5 sequences of one image, fixed length) per depth and path.

    A step's time is the whole generate call over ``tokens``, the prefill included (the H100 figure it is
    compared with includes the prefill too), the fastest of ``repeats`` calls after one warm-up call (which,
    for a compiled step, compiles it: its time is reported apart).
    """
    processor = embedded_processor(112 * 112, SCALED_DOWN_VISION)
    vocab = -(-len(processor.tokenizer) // 64) * 64
    cfg = build_config({}, {"model.dtype": "float32"}, source="decode_overhead")
    images = [make_item(0, "bar", seed=0)[1].convert("RGB")]
    questions = ["What is the value of the tallest bar?"]
    rows = []
    for depth in layers:
        arch = qwen2_5_vl_config(processor.tokenizer, narrow_text(depth, vocab),
                                 {**SCALED_DOWN_VISION, "out_hidden_size": WIDTH})
        backbone = build_random_backbone(arch, processor.tokenizer, "cpu", torch.float32)
        policy = Policy(cfg.model, cfg.lora, cfg.perf, torch.device("cpu"), backbone=(backbone, processor))
        row: dict[str, Any] = {"layers": depth}
        for column, path, options in (PATHS[k] for k in paths or PATHS):
            policy.decoder = StaticDecoder(policy.backbone, **options) if path == "static" else None
            merge = column == "generate, LoRA merged"
            if merge:
                policy.model.set_adapter("solver")
                policy.model.merge_adapter()

            def run() -> None:
                policy.generate("solver", images, questions, num_return_sequences=5, max_new_tokens=tokens,
                                temperature=1.0, top_p=1.0, fixed_length=True)
            t = time.perf_counter()
            run()   # warm-up: allocator, first-call paths, the compile
            first = time.perf_counter() - t
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - t)
            if merge:
                policy.model.unmerge_adapter()
            row[column] = 1000 * best / tokens
            if options.get("compile"):
                row[column + " (first call, s)"] = first
        rows.append(row)
    return rows


def to_markdown(rows: list[dict[str, Any]], tokens: int, threads: int) -> str:
    names = [c for c, _, _ in PATHS.values() if c in rows[0]]
    lines = [f"Host ms per decode step, `Policy.generate`, 5 sequences x {tokens} tokens, width {WIDTH}, "
             f"{threads} torch thread(s):", "",
             "| decoder layers | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += ["| " + " | ".join([str(r["layers"])] + [f"{r[c]:.2f}" for c in names]) + " |" for r in rows]
    deep = rows[-1]
    lines += [""]
    today = deep.get("generate, LoRA unmerged")
    for c in names[1:] if today else []:
        lines.append(f"- {c}: {today / deep[c]:.1f}x lower than today's ({deep['layers']} layers)")
    compiled = [c for c in names if c + " (first call, s)" in deep]
    lines += [f"- first call of `{c}` (compiles the step): {deep[c + ' (first call, s)']:.0f} s" for c in compiled]
    if len(rows) >= 2:
        a = rows[0]
        for c in names:
            slope = (deep[c] - a[c]) / (deep["layers"] - a["layers"])
            lines.append(f"- per decoder layer, {c}: {slope:.3f} ms per step ({a['layers']} -> {deep['layers']} layers)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.decode_overhead", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="2,8,28", help="comma-separated decoder depths (default 2,8,28)")
    ap.add_argument("--tokens", type=int, default=48, help="new tokens per sequence (default 48)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per setting; the fastest counts")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--paths", default=",".join(PATHS),
                    help=f"comma-separated decode paths, today's first (default all: {','.join(PATHS)})")
    args = ap.parse_args(argv)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in paths if p not in PATHS]
    if unknown or not paths:
        ap.error(f"--paths {args.paths!r}: unknown {unknown}; choose from {', '.join(PATHS)}")
    try:
        layers = [int(x) for x in args.layers.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--layers {args.layers!r}: expected comma-separated integers")
    if not layers or min(layers) < 1:
        ap.error(f"--layers {args.layers!r}: every depth must be at least 1")
    if args.tokens < 2:
        ap.error(f"--tokens {args.tokens}: need at least 2 (the first token comes from the prefill)")
    torch.set_num_threads(args.threads)
    rows = measure(layers, args.tokens, args.repeats, paths)
    print(to_markdown(rows, args.tokens, args.threads))
    return rows


if __name__ == "__main__":
    main()
