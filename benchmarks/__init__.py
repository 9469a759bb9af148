"""Throughput benchmarks of the iReasoner trainer (issue 5); run by hand, never by the test suite.

* ``benchmarks.throughput``: the command (side-by-side defaults vs release-equivalent, scaling
  table, ``--gpu-7b`` mode); see docs/benchmarks.md.
* ``benchmarks.measure``: runs ``Trainer.iteration`` under a setting and reports per-phase wall
  seconds, rollouts/s, tokens/s per device and peak memory.
* ``benchmarks.qwen7b``: Qwen2.5-VL-7B's architecture with random weights (no download) and the
  decode memory-bandwidth bound.
"""
