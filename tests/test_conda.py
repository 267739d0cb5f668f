"""The conda runtime's controller step against a real (small) conda channel served over HTTP.

The channel is built here: ``.tar.bz2`` packages written with tarfile, indexed with
py-rattler's ``index_fs``, served on 127.0.0.1. Solving, locking, fetching and staging run
through py-rattler itself; nothing of rattler is mocked.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from pydask_deploy.deploy import conda
from pydask_deploy.errors import CondaChannelError, CondaError
from pydask_deploy.inventory import load_inventory

PLACEHOLDER = "/opt/placeholder_" + "x" * 40  # conda-build's kind of long placeholder


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    archive.addfile(info, io.BytesIO(data))


def make_package(
    channel: Path,
    name: str,
    version: str,
    *,
    subdir: str = "noarch",
    depends: tuple[str, ...] = (),
    build: str = "0",
) -> Path:
    """A real conda package (``.tar.bz2``): index.json, paths.json and one text file that
    carries the build prefix, so that staging must rewrite it for the final path."""
    content = f"{name} {version} installed in {PLACEHOLDER}\n".encode()
    relpath = f"share/{name}/where.txt"
    index = {
        "name": name,
        "version": version,
        "build": build,
        "build_number": 0,
        "depends": list(depends),
        "subdir": subdir,
        "license": "BSD-3-Clause",
        "timestamp": 1_700_000_000_000,
    }
    if subdir == "noarch":
        index["noarch"] = "generic"
    paths = {
        "paths_version": 1,
        "paths": [
            {
                "_path": relpath,
                "path_type": "hardlink",
                "sha256": hashlib.sha256(content).hexdigest(),
                "size_in_bytes": len(content),
                "prefix_placeholder": PLACEHOLDER,
                "file_mode": "text",
            }
        ],
    }
    target = channel / subdir / f"{name}-{version}-{build}.tar.bz2"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:bz2") as archive:
        _add(archive, "info/index.json", json.dumps(index).encode())
        _add(archive, "info/paths.json", json.dumps(paths).encode())
        _add(archive, "info/files", f"{relpath}\n".encode())
        _add(archive, "info/has_prefix", f"{PLACEHOLDER} text {relpath}\n".encode())
        _add(archive, relpath, content)
    return target


def index(channel: Path) -> None:
    from rattler import Subdir
    from rattler.index import index_fs

    for subdir in ("linux-64", "noarch"):
        (channel / subdir).mkdir(parents=True, exist_ok=True)
    for subdir in ("linux-64", "noarch"):
        asyncio.run(
            index_fs(channel, target_platform=Subdir(subdir), write_shards=False, force=True)
        )


def build_channel(channel: Path) -> Path:
    make_package(channel, "python", "3.11.2", subdir="linux-64")
    make_package(channel, "tornado", "6.6.1", subdir="linux-64", depends=("python 3.11.*",))
    make_package(channel, "numpy", "2.4.6", subdir="linux-64", depends=("python 3.11.*",))
    for version in ("2026.7.1", "2026.8.0"):
        make_package(channel, "distributed", version, depends=("python >=3.11", "tornado >=6.2"))
    make_package(channel, "broken", "1.0", depends=("not-in-any-channel",))
    index(channel)
    return channel


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def channel_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_channel(tmp_path_factory.mktemp("template") / "channel")


@pytest.fixture
def channel(channel_template: Path, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A small channel on disk (the test may change it) and its URL on 127.0.0.1, served
    for the test only."""
    root = tmp_path / "channel"
    shutil.copytree(channel_template, root)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def write_inventory(directory: Path, url: str, dependencies: list[str], **extra: object) -> Path:
    (directory / "environment.yml").write_text(
        yaml.safe_dump({"channels": [url], "dependencies": dependencies})
    )
    inventory = directory / "prod.yml"
    variables = {
        "dask_runtime": "conda",
        "dask_conda_environment_file": "environment.yml",
        "dask_conda_cache_dir": str(directory / "cache"),
        **extra,
    }
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "vars": variables,
                    "children": {
                        "dask_scheduler": {"hosts": {"h1": {"ansible_host": "10.9.0.11"}}},
                        "dask_workers": {
                            "hosts": {"h1": None, "h2": {"ansible_host": "10.9.0.12"}}
                        },
                    },
                }
            }
        )
    )
    return inventory


