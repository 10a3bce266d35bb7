"""A throwaway PKI made at run time: a CA, a server certificate for loopback, client certificates.

Used by tests/test_security.py and `python -m bench.security`.

EC P-256 keys keep generation to milliseconds. Nothing here is fit for production.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # trusted root (signs server and client)
    server: CertPair  # valid for localhost and 127.0.0.1
    client: CertPair  # a client certificate signed by `ca`
    rogue_ca: Path  # an unrelated root
    rogue_client: CertPair  # a client certificate signed by `rogue_ca`


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, cert: x509.Certificate, key=None) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path = path.with_suffix(".key")
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return path


def _builder(subject: str, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)))


def _make_ca(name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder(name, _name(name), key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _make_leaf(name: str, ca_cert, ca_key, server: bool):
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (_builder(name, ca_cert.subject, key.public_key())
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(root: Path) -> Pki:
    root.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _make_ca("tandem test CA")
    rogue_cert, rogue_key = _make_ca("rogue CA")
    pairs = {}
    for name, issuer, server in [("server", (ca_cert, ca_key), True), ("client", (ca_cert, ca_key), False),
                                 ("rogue-client", (rogue_cert, rogue_key), False)]:
        cert, key = _make_leaf(f"tandem {name}", *issuer, server=server)
        path = _write(root / f"{name}.pem", cert, key)
        pairs[name] = CertPair(path, path.with_suffix(".key"))
    return Pki(ca=_write(root / "ca.pem", ca_cert), server=pairs["server"], client=pairs["client"],
                   rogue_ca=_write(root / "rogue-ca.pem", rogue_cert), rogue_client=pairs["rogue-client"])
