"""The services a lab runs on the controller for its hosts: a Docker registry for --docker labs.

They listen on the bridge address only and are recorded (by PID) with the lab, so that
``lab down`` stops them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import yaml

from pydask_deploy.errors import LabUsageError
from pydask_deploy.lab.config import REGISTRY_PORT, Lab, LabConfig
from pydask_deploy.lab.system import pid_alive


def start_registry(config: LabConfig) -> int:
    """Serve a Docker registry on the bridge address for --docker labs (Debian docker-registry)."""
    binary = shutil.which("docker-registry")
    if binary is None:
        raise LabUsageError(
            "`docker-registry` not found; --docker labs need it: "
            "PYDASK_LAB_DOCKER=1 scripts/setup (apt package docker-registry)"
        )
    storage = config.cache_dir / "registry"
    storage.mkdir(parents=True, exist_ok=True)
    conf = config.state_dir / "registry.yml"
    conf.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "log": {"level": "warn"},
                "storage": {
                    "filesystem": {"rootdirectory": str(storage)},
                    "delete": {"enabled": True},
                },
                "http": {"addr": f"{config.gateway}:{REGISTRY_PORT}"},
            }
        )
    )
    with open(config.state_dir / "registry.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, "serve", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc.pid


def stop_services(lab: Lab) -> None:
    """SIGTERM the services the lab recorded, if those PIDs are still them."""
    markers = {"registry": "docker-registry"}
    for name, pid in lab.services.items():
        if pid_alive(pid, markers.get(name, name)):
            os.kill(pid, signal.SIGTERM)
