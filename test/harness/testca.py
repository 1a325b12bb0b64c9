"""A throw-away certificate authority for the tests that run servers over TLS.

MAS trusts the system store or ``SSL_CERT_FILE`` and refuses a self-signed
certificate used as a server's own (rustls: "CaUsedAsEndEntity"), so the tests
make a CA and issue server certificates from it, as a private CA does:

* :class:`TestCA` -- ``TestCA(directory)`` writes ``ca.pem`` (the bundle a
  client trusts: ``mas:ca_bundle``, ``SSL_CERT_FILE``, ``requests``' ``verify``)
  and its key; :meth:`TestCA.issue` writes a leaf certificate and key for DNS
  names and IP addresses (``ServerCert.cert``/``.key``, PEM, key 0600).

Keys are EC P-256 (fast to make); certificates are valid from an hour ago for
a week. Nothing here talks to the network.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _write_key(path: Path, key) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=7))


@dataclass(frozen=True)
class ServerCert:
    """A leaf certificate issued by :class:`TestCA`: PEM files, and the names it holds."""

    cert: Path
    key: Path
    names: tuple[str, ...]


class TestCA:
    """A CA (key and self-signed certificate) in ``directory``; ``ca.pem`` is what clients trust."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "mas-formula test CA"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            _validity(x509.CertificateBuilder())
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
        )
        self._cert = builder.sign(self._key, hashes.SHA256())
        self.cert = self.directory / "ca.pem"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self.cert.chmod(0o644)
        _write_key(self.directory / "ca.key", self._key)

    def issue(self, name: str, *names: str) -> ServerCert:
        """A server certificate for ``name`` and ``names`` (DNS names or IP addresses), written as ``<name>.pem``/``.key``."""
        key = ec.generate_private_key(ec.SECP256R1())
        alt = []
        for entry in (name, *names):
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(entry)))
            except ValueError:
                alt.append(x509.DNSName(entry))
        builder = (
            _validity(x509.CertificateBuilder())
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        cert = builder.sign(self._key, hashes.SHA256())
        stem = name.replace(":", "_")
        cert_path, key_path = self.directory / f"{stem}.pem", self.directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        return ServerCert(cert_path, key_path, (name, *names))

    def __repr__(self) -> str:
        return f"TestCA({self.cert})"
