"""The cluster's certificates: a CA on the controller, a certificate per host, one for clients.

This is the one module that imports ``cryptography``. Everything lives in one directory
beside the inventory, ``<inventory dir>/<inventory stem>-pki/`` (``inventory/prod.yml`` ->
``inventory/prod-pki/``; ``dask_tls_pki_dir`` moves it), which the user backs up with the
inventory::

    ca.crt  ca.key              the cluster CA (EC P-256, 10 years); ca.key never leaves
    hosts/<name>.crt, .key      one per inventory host, copied to the host by apply
    client.crt  client.key      for the users' clients (``pydask-deploy client-config``)

Private keys are written 0600 and the directory is 0700. ``ensure_pki`` is idempotent: it
issues a certificate only when it is missing, names other hosts or addresses than the
inventory gives, is not signed by the current CA, or expires within ``dask_tls_renew_days``.
It reports what it issued and why, never key material.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pydask_deploy.errors import PkiError, UsageError
from pydask_deploy.inventory import Inventory

CA_DAYS = 3650
CLIENT_NAME = "dask-client"
# Certificates start an hour in the past: a host whose clock is a little behind still
# accepts a certificate issued a moment ago.
_BACKDATE = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class Issued:
    """One certificate ``ensure_pki`` (re-)issued: whose (a host name, 'client' or 'CA'), why."""

    name: str
    reason: str


@dataclass(frozen=True)
class Pki:
    """The cluster's certificate files on the controller, and what this call issued.

    ``hosts`` maps each inventory host name to its (certificate, key) paths; ``warnings``
    holds what the user should act on (a CA close to its end).
    """

    directory: Path
    ca_cert: Path
    client_cert: Path
    client_key: Path
    hosts: Mapping[str, tuple[Path, Path]]
    issued: tuple[Issued, ...] = ()
    warnings: tuple[str, ...] = ()

    def summary(self, check: bool = False) -> str:
        """One line for the apply progress: what was issued and why, or that nothing was."""
        if not self.issued:
            return f"certificates in {self.directory} are current; none issued"
        shown = ", ".join(f"{i.name} ({i.reason})" for i in self.issued)
        verb = "would issue" if check else "issued"
        return f"{verb} {len(self.issued)} certificate(s) in {self.directory}: {shown}"


# --------------------------------------------------------------------------- paths


def pki_dir(inventory: Inventory) -> Path:
    """The certificate directory of an inventory: ``dask_tls_pki_dir``, else ``<stem>-pki``.

    A relative ``dask_tls_pki_dir`` is taken from the inventory's directory, as Ansible does.
    Several inventories of one cluster (an edited copy, a canary subset) share one with it.
    """
    configured = inventory.dask_vars(inventory.scheduler).get("dask_tls_pki_dir")
    if isinstance(configured, str) and configured:
        return (inventory.path.parent / Path(configured).expanduser()).resolve()
    return (inventory.path.parent / f"{inventory.path.stem}-pki").resolve()


def _int_setting(inventory: Inventory, key: str, low: int) -> int:
    value = inventory.dask_vars(inventory.scheduler).get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{inventory.path}: `{key}` must be an integer >= {low}, got {value!r}")
    return value


def host_names(inventory: Inventory, name: str) -> frozenset[str]:
    """The names a host's certificate carries: its inventory name and its address.

    The scheduler's also carries ``dask_scheduler_address`` and ``dask_scheduler_host``
    when the inventory sets them (the addresses clients and workers really use).
    """
    host = inventory.host(name)
    names = {host.name, host.address}
    if host.name == inventory.scheduler.name:
        variables = inventory.dask_vars(host)
        for key in ("dask_scheduler_address", "dask_scheduler_host"):
            value = variables.get(key)
            if isinstance(value, str) and value and "{" not in value:
                names.add(value)
    return frozenset(names)


# --------------------------------------------------------------------------- reading


def _san(names: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in sorted(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _cert_names(cert: x509.Certificate) -> frozenset[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return frozenset([*dns, *ips])


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    def raw(public: object) -> bytes:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        return public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    return raw(cert.public_key()) == raw(key.public_key())


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _why_reissue(
    cert_path: Path,
    key_path: Path,
    names: frozenset[str],
    ca: x509.Certificate,
    renew_before: datetime.datetime,
) -> str | None:
    """Why the certificate at ``cert_path`` must be issued again, or None when it is good."""
    cert = _load_cert(cert_path)
    key = _load_key(key_path)
    if cert is None or key is None:
        return "missing"
    if not _same_key(cert, key):
        return "key does not match"
    if not _signed_by(cert, ca):
        return "not signed by the current CA"
    if _cert_names(cert) != names:
        return "names changed"
    if cert.not_valid_after_utc <= renew_before:
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d}"
    return None


# --------------------------------------------------------------------------- writing


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write a file atomically with ``mode`` from its first byte (never briefly readable)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),  # dask reads keys without a passphrase
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _make_ca(directory: Path, now: datetime.datetime) -> None:
    key = _new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pydask-deploy"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{directory.name} cluster CA"),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    # the key first: a crash in between leaves a key without a certificate, which is reported
    _write_private(directory / "ca.key", _key_pem(key), 0o600)
    _write_private(directory / "ca.crt", _cert_pem(cert), 0o644)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signing only; a CA also signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=ca,
        crl_sign=ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def _issue(
    cert_path: Path,
    key_path: Path,
    common_name: str,
    names: frozenset[str],
    server: bool,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    days: int,
    now: datetime.datetime,
) -> None:
    key = _new_key()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:  # hosts both listen (scheduler, workers) and connect (workers, nannies)
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(_san(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(key_path, _key_pem(key), 0o600)
    _write_private(cert_path, _cert_pem(cert), 0o644)


# --------------------------------------------------------------------------- entry point


def ensure_pki(
    inventory: Inventory,
    *,
    write: bool = True,
    now: datetime.datetime | None = None,
) -> Pki:
    """Make the cluster's certificates current (see ``_ensure_pki``); ``PkiError`` on OS trouble."""
    try:
        return _ensure_pki(inventory, write=write, now=now)
    except OSError as exc:
        raise PkiError(f"cannot keep the cluster's certificates: {exc}") from exc


