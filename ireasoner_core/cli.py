"""`ireasoner` command line: the core runs with no orchestration at all.

    ireasoner train --config configs/tiny.yaml [--set schedule.iterations=50 ...]
    accelerate launch --multi_gpu --num_processes 2 -m ireasoner_core.cli train --config configs/tiny.yaml  # CPU: gloo
    ireasoner measure-embedded            # BUILD.json's figures re-measured here, beside the shipped ones
    ireasoner build-embedded              # build the embedded recipe from scratch into the cache
    ireasoner replace-embedded BUILD_DIR  # make a build the shipped embedded model (recipe changes only)
    ireasoner make-images DIR -n 200      # synthetic unlabeled images with ground truth on the side
    ireasoner report --experiment ireasoner   # tables and figures from MLflow (ireasoner report --help)
    ireasoner benchmarks fetch [TASK ...]     # download the table-1 datasets into the HF cache (needs network)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from .config import ConfigError, load_config, load_yaml


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2, no traceback."""


def _parse_sets(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = load_yaml(value)   # "5" -> 5, "true" -> True, "[a, b]" -> list
        except yaml.YAMLError as err:   # a repeated key inside an inline mapping, or unparsable text
            raise ConfigError(f"--set {key.strip()}: {' '.join(str(err).split())}") from None
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
    from .quiet import quiet_known_warnings

    quiet_known_warnings()  # as the flow's training does: a healthy run prints no third-party FutureWarning

    from .preempt import TrainingInterrupted

    try:
        result = train(cfg)
    except (ImagePoolError, ModelLoadError, RunDirError) as err:
        raise CliError(str(err)) from None
    except OSError as err:  # full disk, file-size limit, read-only folder: the user's environment
        from .storage import describe_os_error

        raise CliError(describe_os_error(err, cfg.checkpoint.output_dir)) from None
    except TrainingInterrupted as stopped:      # SIGTERM / SIGINT: a checkpoint was written, 128 + signal
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {stopped}", file=sys.stderr)
        return stopped.exit_code
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps(result.to_json(), indent=2))
    return 0


def cmd_build_embedded(args: argparse.Namespace) -> int:
    from .model import BUILD_FILE, build_embedded_into

    path = build_embedded_into(Path(args.cache_dir) if args.cache_dir else None, progress=not args.quiet)
    info = json.loads((path / BUILD_FILE).read_text())
    print(f"[ireasoner] built {info['build_version']}: {info['parameters']:,} parameters in {info['seconds']} s; "
          f"make it the shipped model with: ireasoner replace-embedded {path}", file=sys.stderr)
    print(path)
    return 0


def cmd_replace_embedded(args: argparse.Namespace) -> int:
    from .embedded.shipped import SHIPPED_DIR, EmbeddedIntegrityError, replace_shipped

    try:
        manifest = replace_shipped(Path(args.build_dir), force=args.force)
    except EmbeddedIntegrityError as err:
        raise CliError(str(err)) from None
    print(f"{SHIPPED_DIR} now holds {manifest['build_version']} ({len(manifest['files'])} files in MANIFEST.json); "
          "commit it with the recipe change")
    return 0


def cmd_measure_embedded(args: argparse.Namespace) -> int:
    import torch

    from .embedded.remeasure import comparison, remeasure
    from .embedded.shipped import BUILD_FILE, EmbeddedIntegrityError, shipped_model_dir, verify

    try:
        model_dir = verify(Path(args.model)) if args.model else shipped_model_dir()
    except EmbeddedIntegrityError as err:
        raise CliError(str(err)) from None
    shipped = json.loads((model_dir / BUILD_FILE).read_text())
    here = remeasure(model_dir, threads=args.threads)
    print(f"{shipped['build_version']} ({model_dir}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, oneDNN {'on' if torch.backends.mkldnn.enabled else 'off'}")
    print(comparison(shipped.get("warm_start") or {}, here, torch.get_num_threads()))
    if args.json:
        Path(args.json).write_text(json.dumps(here, indent=2, sort_keys=True))
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
    b = sub.add_parser("build-embedded", help="build the embedded recipe from scratch into the cache (minutes)")
    b.add_argument("--cache-dir", help="where to build (default $IREASONER_EMBEDDED_CACHE or ~/.cache/ireasoner/embedded)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(fn=cmd_build_embedded)
    r = sub.add_parser("replace-embedded", help="make a build the shipped embedded model (only when the recipe changes)")
    r.add_argument("build_dir", help="a directory printed by `ireasoner build-embedded`")
    r.add_argument("--force", action="store_true", help="replace even though the recipe is the shipped one")
    r.set_defaults(fn=cmd_replace_embedded)
    me = sub.add_parser("measure-embedded", help="re-measure BUILD.json's figures here, beside the shipped ones")
    me.add_argument("--model", help="a build directory (default: the shipped embedded model)")
    me.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    me.add_argument("--json", help="also write this machine's figures to this JSON file")
    me.set_defaults(fn=cmd_measure_embedded)
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
