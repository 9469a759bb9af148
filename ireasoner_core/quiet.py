"""Known-harmless third-party warnings, silenced one by one (message, category and module), nothing more.

Each entry says why it is harmless; a warning not listed here still shows. ``quiet_known_warnings``
is idempotent and cheap, so every entry point that reaches the warning's code calls it; a
subprocess gets the same filters through ``PYTHONWARNINGS`` (``python_warnings_env``).

- transformers 5 deprecated ``PreTrainedModel.is_gradient_checkpointing`` in favour of
  ``is_activation_checkpointing`` (same value). peft reads the old name each time it wraps a model
  (``get_peft_model``, ``PeftModel.from_pretrained``), so every training and every evaluation with an
  adapter printed a FutureWarning about code that is not ours and that behaves the same.
"""

from __future__ import annotations

import re
import warnings

KNOWN_HARMLESS: tuple[tuple[str, type[Warning], str], ...] = (
    # (start of the message, category, module that calls warnings.warn), all literal
    ("`is_gradient_checkpointing` is deprecated", FutureWarning, "transformers.modeling_utils"),
)


def quiet_known_warnings() -> None:
    """Ignore exactly the warnings of ``KNOWN_HARMLESS`` (process-wide; other warnings are untouched)."""
    for message, category, module in KNOWN_HARMLESS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category,
                                module=re.escape(module) + "$")


def python_warnings_env(current: str | None = None) -> str:
    """``PYTHONWARNINGS`` for a subprocess: ``current`` (the caller's own filters) plus ``KNOWN_HARMLESS``."""
    ours = [f"ignore:{message}:{category.__name__}:{module}" for message, category, module in KNOWN_HARMLESS]
    return ",".join([current, *ours] if current else ours)
