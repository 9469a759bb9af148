"""Every option of the three command lines has help text, and no help mentions an extra that does not exist."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("entry", ["ireasoner_core.cli", "flows.run", "tasks.reporting"])
def test_every_option_has_help_and_no_unknown_extras(entry, monkeypatch, capsys):
    import importlib

    actions: list[argparse.Action] = []
    original = argparse._ActionsContainer.add_argument

    def recording(self, *args, **kwargs):
        action = original(self, *args, **kwargs)
        actions.append(action)
        return action

    monkeypatch.setattr(argparse._ActionsContainer, "add_argument", recording)
    with pytest.raises(SystemExit):
        importlib.import_module(entry).main(["--help"])
    text = capsys.readouterr().out
    options = [a for a in actions if not isinstance(a, argparse._HelpAction)]
    assert len(options) >= 3
    missing = [a.option_strings or a.dest for a in options if not a.help]
    assert missing == [], f"{entry}: options without help text: {missing}"
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for line in text.splitlines():
        if re.search(r"\bextras?\b", line):
            assert any(f"[{e}]" in line for e in extras), f"{entry}: help mentions an extra that does not exist: {line!r}"