def prepare(inventory: Path, write: bool = True) -> conda.CondaRuntime:
    runtime = conda.prepare_conda(load_inventory(inventory), write=write)
    assert runtime is not None
    return runtime


def test_solves_locks_fetches_and_stages_for_the_final_path(
    channel: tuple[Path, str], tmp_path: Path
) -> None:
    _, url = channel
    inventory = write_inventory(tmp_path, url, ["distributed"])
    runtime = prepare(inventory)

    lock_file = tmp_path / "prod-conda-lock.yml"
    assert runtime.lock_file == lock_file and runtime.written
    assert runtime.solved == ("linux-64",)
    lock = yaml.safe_load(lock_file.read_text())
    packages = lock["platforms"]["linux-64"]["packages"]
    # distributed pinned to dask_version (the roles' default), with its dependencies
    assert {(p["name"], p["version"]) for p in packages} == {
        ("distributed", "2026.8.0"),
        ("tornado", "6.6.1"),
        ("python", "3.11.2"),
    }
    for package in packages:
        assert package["url"].startswith(url)
        served = (channel[0] / package["subdir"] / package["url"].rsplit("/", 1)[1]).read_bytes()
        assert package["sha256"] == hashlib.sha256(served).hexdigest()
    assert lock["dask_version"] == "2026.8.0"
    assert lock["environment_file"] == "environment.yml"

    (env,) = runtime.environments
    assert env.hosts == ("h1", "h2")
    assert env.final_path == f"/opt/dask/envs/{env.id}"
    assert env.id == lock["platforms"]["linux-64"]["id"]
    assert env.tarball.name == conda.tarball_name(env.id, env.final_path)
    with tarfile.open(env.tarball) as archive:
        where = archive.extractfile("share/distributed/where.txt")
        assert where is not None
        # the prefix inside the files is the final host path, not the staging directory
        assert where.read().decode() == f"distributed 2026.8.0 installed in {env.final_path}\n"
        meta = archive.extractfile(
            next(n for n in archive.getnames() if n.startswith("conda-meta/distributed-"))
        )
        assert meta is not None
        record = json.loads(meta.read())
    assert record["url"] == f"{url}noarch/distributed-2026.8.0-0.tar.bz2"
    assert runtime.extravars() == {
        "__dask_conda": {
            h: {"id": env.id, "path": env.final_path, "tarball": str(env.tarball)}
            for h in ("h1", "h2")
        }
    }


def test_a_second_run_reuses_the_lock_and_the_cache_without_the_channel(
    channel: tuple[Path, str], tmp_path: Path
) -> None:
    root, url = channel
    inventory = write_inventory(tmp_path, url, ["distributed"])
    first = prepare(inventory)
    lock_text = first.lock_file.read_text()
    # the channel goes away: the lock and the controller's cache are enough
    for package in root.glob("*/*.tar.bz2"):
        package.unlink()
    for repodata in root.glob("*/repodata.json*"):
        repodata.unlink()
    again = prepare(inventory)
    assert again.solved == () and not again.written and again.fetched == 0
    assert [e.built for e in again.environments] == [False]
    assert again.environments[0].id == first.environments[0].id
    assert first.lock_file.read_text() == lock_text


