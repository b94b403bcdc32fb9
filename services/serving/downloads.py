"""Where serving puts a registry version while it downloads and verifies it.

Each download gets a temporary folder in the state folder named after the serving
process (`download-<pid>-...`). The served version's folder stays until the next
version replaces it (files the two share are copied from it, not downloaded) or
serving stops; a process killed cannot remove it, and every such kill would leave a whole bundle
behind. So at start serving removes the download folders of processes that no longer
run, and its own pid's (none is its own yet: in a container a restarted server often
gets the pid of the one before). Folders of another live replica sharing the state
folder are left alone.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
PREFIX = "download-"


def download_folder(state_dir: Path) -> tempfile.TemporaryDirectory[str]:
    """A temporary folder for one download, removed on exit; its name says which process owns it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=state_dir, prefix=f"{PREFIX}{os.getpid()}-")


def remove_abandoned_downloads(state_dir: Path) -> list[Path]:
    """Remove download folders whose process is gone (or is this one, before its first download)."""
    removed = []
    for folder in sorted(state_dir.glob(f"{PREFIX}*-*")):
        owner = folder.name.removeprefix(PREFIX).split("-", 1)[0]
        if not folder.is_dir() or not owner.isdigit() or (int(owner) != os.getpid() and _running(int(owner))):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    if removed:
        log.warning("removed %d download folder(s) left by a server that stopped mid-download: %s", len(removed),
                    ", ".join(f.name for f in removed))
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
