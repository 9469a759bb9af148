"""Writes that fail for want of space, a file-size limit or a read-only folder, raised as OSErrors naming the file.

torch and safetensors hide the operating system's error: a full disk or ``ulimit -f`` during
``torch.save`` surfaces as ``RuntimeError: [enforce fail at inline_container.cc:671] . unexpected
pos …`` and in safetensors as ``SafetensorError: … (os error 27)``, neither naming the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

_OS_ERROR_CODE = re.compile(r"os error (\d+)|Os \{ code: (\d+)")


def describe_os_error(err: OSError, fallback: str | Path | None = None) -> str:
    """One line: ``<file>: <reason>``, else ``writing under <fallback>: <reason>`` when the error names no file."""
    reason = err.strerror or (os.strerror(err.errno) if err.errno else str(err).splitlines()[0])
    if err.filename is not None:
        return f"{err.filename}: {reason}"
    return f"writing under {fallback}: {reason}" if fallback is not None else reason


def hidden_os_error(err: BaseException, path: str | Path) -> OSError | None:
    """The operating system's error behind a library's ``err``, naming ``path``; None when there is none."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return OSError(seen.errno, seen.strerror or os.strerror(seen.errno), str(seen.filename or path))
        seen = seen.__cause__ or seen.__context__
    match = _OS_ERROR_CODE.search(str(err))
    if match:
        code = int(match.group(1) or match.group(2))
        return OSError(code, os.strerror(code), str(path))
    return None


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Within it, a failed write raises an OSError naming ``path`` (or the file the OS named)."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    except (RuntimeError, SafetensorError) as err:
        found = hidden_os_error(err, path)
        if found is None:
            raise
        raise found from err


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a Python file, so that the OS's error (ENOSPC, EFBIG, EROFS) is kept and names ``path``."""
    # Given a path, torch writes through C++ streams and loses errno ("basic_ios::clear"); a Python
    # file's failed write leaves its OSError as the context of torch's RuntimeError.
    with writing(path), open(path, "wb") as f:
        torch.save(obj, f)
