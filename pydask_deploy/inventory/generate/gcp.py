"""List Google Compute Engine instances by their labels (the optional ``gcp`` extra).

Through google-auth and the Compute Engine REST API (``instances.aggregatedList``, or
``instances.list`` for one zone), not the google-cloud-compute SDK: google-auth is what the
SDK and Ansible's own ``gcp_compute`` inventory plugin use for credentials (Application
Default Credentials: ``gcloud auth application-default login``, a service-account key in
GOOGLE_APPLICATION_CREDENTIALS, the metadata server on a VM), and one documented GET is all
an inventory needs; the SDK would add grpcio, protobuf and a generated client for
every Compute API to do the same request.

On GCP a tag is a label: ``--tag dask-cluster=prod`` matches ``labels.dask-cluster=prod``.
Labels are lower case, so ``dask-role=scheduler-worker`` is the scheduler-and-worker value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from pydask_deploy.errors import DeployError, UsageError
from pydask_deploy.inventory.generate.cloud import RUNNING, Instance, Listing

INSTALL_HINT = "pip install 'pydask-deploy[gcp]'"
API = "https://compute.googleapis.com/compute/v1"
SCOPE = "https://www.googleapis.com/auth/compute.readonly"

_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")


def _last(url: object) -> str | None:
    """The last part of a resource URL (``.../zones/us-central1-a`` -> ``us-central1-a``)."""
    return str(url).rstrip("/").rsplit("/", 1)[-1] if url else None


def instance_from_gce(data: Mapping[str, Any]) -> Instance:
    """Map one Compute Engine ``Instance`` resource (REST JSON) to an Instance.

    The address is the first network interface's: ``networkIP`` (private) and the
    ``natIP`` of its first access config that has one (public).
    """
    interfaces = data.get("networkInterfaces") or [{}]
    first = interfaces[0]
    public = next(
        (c["natIP"] for c in first.get("accessConfigs", []) if c.get("natIP")),
        None,
    )
    status = str(data.get("status", "unknown")).lower()
    return Instance(
        id=str(data.get("id") or data["name"]),
        name=data.get("name"),
        private_ip=first.get("networkIP") or None,
        public_ip=public,
        state=RUNNING if status == "running" else status,
        tags={str(k): str(v) for k, v in (data.get("labels") or {}).items()},
        zone=_last(data.get("zone")),
        machine_type=_last(data.get("machineType")),
    )


def instances_from_pages(pages: list[Mapping[str, Any]]) -> list[Instance]:
    """Map the pages of an ``aggregatedList`` or a ``list`` response to Instances."""
    found: list[Instance] = []
    for page in pages:
        items = page.get("items") or []
        if isinstance(items, dict):  # aggregatedList: {"zones/z": {"instances": [...]}}
            for scoped in items.values():
                found.extend(instance_from_gce(i) for i in scoped.get("instances", []))
        else:
            found.extend(instance_from_gce(i) for i in items)
    return found


def label_filter(tags: Mapping[str, str]) -> str:
    """The ``filter`` query for running instances carrying every label (UsageError if a
    key or value cannot be a label, which would silently match nothing)."""
    for key, value in tags.items():
        if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise UsageError(
                f"--tag {key}={value}: a GCP label key is lower-case letters, digits, '_' and "
                "'-' starting with a letter, and its value lower-case letters, digits, '_' "
                "and '-'"
            )
    terms = [f'(labels.{key} = "{value}")' for key, value in tags.items()]
    return " ".join([*terms, '(status = "RUNNING")'])


def _pages(session: Any, url: str, params: dict[str, str], where: str) -> Iterator[Any]:
    import requests

    token = None
    while True:
        query = dict(params, pageToken=token) if token else params
        try:
            response = session.get(url, params=query, timeout=30)
        except requests.RequestException as exc:
            raise DeployError(f"{where}: cannot reach the Compute API: {exc}") from None
        if response.status_code != 200:
            _raise_for(response, where)
        page = response.json()
        yield page
        token = page.get("nextPageToken")
        if not token:
            return


def _raise_for(response: Any, where: str) -> None:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200] or response.reason
    text = f"{where}: HTTP {response.status_code}: {message}"
    if response.status_code in (400, 401, 403, 404):  # bad filter, credentials, project
        raise UsageError(text)
    raise DeployError(text)


def list_instances(
    tags: Mapping[str, str],
    *,
    project: str | None = None,
    zone: str | None = None,
    endpoint_url: str | None = None,
    credentials: Any = None,
) -> Listing:
    """Find the running instances of ``project`` (one ``zone``, else all) carrying every
    label of ``tags``.

    ``project`` defaults to the one Application Default Credentials name (``gcloud config``,
    the key file's project); ``endpoint_url`` replaces ``https://compute.googleapis.com/
    compute/v1`` (a Private Service Connect endpoint, a test server); ``credentials`` replace
    Application Default Credentials.
    """
    filter_text = label_filter(tags)
    try:
        import google.auth
        import google.auth.exceptions
        from google.auth.transport.requests import AuthorizedSession
    except ImportError:
        raise UsageError(f"`inventory gcp` needs google-auth: {INSTALL_HINT}") from None

    if credentials is None:
        try:
            credentials, found_project = google.auth.default(scopes=[SCOPE])
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise UsageError(
                f"no Google credentials: {exc} (run `gcloud auth application-default login`)"
            ) from None
        project = project or found_project
    if not project:
        raise UsageError("no GCP project: pass --project or set GOOGLE_CLOUD_PROJECT")
    where = f"GCP project {project}, " + (f"zone {zone}" if zone else "all zones")
    base = (endpoint_url or API).rstrip("/")
    url = (
        f"{base}/projects/{project}/zones/{zone}/instances"
        if zone
        else f"{base}/projects/{project}/aggregated/instances"
    )
    params = {"filter": filter_text, "maxResults": "500"}
    if not zone:
        params["returnPartialSuccess"] = "true"
    session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
    try:
        pages = list(_pages(session, url, params, where))
    except google.auth.exceptions.RefreshError as exc:
        raise UsageError(f"{where}: the Google credentials were refused: {exc}") from None
    except google.auth.exceptions.TransportError as exc:
        raise DeployError(f"{where}: cannot get a Google access token: {exc}") from None
    finally:
        session.close()  # type: ignore[no-untyped-call]
    return Listing(tuple(instances_from_pages(pages)), where)
