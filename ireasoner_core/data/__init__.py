"""Unlabeled image pools and the synthetic image generator of the embedded default."""
