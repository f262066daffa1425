"""TLS for every hop (config `tls`): server credentials for each service's port, and the
channels the router and the suite runner open to the tiers and the validator (mutual TLS:
they present `tls.client_cert`). Plaintext when `tls.enabled` is off.

`make certs` (`tierroute certs`) writes a development CA and certificates with the
`cryptography` library: ca.pem, server.pem/server-key.pem (for every service, its names the
hosts given), client.pem/client-key.pem (the router's identity).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from tierroute.core.config import ConfigError, TlsConfig


def _read(path: Path | None, what: str) -> bytes:
    assert path is not None
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"tls.{what}: cannot read {path}: {error.strerror}") from None


def server_credentials(tls: TlsConfig, mutual: bool) -> grpc.ServerCredentials | None:
    """None for plaintext; with `mutual`, clients must present a certificate signed by the CA."""
    if not tls.enabled:
        return None
    pair = (_read(tls.key, "key"), _read(tls.cert, "cert"))
    require = mutual and tls.mutual
    return grpc.ssl_server_credentials(
        [pair],
        root_certificates=_read(tls.ca, "ca") if require else None,
        require_client_auth=require,
    )


def channel_credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    if not tls.mutual:
        return grpc.ssl_channel_credentials(_read(tls.ca, "ca"))
    return grpc.ssl_channel_credentials(
        _read(tls.ca, "ca"),
        _read(tls.client_key, "client_key"),
        _read(tls.client_cert, "client_cert"),
    )


def aio_channel(address: str, tls: TlsConfig, options: Sequence[tuple[str, Any]] = ()) -> Any:
    """A grpc.aio channel to a tier or the validator: mutual TLS, or plaintext."""
    if not tls.enabled:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, channel_credentials(tls), options=options)


# --- development certificates (`make certs`) ---


def write_dev_certs(out: Path, hosts: Sequence[str], days: int = 365) -> list[Path]:
    """A CA, a server certificate for `hosts` (DNS names or IPs) and a client certificate,
    all signed by the CA; keys written 0600. Returns the files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tierroute development"),
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
            ]
        )

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    ca_key = key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("tierroute development CA"))
        .issuer_name(name("tierroute development CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
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
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> tuple:
        k = key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), k

    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    server, server_key = leaf("tierroute services", ExtendedKeyUsageOID.SERVER_AUTH, sans)
    client, client_key = leaf("tierroute router", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for stem, cert, k in (("ca", ca, ca_key), ("server", server, server_key),
                          ("client", client, client_key)):  # fmt: skip
        pem = out / f"{stem}.pem"
        pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path = out / f"{stem}-key.pem"
        key_path.touch(mode=0o600)
        key_path.chmod(0o600)
        key_path.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        files += [pem, key_path]
    return files
