"""Crash-safe file writes: the data goes to a temporary file beside the target, then one rename.

Readers (and a run resumed after a kill) see either the old file or the complete new one, never a part.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """Calls `write(temporary_path)`, then renames the result to `path`; the temporary never outlives a failure.

    `suffix` ends the temporary name, for writers that insist on an extension (np.savez appends .npz).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; a plain write would not
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
