"""The built wheel carries the roles and playbooks: an installed tool needs no source tree."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_every_role_and_playbook_file(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("pydask_deploy-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    sources = [
        p.relative_to(ROOT)
        for folder in ("roles", "playbooks")
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    assert sources
    missing = [str(s) for s in sources if f"pydask_deploy/_ansible/{s}" not in shipped]
    assert not missing, missing
    assert "pydask_deploy/cli/main.py" in shipped
