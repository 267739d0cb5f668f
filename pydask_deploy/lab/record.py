"""The lab's record (``lab.json`` in its state directory): which hosts it started, with what.

``lab down`` and the next ``lab up`` read it to find what is running, even after a crash.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from pydask_deploy.lab.config import Lab, LabConfig, LabHost, Share
from pydask_deploy.lab.system import pid_alive


def read_lab(config: LabConfig) -> Lab | None:
    """The lab recorded in the state directory, or None."""
    try:
        data = json.loads(config.record_path.read_text())
    except (OSError, ValueError):
        return None
    hosts = tuple(LabHost(**h) for h in data.get("hosts", []))
    return Lab(
        config=config,
        hosts=hosts,
        docker=bool(data.get("docker")),
        registry=data.get("registry"),
        services={k: int(v) for k, v in data.get("services", {}).items()},
        shares=tuple(Share(**s) for s in data.get("shares", [])),
    )


def write_record(lab: Lab) -> None:
    """Record ``lab`` in its state directory in one step (a temporary file, then rename)."""
    lab.config.state_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "hosts": [asdict(h) for h in lab.hosts],
        "docker": lab.docker,
        "registry": lab.registry,
        "services": lab.services,
        "shares": [asdict(s) for s in lab.shares],
        "bridge": lab.config.bridge,
        "subnet": str(lab.config.subnet),
    }
    tmp = lab.config.record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(lab.config.record_path)


def host_marker(config: LabConfig, name: str) -> str:
    """What a host's nspawn command line holds: its root directory, unique to this lab."""
    return str(config.run_dir / name / "root")


def running_hosts(lab: Lab) -> list[LabHost]:
    """The recorded hosts whose nspawn still runs."""
    return [h for h in lab.hosts if pid_alive(h.pid, host_marker(lab.config, h.name))]
