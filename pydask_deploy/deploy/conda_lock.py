"""The conda lock file beside the inventory, ``<inventory stem>-conda-lock.yml``: what an
environment was solved from (the environment file, ``dask_version``, their hash) and, per
platform, every package's URL and sha256. Kept in git; read and written here, without rattler
(``deploy/conda.py`` solves and stages).
"""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pydask_deploy.errors import CondaError

LOCK_FORMAT = 1
ENV_ID_LENGTH = 16


def inputs_hash(environment_bytes: bytes, dask_version: str) -> str:
    """The hash the lock carries of what it was solved from. The role computes the same
    (``(dask_version ~ ':' ~ (file | hash('sha256'))) | hash('sha256')``) to tell a plain
    ansible-playbook run that the lock is out of date."""
    inner = hashlib.sha256(environment_bytes).hexdigest()
    return hashlib.sha256(f"{dask_version}:{inner}".encode()).hexdigest()


# --------------------------------------------------------------------------- the lock


@dataclass(frozen=True)
class LockedPackage:
    """One package of a solved environment: what it is and where its bytes come from."""

    name: str
    version: str
    build: str
    subdir: str
    url: str
    sha256: str

    @property
    def file_name(self) -> str:
        return urllib.parse.unquote(self.url.rstrip("/").rsplit("/", 1)[-1])

    def to_yaml(self) -> dict[str, str]:
        return {
            "name": self.name,
            "version": self.version,
            "build": self.build,
            "subdir": self.subdir,
            "url": self.url,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class PlatformLock:
    """The packages of one platform's environment; ``id`` names it on the hosts."""

    platform: str
    packages: tuple[LockedPackage, ...]

    @property
    def id(self) -> str:
        """The lock hash: a sha256 over the platform and every package's URL and sha256."""
        digest = hashlib.sha256(self.platform.encode())
        for line in sorted(f"{p.url} {p.sha256}" for p in self.packages):
            digest.update(b"\n" + line.encode())
        return digest.hexdigest()[:ENV_ID_LENGTH]


@dataclass(frozen=True)
class CondaLock:
    """The lock file: what was solved (file, version, the hash of both) and the result."""

    environment_file: str
    dask_version: str
    inputs: str
    channels: tuple[str, ...]
    specs: tuple[str, ...]
    platforms: Mapping[str, PlatformLock] = field(default_factory=dict)

    def render(self, inventory_name: str) -> str:
        header = (
            f"# The conda environment of {inventory_name}'s hosts, solved by pydask-deploy from\n"
            f"# {self.environment_file} with distributed {self.dask_version}. Keep it in git\n"
            "# beside the inventory: apply installs exactly these packages on every host while\n"
            "# the environment file and dask_version are unchanged (`inputs` is their hash);\n"
            "# `pydask-deploy upgrade` after an edit solves again and rewrites this file.\n"
            "# Each platform's `id` names its environment on the hosts:\n"
            "# <dask_base_dir>/envs/<id>.\n"
        )
        document = {
            "version": LOCK_FORMAT,
            "environment_file": self.environment_file,
            "dask_version": self.dask_version,
            "inputs": self.inputs,
            "channels": list(self.channels),
            "specs": list(self.specs),
            "platforms": {
                name: {"id": lock.id, "packages": [p.to_yaml() for p in lock.packages]}
                for name, lock in sorted(self.platforms.items())
            },
        }
        return header + yaml.safe_dump(document, sort_keys=False, width=200)


def _text(value: object, where: str) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError(f"{where} must be a string, got {value!r}")
    return str(value)


def read_lock(path: Path) -> CondaLock | None:
    """The lock file at ``path``, or None when there is none. ``CondaError`` when it is
    malformed (it is kept in git and may be edited or merged by hand)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        document = yaml.safe_load(text)
        if not isinstance(document, dict) or document.get("version") != LOCK_FORMAT:
            raise ValueError(f"`version` must be {LOCK_FORMAT}")
        platforms = {}
        for name, entry in (document.get("platforms") or {}).items():
            packages = tuple(
                LockedPackage(
                    **{
                        k: _text(p.get(k), f"platforms.{name}.packages[{i}].{k}")
                        for k in ("name", "version", "build", "subdir", "url", "sha256")
                    }
                )
                for i, p in enumerate(entry["packages"])
            )
            platforms[str(name)] = PlatformLock(str(name), packages)
            if entry.get("id") != platforms[str(name)].id:
                raise ValueError(f"platforms.{name}.id does not match its packages")
        return CondaLock(
            environment_file=_text(document["environment_file"], "environment_file"),
            dask_version=_text(document["dask_version"], "dask_version"),
            inputs=_text(document["inputs"], "inputs"),
            channels=tuple(str(c) for c in document.get("channels") or ()),
            specs=tuple(str(s) for s in document.get("specs") or ()),
            platforms=platforms,
        )
    except (yaml.YAMLError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CondaError(
            f"{path}: not a pydask-deploy conda lock ({exc}); delete it and run "
            "`pydask-deploy apply` to solve the environment again"
        ) from None
