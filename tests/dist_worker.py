"""Run by `accelerate launch` in tests/test_distributed.py: trains, then dumps this rank's adapters."""

import sys
from pathlib import Path

import torch

from ireasoner_core.config import build_config
from ireasoner_core.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_overrides  # noqa: E402

out = Path(sys.argv[1])
cfg = build_config({}, tiny_overrides(out / "run", **{"schedule.iterations": 3, "checkpoint.every": 3}))
tr = Trainer(cfg)
rank = tr.acc.process_index
before = {r: tr.policy.adapter_state(r) for r in ("solver", "proposer")}
tr.train()
after = {r: tr.policy.adapter_state(r) for r in ("solver", "proposer")}
torch.save({"before": before, "after": after, "world": tr.world,
            "baselines": {r: s.baseline for r, s in tr.state.items()}, "betas": {r: s.beta for r, s in tr.state.items()}},
           out / f"rank{rank}.pt")
