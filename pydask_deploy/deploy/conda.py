"""The conda runtime on the controller: solve once, lock, fetch, stage, ship a tarball.

Every host running ``dask_runtime: conda`` gets the same packages, so they are decided here,
once, not on each host:

1. **read** the inventory's ``dask_conda_environment_file`` (an ``environment.yml``:
   ``channels`` and ``dependencies``; ``distributed`` required), with ``distributed``
   pinned to ``dask_version`` (a pin in the file that differs is an error naming both);
2. **solve** it with py-rattler for the hosts' platform (``dask_conda_platform``), or reuse
   the **lock file** beside the inventory, ``<inventory stem>-conda-lock.yml`` (every
   package's URL and sha256), while the environment file and ``dask_version`` are those it
   was solved from (their hash is in the lock);
3. **fetch** every locked package into the controller's cache, verifying its sha256;
4. **stage** the environment for its final path on the hosts,
   ``<dask_base_dir>/envs/<lock id>``: py-rattler installs it into a staging directory with
   every path already rewritten for the final location; it is tarred once per lock id and
   final path, and kept in the cache.

The role (``tasks/conda.yml``) copies that tarball to each host and unpacks it: hosts need
neither a channel nor a conda installer. The cache is ``dask_conda_cache_dir``, else
``$PYDASK_DEPLOY_CONDA_CACHE``, else ``$XDG_CACHE_HOME/pydask-deploy/conda`` (or
``~/.cache/pydask-deploy/conda``).

This is the one module that imports ``rattler`` (lazily: only apply and upgrade of a conda
cluster pay for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pydask_deploy import contract
from pydask_deploy.deploy.conda_lock import (
    CondaLock,
    LockedPackage,
    PlatformLock,
    inputs_hash,
    read_lock,
)
from pydask_deploy.errors import CondaChannelError, CondaError
from pydask_deploy.inventory import Host, Inventory

if TYPE_CHECKING:
    from rattler import GenericVirtualPackage, RepoDataRecord

DEFAULT_PLATFORM = "linux-64"
FETCH_TIMEOUT = 60.0
FETCH_THREADS = 8
_JINJA = re.compile(r"{{|{%|{#")
# What a host of a platform other than the controller's is assumed to offer the solver.
_OTHER_PLATFORM_GLIBC = "2.17"

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------- where things are


def lock_path(inventory: Inventory) -> Path:
    """The lock file beside the inventory: ``<inventory stem>-conda-lock.yml``."""
    return inventory.path.parent / f"{inventory.path.stem}-conda-lock.yml"


def cache_dir(configured: object = "") -> Path:
    """The controller's conda cache (packages, staged tarballs); see the module docstring."""
    if isinstance(configured, str) and configured:
        return Path(configured).expanduser()
    if os.environ.get("PYDASK_DEPLOY_CONDA_CACHE"):
        return Path(os.environ["PYDASK_DEPLOY_CONDA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pydask-deploy" / "conda"


def tarball_name(env_id: str, final_path: str) -> str:
    """The staged environment's file name in the cache: one per lock id and final path.

    The role computes the same name (``{{ id }}-{{ final | hash('sha1') | truncate(12) }}``).
    """
    return f"{env_id}-{hashlib.sha1(final_path.encode()).hexdigest()[:12]}.tar.gz"


def _controller_path(inventory: Inventory, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else inventory.path.parent / path


# --------------------------------------------------------------------------- the environment file


@dataclass(frozen=True)
class EnvironmentFile:
    """An ``environment.yml`` as solved: its channels and its specs, ``distributed`` pinned."""

    path: Path
    channels: tuple[str, ...]
    specs: tuple[str, ...]


def read_environment_file(path: Path, dask_version: str) -> EnvironmentFile:
    """Read and check an environment file; pin ``distributed`` to ``dask_version``.

    ``CondaError`` (exit 2) names the file and the key or spec: not YAML, no channels, a
    dependency that is not a conda spec (``pip:`` sections included), no ``distributed``, or
    a ``distributed`` pin that ``dask_version`` does not satisfy.
    """
    from rattler import MatchSpec, Version, VersionSpec
    from rattler.exceptions import InvalidMatchSpecError

    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CondaError(
            f"{path}: cannot read the conda environment file "
            f"(`dask_conda_environment_file`): {exc.strerror or exc}"
        ) from None
    except yaml.YAMLError as exc:
        raise CondaError(f"{path}: not a YAML environment file: {exc}") from None
    if not isinstance(document, dict):
        raise CondaError(f"{path}: must be a mapping with `channels` and `dependencies`")
    channels = document.get("channels")
    if not isinstance(channels, list) or not channels:
        raise CondaError(f"{path}: `channels` must be a non-empty list, got {channels!r}")
    channels = [c for c in channels if c != "nodefaults"]
    if not all(isinstance(c, str) and c for c in channels):
        raise CondaError(f"{path}: every item of `channels` must be a channel name or URL")
    dependencies = document.get("dependencies")
    if not isinstance(dependencies, list) or not dependencies:
        raise CondaError(f"{path}: `dependencies` must be a non-empty list, got {dependencies!r}")
    specs: list[str] = []
    pinned = False
    for item in dependencies:
        if not isinstance(item, str):
            raise CondaError(
                f"{path}: `dependencies` item {item!r} is not a conda spec (pip sections are "
                "not supported: hosts install nothing but the locked conda packages)"
            )
        try:
            spec = MatchSpec(item)
        except InvalidMatchSpecError as exc:
            raise CondaError(f"{path}: `dependencies` item {item!r}: {exc}") from None
        if spec.name is not None and spec.name.normalized == "distributed":
            pinned = True
            if spec.version is not None and not VersionSpec(str(spec.version)).matches(
                Version(dask_version)
            ):
                raise CondaError(
                    f"{path}: `dependencies` pins {item!r} but dask_version is "
                    f"{dask_version!r}: client, scheduler and workers must run the same "
                    "distributed; make them agree"
                )
        specs.append(item)
    if not pinned:
        raise CondaError(f"{path}: `dependencies` must include distributed")
    # the file's own pin may be a range: the lock holds exactly dask_version
    specs.append(f"distributed =={dask_version}")
    return EnvironmentFile(path, tuple(channels), tuple(specs))


# --------------------------------------------------------------------------- solving


def _virtual_packages(platform: str) -> list[GenericVirtualPackage]:
    """What the solver may assume the hosts offer (``__glibc``, ``__unix`` ...).

    For the controller's own platform, the controller's (the hosts are expected to match
    it: the lab's are the same Debian); for another platform, a conservative baseline.
    """
    from rattler import (
        BuildString,
        GenericVirtualPackage,
        PackageName,
        Subdir,
        Version,
        VirtualPackage,
    )

    if platform == str(Subdir.current()):
        return [v.into_generic() for v in VirtualPackage.detect()]
    found = []
    if not platform.startswith("win"):
        found.append(("__unix", "0"))
    if platform.startswith("linux"):
        found += [("__linux", "0"), ("__glibc", _OTHER_PLATFORM_GLIBC)]
    if platform.startswith("osx"):
        found.append(("__osx", "11.0"))
    return [
        GenericVirtualPackage(PackageName(name), Version(version), BuildString("0"))
        for name, version in found
    ]


def _probe(url: str) -> int | None:
    """The HTTP status of ``url`` (200 for a file:// that exists), None when unreachable."""
    if url.startswith("file://"):
        return 200 if Path(urllib.request.url2pathname(url[7:])).is_file() else 404
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def check_channels(environment: EnvironmentFile, platform: str) -> None:
    """Every channel answers with repodata for ``platform`` and ``noarch``.

    ``CondaChannelError`` (exit 1) for a channel that cannot be reached; ``CondaError``
    (exit 2) for one that answers without repodata for the platform.
    """
    from rattler import Channel

    for name in environment.channels:
        base = Channel(name).base_url
        for subdir in (platform, "noarch"):
            url = f"{base}{subdir}/repodata.json"
            status = _probe(url)
            if status is None or status >= 500:
                raise CondaChannelError(
                    f"conda channel {name!r} of {environment.path} cannot be reached ({url}"
                    f"{'' if status is None else f': HTTP {status}'}); nothing was changed on "
                    "any host"
                )
            if status >= 400:
                raise CondaError(
                    f"{environment.path}: channel {name!r} has no packages for {subdir} "
                    f"(HTTP {status} for {url}); the hosts are {platform} "
                    "(`dask_conda_platform`)"
                )


def solve(environment: EnvironmentFile, platform: str, cache: Path) -> PlatformLock:
    """Solve ``environment`` for ``platform`` with py-rattler (channels checked first)."""
    from rattler import Channel, Gateway, Subdir
    from rattler import solve as rattler_solve
    from rattler.exceptions import GatewayError, SolverError

    check_channels(environment, platform)
    try:
        records = asyncio.run(
            rattler_solve(
                sources=[Channel(c) for c in environment.channels],
                specs=list(environment.specs),
                gateway=Gateway(cache_dir=cache / "repodata"),
                platforms=[Subdir(platform), Subdir("noarch")],
                virtual_packages=_virtual_packages(platform),
            )
        )
    except SolverError as exc:
        raise CondaError(
            f"{environment.path}: the specs {', '.join(environment.specs)} cannot be solved "
            f"for {platform} from {', '.join(environment.channels)}:\n{exc}"
        ) from None
    except GatewayError as exc:
        raise CondaChannelError(
            f"the conda channels of {environment.path} could not be read: {exc}"
        ) from None
    packages = []
    for record in sorted(records, key=lambda r: r.name.normalized):
        if record.sha256 is None:
            raise CondaError(
                f"{environment.path}: package {record.file_name} from {record.channel} has no "
                "sha256 in its channel's repodata: it cannot be locked and verified"
            )
        packages.append(
            LockedPackage(
                name=record.name.normalized,
                version=str(record.version),
                build=str(record.build),
                subdir=str(record.subdir),
                url=record.url,
                sha256=record.sha256.hex(),
            )
        )
    return PlatformLock(platform, tuple(packages))


# --------------------------------------------------------------------------- fetching


def package_path(cache: Path, package: LockedPackage) -> Path:
    """Where a verified package archive is kept in the controller's cache."""
    return cache / "pkgs" / package.sha256[:16] / package.file_name


def _fetch_one(cache: Path, package: LockedPackage) -> bool:
    """Download one package unless cached; verify its sha256. True when downloaded."""
    target = package_path(cache, package)
    if target.is_file():
        return False  # written only after it was verified
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    partial = target.with_name(target.name + ".part")
    try:
        with (
            urllib.request.urlopen(package.url, timeout=FETCH_TIMEOUT) as response,
            partial.open("wb") as out,
        ):
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise CondaChannelError(
            f"package {package.file_name} cannot be fetched from {package.url} ({reason}) and "
            "is not in the controller's cache; nothing was changed on any host"
        ) from None
    if digest.hexdigest() != package.sha256:
        partial.unlink(missing_ok=True)
        raise CondaError(
            f"package {package.file_name} from {package.url} has sha256 {digest.hexdigest()}, "
            f"but the lock says {package.sha256}: the channel changed the package or it was "
            "damaged in transit; nothing was changed on any host"
        )
    partial.rename(target)
    return True


def fetch(cache: Path, packages: Sequence[LockedPackage]) -> int:
    """Fetch every package into the cache (verified, in parallel). Returns how many were
    downloaded; the rest were already cached."""
    with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
        return sum(pool.map(lambda p: _fetch_one(cache, p), packages))


# --------------------------------------------------------------------------- staging


async def _records(cache: Path, packages: Sequence[LockedPackage]) -> list[RepoDataRecord]:
    """Install records read from the verified archives themselves: they are installed from
    the cache (no network), and say where they came from in the lock."""
    from rattler import RepoDataRecord

    records = []
    for package in packages:
        path = package_path(cache, package)
        record = await RepoDataRecord.from_package_archive(path)
        record.url = path.as_uri()
        records.append(record)
    return records


def _name_origins(stage: Path, packages: Sequence[LockedPackage]) -> None:
    """Make each ``conda-meta`` record name its channel URL, not the controller's cache."""
    by_file = {p.file_name: p for p in packages}
    for meta in (stage / "conda-meta").glob("*.json"):
        record = json.loads(meta.read_text())
        package = by_file.get(str(record.get("fn", "")))
        if package is None:
            continue
        record["url"] = package.url
        record["channel"] = package.url.rsplit("/", 2)[0]
        meta.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _compile_bytecode(prefix: Path, final_path: str) -> None:
    """Compile the env's Python bytecode here, for its final path, when its Python runs on
    this machine. Conda installers compile ``noarch: python`` packages at link time, and the
    hosts could not write the bytecode later (the env is root's, the units run as dask): an
    env without it compiles every module in memory at every start. Elsewhere (another
    platform) the role compiles on the host; a failure here leaves that to the host too."""
    python = prefix / "bin" / "python"
    if not python.is_file():
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [str(python), "-m", "compileall", "-q", "-j", "0", "-s", str(prefix),
             "-p", final_path, str(prefix / "lib")],
            check=False, capture_output=True, timeout=600,
        )  # fmt: skip


def stage(cache: Path, lock: PlatformLock, final_path: str, target: Path) -> None:
    """Build the environment for ``final_path`` and write it as the tarball ``target``."""
    from rattler import Subdir, install

    work = Path(tempfile.mkdtemp(prefix=".stage-", dir=target.parent))
    try:
        prefix = work / "env"

        async def build() -> None:
            records = await _records(cache, lock.packages)
            await install(
                records,
                target_prefix=prefix,
                alternative_target_prefix=final_path,
                cache_dir=cache / "extracted",
                show_progress=False,
                execute_link_scripts=False,
            )

        asyncio.run(build())
        _name_origins(prefix, lock.packages)
        if lock.platform == str(Subdir.current()):
            _compile_bytecode(prefix, final_path)
        (prefix / "CACHEDIR.TAG").unlink(missing_ok=True)  # rattler's, not the env's
        partial = work / target.name
        # gzip level 1: the tarball crosses the network to each host once; speed matters
        with tarfile.open(partial, "w:gz", compresslevel=1) as archive:
            for child in sorted(prefix.iterdir()):
                archive.add(child, arcname=child.name)
        partial.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- the whole step


@dataclass(frozen=True)
class StagedEnvironment:
    """One environment ready to ship: for these hosts, at this final path."""

    platform: str
    id: str
    final_path: str
    tarball: Path
    hosts: tuple[str, ...]
    built: bool  # staged in this run (else found in the cache)


@dataclass(frozen=True)
class CondaRuntime:
    """What the conda step prepared for a run, and what it cost.

    ``solved`` names the platforms solved in this run (empty: the lock was reused);
    ``seconds`` holds ``solve``, ``fetch`` and ``stage`` (staging and tarring);
    ``fetched`` counts the packages downloaded (the rest were cached).
    """

    lock_file: Path
    lock: CondaLock
    written: bool
    solved: tuple[str, ...]
    environments: tuple[StagedEnvironment, ...]
    cache: Path
    fetched: int = 0
    seconds: Mapping[str, float] = field(default_factory=dict)

    def extravars(self) -> dict[str, object]:
        """What the role needs per host: the env id, its final path, the tarball here."""
        return {
            contract.EXTRA_CONDA: {
                host: {"id": env.id, "path": env.final_path, "tarball": str(env.tarball)}
                for env in self.environments
                for host in env.hosts
            }
        }

    def summary(self, check: bool = False) -> str:
        """One progress line: solved or reused, fetched, staged, with the seconds."""
        timing = self.seconds
        if self.solved:
            verb = "solved (not written: check mode)" if check and not self.written else "solved"
            what = f"{verb} for {', '.join(self.solved)} in {timing.get('solve', 0):.1f} s"
        else:
            what = f"lock {self.lock_file.name} reused (environment unchanged)"
        packages = sum(len(p.packages) for p in self.lock.platforms.values())
        built = [e for e in self.environments if e.built]
        staged = (
            f"staged {', '.join(e.id for e in built)} in {timing.get('stage', 0):.1f} s"
            if built
            else "staged environments cached"
        )
        return (
            f"{what}; {packages} packages ({self.fetched} fetched in "
            f"{timing.get('fetch', 0):.1f} s); {staged}"
        )


def conda_hosts(inventory: Inventory) -> list[Host]:
    """The hosts whose runtime is conda."""
    return [h for h in inventory.hosts if inventory.dask_vars(h).get("dask_runtime") == "conda"]


def _one_value(inventory: Inventory, hosts: Sequence[Host], name: str) -> str:
    """The one value of ``name`` the conda hosts share (exit 2 when they differ or it is
    Jinja that only Ansible can evaluate)."""
    values = {str(inventory.dask_vars(h).get(name) or "") for h in hosts}
    if len(values) > 1:
        raise CondaError(
            f"{inventory.path}: the conda hosts must share one `{name}` (one solve, one lock), "
            f"got {', '.join(sorted(repr(v) for v in values))}"
        )
    value = values.pop()
    if _JINJA.search(value):
        raise CondaError(
            f"{inventory.path}: `{name}` must be a plain value for the conda runtime (it is "
            f"solved on this machine before Ansible runs), got {value!r}"
        )
    return value


def _targets(inventory: Inventory, hosts: Iterable[Host]) -> dict[tuple[str, str], list[str]]:
    """The hosts grouped by (platform, final env directory without the id)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for host in hosts:
        variables = inventory.dask_vars(host)
        platform = str(variables.get("dask_conda_platform") or DEFAULT_PLATFORM)
        base = str(variables.get("dask_base_dir") or "")
        if _JINJA.search(base) or _JINJA.search(platform) or not base.startswith("/"):
            raise CondaError(
                f"{inventory.path}: host {host.name}: `dask_base_dir` and "
                "`dask_conda_platform` must be plain values for the conda runtime, got "
                f"{base!r} and {platform!r}"
            )
        groups.setdefault((platform, base.rstrip("/") or "/"), []).append(host.name)
    return groups


def prepare_conda(
    inventory: Inventory, *, write: bool = True, say: Say = _quiet
) -> CondaRuntime | None:
    """The controller's conda step of apply and upgrade (module docstring); None when no
    host runs conda. With ``write`` false (``--check``) a new solve is not written to the
    lock file. Raises ``CondaError`` (exit 2) or ``CondaChannelError`` (exit 1); nothing
    on any host is touched either way.
    """
    hosts = conda_hosts(inventory)
    if not hosts:
        return None
    env_value = _one_value(inventory, hosts, "dask_conda_environment_file")
    if not env_value:
        raise CondaError(
            f"{inventory.path}: `dask_runtime: conda` needs `dask_conda_environment_file` "
            "(an environment.yml on this machine)"
        )
    dask_version = _one_value(inventory, hosts, "dask_version")
    cache = cache_dir(_one_value(inventory, hosts, "dask_conda_cache_dir"))
    env_path = _controller_path(inventory, env_value)
    environment = read_environment_file(env_path, dask_version)
    inputs = inputs_hash(env_path.read_bytes(), dask_version)
    targets = _targets(inventory, hosts)
    platforms = sorted({platform for platform, _ in targets})
    path = lock_path(inventory)
    seconds: dict[str, float] = {}

    started = time.monotonic()
    existing = read_lock(path)
    reuse = existing is not None and existing.inputs == inputs
    locks = dict(existing.platforms) if existing is not None and reuse else {}
    missing = [p for p in platforms if p not in locks]
    for platform in missing:
        say(f"conda: solving {env_path.name} for {platform}")
        locks[platform] = solve(environment, platform, cache)
    seconds["solve"] = time.monotonic() - started
    lock = CondaLock(
        environment_file=os.path.relpath(env_path, path.parent),
        dask_version=dask_version,
        inputs=inputs,
        channels=environment.channels,
        specs=environment.specs,
        platforms=locks,
    )
    written = False
    if missing and write:
        text = lock.render(inventory.path.name)
        partial = path.with_name(f".{path.name}.tmp")
        partial.write_text(text)
        partial.replace(path)
        written = True

    started = time.monotonic()
    wanted = {p.url: p for platform in platforms for p in locks[platform].packages}
    fetched = fetch(cache, list(wanted.values()))
    seconds["fetch"] = time.monotonic() - started

    started = time.monotonic()
    staged_dir = cache / "envs"
    staged_dir.mkdir(parents=True, exist_ok=True)
    environments = []
    for (platform, base), names in sorted(targets.items()):
        platform_lock = locks[platform]
        final = f"{base}/envs/{platform_lock.id}"
        tarball = staged_dir / tarball_name(platform_lock.id, final)
        built = not tarball.is_file()
        if built:
            say(f"conda: staging {platform_lock.id} for {final}")
            stage(cache, platform_lock, final, tarball)
        environments.append(
            StagedEnvironment(platform, platform_lock.id, final, tarball, tuple(names), built)
        )
    seconds["stage"] = time.monotonic() - started
    return CondaRuntime(
        lock_file=path,
        lock=lock,
        written=written,
        solved=tuple(missing),
        environments=tuple(environments),
        cache=cache,
        fetched=fetched,
        seconds=seconds,
    )


def describe(runtime: CondaRuntime) -> dict[str, Any]:
    """The conda step in ``--json``: the lock, what was solved, fetched and staged."""
    return {
        "lock_file": str(runtime.lock_file),
        "lock_written": runtime.written,
        "solved": list(runtime.solved),
        "fetched": runtime.fetched,
        "seconds": {k: round(v, 2) for k, v in runtime.seconds.items()},
        "environments": [
            {
                "platform": e.platform,
                "id": e.id,
                "path": e.final_path,
                "tarball": str(e.tarball),
                "hosts": list(e.hosts),
                "staged_now": e.built,
            }
            for e in runtime.environments
        ],
    }
