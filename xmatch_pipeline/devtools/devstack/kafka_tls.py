"""The devstack's own certificate authority and the broker's certificate, as PEM files.

Kafka reads PEM directly (``ssl.keystore.type=PEM``), so no keytool or JKS is involved: the
keystore is one file holding the broker's unencrypted private key and its certificate
chain, and clients trust ``ca.pem``. The files are made once and kept; a certificate that
expires within a week, or does not name the broker's host, is made again with a new CA.
Loopback only: the keys are as secret as the devstack's fixed passwords.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = timedelta(days=825)
RENEW_BEFORE = timedelta(days=7)


@dataclass(frozen=True)
class TlsFiles:
    """Where the CA and the broker's keystore live inside the devstack's Kafka folder."""

    directory: Path

    @property
    def ca_certificate(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def broker_keystore(self) -> Path:
        """The broker's private key followed by its certificate and the CA's (Kafka's PEM)."""
        return self.directory / "broker-keystore.pem"


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "xmatch_pipeline devstack"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _subject_alternative_names(host: str) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _still_good(files: TlsFiles, host: str) -> bool:
    if not (files.ca_certificate.is_file() and files.broker_keystore.is_file()):
        return False
    try:
        certificates = x509.load_pem_x509_certificates(files.broker_keystore.read_bytes())
    except ValueError:
        return False
    broker = certificates[0]
    names = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    wanted = _subject_alternative_names(host)
    return all(name in names for name in wanted) and (
        broker.not_valid_after_utc - datetime.now(UTC) > RENEW_BEFORE
    )


def ensure_broker_certificates(directory: Path, host: str) -> TlsFiles:
    """Make the CA and the broker's certificate for ``host`` unless good ones are there."""
    files = TlsFiles(directory)
    if _still_good(files, host):
        return files
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC) - timedelta(minutes=5)  # tolerate a little clock skew
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("xmatch_pipeline devstack CA")
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker_certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca_name)
        .public_key(broker_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(_subject_alternative_names(host), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = broker_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    keystore = key_pem + broker_certificate.public_bytes(pem) + ca_certificate.public_bytes(pem)
    _write_private(files.broker_keystore, keystore)
    files.ca_certificate.write_bytes(ca_certificate.public_bytes(pem))
    return files


def _write_private(path: Path, content: bytes) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(content)
