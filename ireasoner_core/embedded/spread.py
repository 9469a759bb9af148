"""How far the shipped model's outputs move between CPU kernels and thread counts (same weights).

    python -m ireasoner_core.embedded.spread [--figures] [--json OUT]

Runs the shipped model in one child process per setting (1 and 2 threads, the avx2 kernels in
place of the CPU's best, oneDNN off) on fixed Solver prompts, and reports against the first
setting: the largest log-probability difference of the same tokens, and how many greedy
continuations change. With ``--figures`` each child also re-measures BUILD.json's figures, so the
spread of every figure the tests assert on is measured, not assumed (docs/embedded_model.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SETTINGS: tuple[tuple[str, dict[str, str], list[str]], ...] = (
    ("1 thread", {}, ["--threads", "1"]),
    ("2 threads", {}, ["--threads", "2"]),
    ("2 threads, avx2 kernels", {"ATEN_CPU_CAPABILITY": "avx2"}, ["--threads", "2"]),
    ("2 threads, oneDNN off", {}, ["--threads", "2", "--no-onednn"]),
)
PROMPTS = 24
NEW_TOKENS = 48


def _child(threads: int, onednn: bool, figures: bool) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = onednn
    from ireasoner_core import prompts
    from ireasoner_core.config import ModelConfig
    from ireasoner_core.data.synthetic import KINDS, make_item
    from ireasoner_core.model import load_backbone

    model, processor = load_backbone(ModelConfig(dtype="float32"))
    pairs = [make_item(9000 + i, KINDS[i % len(KINDS)], seed=77) for i in range(PROMPTS)]
    texts = [processor.apply_chat_template(prompts.solver_messages(item.qa[0].question), tokenize=False,
                                           add_generation_prompt=True) for item, _ in pairs]
    enc = processor(text=texts, images=[im.convert("RGB") for _, im in pairs], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=NEW_TOKENS, output_scores=True,
                             return_dict_in_generate=True)
    new = out.sequences[:, enc["input_ids"].shape[1]:]
    logp = torch.stack([s.float().log_softmax(-1) for s in out.scores], 1)  # (batch, steps, vocab)
    chosen = logp.gather(-1, new.unsqueeze(-1)).squeeze(-1)
    result = {"ids": new.tolist(), "logprobs": chosen.tolist(), "threads": torch.get_num_threads(),
              "capability": torch.backends.cpu.get_cpu_capability(), "onednn": onednn}
    if figures:
        from ireasoner_core.embedded.remeasure import remeasure
        from ireasoner_core.embedded.shipped import shipped_model_dir

        result["figures"] = remeasure(shipped_model_dir(), threads=threads)
    return result


def _agreement(ref: dict, other: dict) -> dict:
    """Greedy continuations that differ, and the largest |Δ log p| over tokens before any divergence."""
    changed, worst = 0, 0.0
    for ids_a, ids_b, lp_a, lp_b in zip(ref["ids"], other["ids"], ref["logprobs"], other["logprobs"]):
        changed += ids_a != ids_b
        for a, b, x, y in zip(ids_a, ids_b, lp_a, lp_b):
            if a != b:
                break
            worst = max(worst, abs(x - y))
    return {"greedy_changed": changed, "max_abs_logprob_diff": worst}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ireasoner_core.embedded.spread", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--figures", action="store_true", help="also re-measure BUILD.json's figures per setting")
    p.add_argument("--json", help="write every setting's results here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--no-onednn", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.threads, not args.no_onednn, args.figures)))
        return 0
    from ireasoner_core.embedded.remeasure import FIGURES, figure

    runs = {}
    for name, env, extra in SETTINGS:
        cmd = [sys.executable, "-m", "ireasoner_core.embedded.spread", "--child", *extra]
        cmd += ["--figures"] if args.figures else []
        done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "Error" in line] or done.stderr.splitlines()[-1:]
            print(f"error: setting {name!r} failed: {errors[-1] if errors else done.returncode}", file=sys.stderr)
            return 1
        runs[name] = json.loads(done.stdout.strip().splitlines()[-1])
    ref_name = SETTINGS[0][0]
    print(f"| setting (vs {ref_name}) | kernels | greedy continuations changed (of {PROMPTS}) | max abs Δ log p |")
    print("|---|---|---:|---:|")
    for name, run in runs.items():
        a = _agreement(runs[ref_name], run)
        print(f"| {name} | {run['capability']}, oneDNN {'on' if run['onednn'] else 'off'} | {a['greedy_changed']} | "
              f"{a['max_abs_logprob_diff']:.2e} |")
    if args.figures:
        print("\n| figure | " + " | ".join(runs) + " | spread |")
        print("|---|" + "---:|" * (len(runs) + 1))
        for label, path in FIGURES:
            values = [figure(r["figures"], path) for r in runs.values()]
            nums = [v for v in values if v is not None]
            spread = f"{max(nums) - min(nums):.3g}" if nums else ""
            print(f"| {label} | " + " | ".join("—" if v is None else str(v) for v in values) + f" | {spread} |")
    if args.json:
        Path(args.json).write_text(json.dumps(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