def _ensure_pki(
    inventory: Inventory,
    *,
    write: bool,
    now: datetime.datetime | None,
) -> Pki:
    """Make the cluster's certificates current: create the CA once, (re-)issue what is due.

    With ``write=False`` nothing is written (``apply --check``): the result says what
    would be issued. Raises ``PkiError`` when the CA is half there (a key without its
    certificate or the reverse, or a pair that does not match): replacing it silently would
    lock every existing client out.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    cert_days = _int_setting(inventory, "dask_tls_cert_days", 1)
    renew_days = _int_setting(inventory, "dask_tls_renew_days", 0)
    if renew_days >= cert_days:
        raise UsageError(
            f"{inventory.path}: `dask_tls_renew_days` ({renew_days}) must be less than "
            f"`dask_tls_cert_days` ({cert_days}), else every apply re-issues every certificate"
        )
    renew_before = now + datetime.timedelta(days=renew_days)
    directory = pki_dir(inventory)
    hosts_dir = directory / "hosts"
    issued: list[Issued] = []
    warnings: list[str] = []

    ca_cert_path, ca_key_path = directory / "ca.crt", directory / "ca.key"
    new_ca = not ca_cert_path.exists() and not ca_key_path.exists()
    if new_ca:
        issued.append(Issued("CA", "new cluster CA"))
    if write:
        hosts_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _tighten(directory)
        if new_ca:
            _make_ca(directory, now)
    ca: x509.Certificate | None = None
    ca_key: ec.EllipticCurvePrivateKey | None = None
    if write or not new_ca:  # check mode with no CA yet: everything would be new
        ca, ca_key = _load_cert(ca_cert_path), _load_key(ca_key_path)
        _check_ca(ca_cert_path, ca_key_path, ca, ca_key)
        assert ca is not None
        if ca.not_valid_after_utc <= renew_before:
            warnings.append(
                f"the cluster CA {ca_cert_path} expires on {ca.not_valid_after_utc:%Y-%m-%d}; "
                "rotate it (README: Rotating the CA)"
            )

    wanted: list[tuple[str, Path, Path, str, frozenset[str], bool]] = [
        (h.name, hosts_dir / f"{h.name}.crt", hosts_dir / f"{h.name}.key", h.name, names, True)
        for h in inventory.hosts
        for names in [host_names(inventory, h.name)]
    ]
    client = ("client", directory / "client.crt", directory / "client.key", CLIENT_NAME)
    wanted.append((*client, frozenset(), False))
    for label, cert_path, key_path, common_name, names, server in wanted:
        if ca is None or ca_key is None:
            issued.append(Issued(label, "missing"))
            continue
        reason = _why_reissue(cert_path, key_path, names, ca, renew_before)
        if reason is None:
            continue
        issued.append(Issued(label, reason))
        if write:
            _issue(cert_path, key_path, common_name, names, server, ca, ca_key, cert_days, now)
    return Pki(
        directory=directory,
        ca_cert=ca_cert_path,
        client_cert=client[1],
        client_key=client[2],
        hosts={
            h.name: (hosts_dir / f"{h.name}.crt", hosts_dir / f"{h.name}.key")
            for h in inventory.hosts
        },
        issued=tuple(issued),
        warnings=tuple(warnings),
    )


def _check_ca(
    cert_path: Path,
    key_path: Path,
    cert: x509.Certificate | None,
    key: ec.EllipticCurvePrivateKey | None,
) -> None:
    if cert is None or key is None:
        missing = cert_path if cert is None else key_path
        raise PkiError(
            f"{missing} is missing or unreadable while its pair is there; restore it from "
            f"your backup, or move {cert_path.parent} aside to make a new CA (every host "
            "and client then gets new certificates)"
        )
    if not _same_key(cert, key):
        raise PkiError(f"{key_path} is not the key of {cert_path}; restore the pair from backup")


def _tighten(directory: Path) -> None:
    """Private keys 0600 and the directories 0700, even if someone loosened them."""
    for path in (directory, directory / "hosts"):
        if path.is_dir():
            path.chmod(0o700)
    for key in [*directory.glob("*.key"), *directory.glob("hosts/*.key")]:
        key.chmod(0o600)


def ssh_public_key(private_key: bytes) -> str:
    """The OpenSSH public line (``ssh-ed25519 AAAA...``) of an unencrypted private SSH key;
    ValueError or TypeError when it is not one."""
    key = serialization.load_ssh_private_key(private_key, password=None)
    body = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return body.decode()


def fingerprint(pem: bytes) -> str:
    """A certificate's SHA-256 fingerprint as ``openssl x509 -fingerprint -sha256`` shows
    it (``AB:CD:...``); ValueError when ``pem`` is not a certificate."""
    digest = x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256())
    return ":".join(f"{byte:02X}" for byte in digest)
