"""`ireasoner` command line: the core runs with no orchestration at all.

    ireasoner train --config configs/tiny.yaml [--set schedule.iterations=50 ...]
    accelerate launch --multi_gpu --num_processes 2 -m ireasoner_core.cli train --config configs/tiny.yaml  # CPU: gloo
    ireasoner build-embedded              # build (once) and cache the embedded tiny Qwen2.5-VL
    ireasoner make-images DIR -n 200      # synthetic unlabeled images with ground truth on the side
    ireasoner report --experiment ireasoner   # tables and figures from MLflow (ireasoner report --help)
    ireasoner benchmarks fetch [TASK ...]     # download the table-1 datasets into the HF cache (needs network)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from .config import ConfigError, load_config


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2, no traceback."""


def _parse_sets(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)   # "5" -> 5, "true" -> True, "[a, b]" -> list
    return out


def cmd_train(args: argparse.Namespace) -> int:
    overrides = _parse_sets(args.set)
    if args.output_dir:
        overrides["checkpoint.output_dir"] = args.output_dir
    cfg = load_config(args.config, overrides)
    from .data.pool import ImagePoolError
    from .model import ModelLoadError
    from .rundir import RunDirError
    from .trainer import (
        train,  # after validation: importing torch takes seconds a bad config should not wait
    )

    try:
        result = train(cfg)
    except (ImagePoolError, ModelLoadError, RunDirError) as err:
        raise CliError(str(err)) from None
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps(result.to_json(), indent=2))
    return 0


def cmd_build_embedded(args: argparse.Namespace) -> int:
    from .model import ensure_embedded_model

    path = ensure_embedded_model(Path(args.cache_dir) if args.cache_dir else None, force=args.force)
    print(path)
    return 0


def cmd_make_images(args: argparse.Namespace) -> int:
    from .data.synthetic import generate_synthetic

    items = generate_synthetic(Path(args.out_dir), args.n, seed=args.seed)
    print(f"wrote {len(items)} images and ground_truth.jsonl to {args.out_dir}")
    return 0


def cmd_benchmarks_fetch(args: argparse.Namespace) -> int:
    from .evaluation.fetch import main as fetch_main

    return fetch_main(args.tasks)


def cmd_delegate(module: str, argv: list[str]) -> int:
    """Commands that need the tracking layer live outside ireasoner_core (no mlflow imports here)."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        print(f"this command needs the project's tracking layer ({module}): {err}", file=sys.stderr)
        return 2
    return int(mod.main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        return cmd_delegate("tasks.reporting", argv[1:])
    p = argparse.ArgumentParser(prog="ireasoner", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (or resume) one run")
    t.add_argument("--config", required=True, help="YAML config (see configs/)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, repeatable")
    t.add_argument("--output-dir", help="shortcut for --set checkpoint.output_dir=...")
    t.set_defaults(fn=cmd_train)
    b = sub.add_parser("build-embedded", help="build and cache the embedded tiny Qwen2.5-VL")
    b.add_argument("--cache-dir", help="where to cache the model (default ~/.cache/ireasoner/embedded)")
    b.add_argument("--force", action="store_true", help="rebuild even if a cached copy exists")
    b.set_defaults(fn=cmd_build_embedded)
    m = sub.add_parser("make-images", help="write synthetic unlabeled images (ground truth on the side)")
    m.add_argument("out_dir", help="folder to write the images to")
    m.add_argument("-n", type=int, default=200, help="number of images (default 200)")
    m.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    m.set_defaults(fn=cmd_make_images)
    sub.add_parser("report", help="tables 1-3 and figures from MLflow (see: ireasoner report --help)")
    bench = sub.add_parser("benchmarks", help="lmms-eval benchmark datasets")
    bench_sub = bench.add_subparsers(dest="benchmarks_command", required=True)
    fetch = bench_sub.add_parser("fetch", help="download benchmark datasets into the Hugging Face cache (needs network)")
    fetch.add_argument("tasks", nargs="*", metavar="TASK",
                       help="lmms-eval task names (default: the eight of paper table 1)")
    fetch.set_defaults(fn=cmd_benchmarks_fetch)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, CliError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