def test_an_edited_environment_file_solves_again_and_changes_the_lock(
    channel: tuple[Path, str], tmp_path: Path
) -> None:
    _, url = channel
    inventory = write_inventory(tmp_path, url, ["distributed"])
    first = prepare(inventory)
    write_inventory(tmp_path, url, ["distributed", "numpy"])
    second = prepare(inventory)
    assert second.solved == ("linux-64",) and second.written
    assert second.environments[0].id != first.environments[0].id
    names = {p.name for p in second.lock.platforms["linux-64"].packages}
    assert "numpy" in names
    # check mode solves but leaves the lock file as it was
    write_inventory(tmp_path, url, ["distributed"])
    before = second.lock_file.read_text()
    checked = prepare(inventory, write=False)
    assert checked.solved == ("linux-64",) and not checked.written
    assert second.lock_file.read_text() == before


def test_dask_version_pins_distributed(channel: tuple[Path, str], tmp_path: Path) -> None:
    _, url = channel
    inventory = write_inventory(tmp_path, url, ["distributed"], dask_version="2026.7.1")
    runtime = prepare(inventory)
    versions = {p.name: p.version for p in runtime.lock.platforms["linux-64"].packages}
    assert versions["distributed"] == "2026.7.1"
    # a pin in the file that agrees is fine
    inventory = write_inventory(tmp_path, url, ["distributed=2026.7.1"], dask_version="2026.7.1")
    assert prepare(inventory).lock.dask_version == "2026.7.1"


def test_a_pin_that_differs_from_dask_version_names_both(
    channel: tuple[Path, str], tmp_path: Path
) -> None:
    _, url = channel
    inventory = write_inventory(tmp_path, url, ["distributed==2026.7.1"])
    with pytest.raises(CondaError) as error:
        prepare(inventory)
    message = str(error.value)
    assert "environment.yml" in message and "2026.7.1" in message and "2026.8.0" in message
    assert error.value.exit_code == 2
    assert not (tmp_path / "prod-conda-lock.yml").exists()


@pytest.mark.parametrize(
    ("dependencies", "expected"),
    [
        (["numpy"], "must include distributed"),
        (["distributed", {"pip": ["six"]}], "pip sections are not supported"),
        (["distributed >>>2"], "'distributed >>>2'"),
    ],
)
def test_bad_environment_files(
    channel: tuple[Path, str], tmp_path: Path, dependencies: list[object], expected: str
) -> None:
    _, url = channel
    inventory = write_inventory(tmp_path, url, dependencies)  # type: ignore[arg-type]
    with pytest.raises(CondaError, match=r"environment\.yml") as error:
        prepare(inventory)
    assert expected in str(error.value)


def test_an_unsolvable_spec_is_bad_input(channel: tuple[Path, str], tmp_path: Path) -> None:
    _, url = channel
    inventory = write_inventory(tmp_path, url, ["distributed", "broken"])
    with pytest.raises(CondaError) as error:
        prepare(inventory)
    assert error.value.exit_code == 2
    assert "cannot be solved" in str(error.value) and "broken" in str(error.value)
    assert "not-in-any-channel" in str(error.value)


def test_a_channel_without_the_hosts_platform_is_bad_input(
    channel: tuple[Path, str], tmp_path: Path
) -> None:
    _, url = channel
    inventory = write_inventory(tmp_path, url, ["distributed"], dask_conda_platform="linux-aarch64")
    with pytest.raises(CondaError) as error:
        prepare(inventory)
    assert error.value.exit_code == 2
    assert "linux-aarch64" in str(error.value) and url in str(error.value)


def test_an_unreachable_channel_exits_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inventory = write_inventory(tmp_path, f"http://127.0.0.1:{port}/", ["distributed"])
    with pytest.raises(CondaChannelError) as error:
        prepare(inventory)
    assert error.value.exit_code == 1
    assert "cannot be reached" in str(error.value) and str(port) in str(error.value)


