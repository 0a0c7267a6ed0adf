"""What a host keeps for its guests is not for the host's other users to read."""

from __future__ import annotations

import stat
from pathlib import Path

from lamina.agent.disks import DiskStore


def test_the_guests_folder_is_private_even_when_it_existed(tmp_path: Path) -> None:
    root = tmp_path / "guests"
    root.mkdir(mode=0o755)
    root.chmod(0o755)  # as an older agent left it
    DiskStore(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    fresh = tmp_path / "new" / "guests"
    DiskStore(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
