"""A local certificate authority and a server certificate for the emulators.

msal refuses a plain-http authority, and users of the sync need to point it at a custom CA
bundle, so the emulators serve HTTPS with a certificate signed by a CA generated here on first
use. The server certificate is valid for ``localhost`` and ``127.0.0.1``.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_CERTS_DIR = (
    Path(os.environ.get("MDS_PROJECT_DIR", Path(__file__).resolve().parents[2])) / "var/emulators/ca"
)


@dataclass(frozen=True)
class CertPaths:
    """Where the CA certificate (give this to clients) and the server's pair are."""

    ca: Path
    cert: Path
    key: Path


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def ensure_certificates(certs_dir: Path = DEFAULT_CERTS_DIR) -> CertPaths:
    """Return the CA and server certificate paths, creating them on first use.

    Existing files are reused, so clients configured with the CA keep working across restarts.
    """
    certs_dir.mkdir(parents=True, exist_ok=True)
    paths = CertPaths(
        ca=certs_dir / "ca.pem", cert=certs_dir / "server.pem", key=certs_dir / "server-key.pem"
    )
    # Both emulators may start at once with the same directory: one creates, the other waits.
    with (certs_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (paths.ca.exists() and paths.cert.exists() and paths.key.exists()):
            _create(paths)
    return paths


def _create(paths: CertPaths) -> None:
    """Write a new CA certificate and a server key pair signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "marketo-dynamics-sync local emulator CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    _write_private(
        paths.key,
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    paths.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    # The CA's own key is not kept: a fresh CA is made if the certificates are ever deleted.
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