def test_a_package_whose_hash_does_not_match_the_lock(
    channel: tuple[Path, str], tmp_path: Path
) -> None:
    root, url = channel
    inventory = write_inventory(tmp_path, url, ["distributed"])
    runtime = prepare(inventory)
    # a fresh controller (empty cache) and a channel that rebuilt tornado under the same name
    for cached in (tmp_path / "cache").iterdir():
        if cached.is_dir():
            shutil.rmtree(cached)
    tornado = root / "linux-64" / "tornado-6.6.1-0.tar.bz2"
    tornado.write_bytes(tornado.read_bytes() + b"tampered")
    with pytest.raises(CondaError) as error:
        prepare(inventory)
    assert error.value.exit_code == 2
    assert "tornado-6.6.1-0.tar.bz2" in str(error.value) and "sha256" in str(error.value)
    assert runtime.lock_file.read_text() == runtime.lock.render("prod.yml")


def test_hosts_of_another_platform_get_their_own_solve(
    channel: tuple[Path, str], tmp_path: Path
) -> None:
    root, url = channel
    make_package(root, "python", "3.11.2", subdir="linux-aarch64")
    make_package(root, "tornado", "6.6.1", subdir="linux-aarch64", depends=("python 3.11.*",))
    from rattler import Subdir
    from rattler.index import index_fs

    asyncio.run(index_fs(root, target_platform=Subdir("linux-aarch64"), write_shards=False))
    inventory = write_inventory(tmp_path, url, ["distributed"])
    data = yaml.safe_load(inventory.read_text())
    data["all"]["children"]["dask_workers"]["hosts"]["h2"]["dask_conda_platform"] = "linux-aarch64"
    inventory.write_text(yaml.safe_dump(data))
    runtime = prepare(inventory)
    assert sorted(runtime.lock.platforms) == ["linux-64", "linux-aarch64"]
    by_host = {h: e for e in runtime.environments for h in e.hosts}
    assert by_host["h1"].platform == "linux-64" and by_host["h2"].platform == "linux-aarch64"
    assert by_host["h1"].id != by_host["h2"].id
    tornado = next(
        p for p in runtime.lock.platforms["linux-aarch64"].packages if p.name == "tornado"
    )
    assert tornado.subdir == "linux-aarch64"


def test_no_conda_host_no_step(tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path, "http://127.0.0.1:9/", ["distributed"])
    data = yaml.safe_load(inventory.read_text())
    data["all"]["vars"]["dask_runtime"] = "venv"
    inventory.write_text(yaml.safe_dump(data))
    assert conda.prepare_conda(load_inventory(inventory)) is None


def test_a_damaged_lock_file_names_itself(channel: tuple[Path, str], tmp_path: Path) -> None:
    _, url = channel
    inventory = write_inventory(tmp_path, url, ["distributed"])
    prepare(inventory)
    lock_file = tmp_path / "prod-conda-lock.yml"
    lock_file.write_text(lock_file.read_text().replace("sha256: ", "sha256: 00", 1))
    with pytest.raises(CondaError, match=r"prod-conda-lock\.yml"):
        prepare(inventory)


def test_the_plan_ships_the_staged_environment_and_a_new_lock_means_not_in_sync(
    channel: tuple[Path, str], tmp_path: Path
) -> None:
    from pydask_deploy import contract
    from pydask_deploy.deploy import insync
    from pydask_deploy.deploy.plan import plan_apply

    _, url = channel
    inventory_file = write_inventory(tmp_path, url, ["distributed"])
    inventory = load_inventory(inventory_file)
    runtime = conda.prepare_conda(inventory)
    assert runtime is not None
    plan = plan_apply(inventory, conda=runtime)
    shipped = plan.extravars[contract.EXTRA_CONDA]
    assert isinstance(shipped, dict) and set(shipped) == {"h1", "h2"}
    assert shipped["h2"]["tarball"] == str(runtime.environments[0].tarball)

    host = inventory.host("h2")
    shared = insync.shared_inputs(inventory)
    before = insync.fingerprint(inventory, host, shared, None)
    assert insync.fingerprint(inventory, host, shared, None) == before
    lock = runtime.lock_file
    lock.write_text(lock.read_text() + "# a new solve\n")
    assert insync.fingerprint(inventory, host, shared, None) != before
