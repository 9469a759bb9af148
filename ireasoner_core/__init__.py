"""iReasoner: self-evolving Proposer-Solver training with a trajectory-aware step-agreement reward."""

__version__ = "0.1.0"
