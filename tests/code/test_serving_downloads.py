"""Download folders left by a serving process killed mid-download are removed at the next start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from services.serving.downloads import download_folder, remove_abandoned_downloads


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_folders_of_gone_processes_and_of_this_one_are_removed_others_stay(tmp_path: Path) -> None:
    gone = tmp_path / f"download-{dead_pid()}-abc"
    own = tmp_path / f"download-{os.getpid()}-def"  # a restarted server that got its predecessor's pid
    live = tmp_path / f"download-{os.getppid()}-ghi"  # another replica sharing the state folder
    unrelated = [tmp_path / "feast", tmp_path / "download-notapid-x"]
    for folder in [gone, own, live, *unrelated]:
        (folder / "bundle").mkdir(parents=True)

    assert remove_abandoned_downloads(tmp_path) == sorted([gone, own])
    assert sorted(p for p in tmp_path.iterdir()) == sorted([live, *unrelated])


def test_a_download_folder_names_its_owner_and_is_gone_after_use(tmp_path: Path) -> None:
    with download_folder(tmp_path / "state") as folder:
        assert Path(folder).name.startswith(f"download-{os.getpid()}-")
    assert list((tmp_path / "state").iterdir()) == []
    assert remove_abandoned_downloads(tmp_path / "missing") == []
