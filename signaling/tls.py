"""HTTPS for the server itself: a certificate the operator gives, or one made and kept here.

Browsers give a page the microphone only over ``https://`` (or on localhost), so a server on a
LAN or the internet needs TLS. ``--tls-cert/--tls-key`` serve a real certificate (Let's
Encrypt, a company CA); ``--tls-self-signed`` makes an ECDSA certificate once, keeps it in
``<data dir>/tls/`` and reuses it, so its fingerprint stays the same across restarts.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 825


class TlsError(Exception):
    """The certificate or key can't be read or made; the server does not start."""


def _names(extra: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in ["localhost", socket.gethostname(), "127.0.0.1", "::1", *extra]:
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            entry = x509.DNSName(name)
        if entry not in out:
            out.append(entry)
    return out


def self_signed(directory: Path, names: list[str]) -> tuple[Path, Path]:
    """The kept self-signed certificate and key, made on first use: ``(cert, key)``. A kept
    one that lacks a name asked for now is made again."""
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    wanted = _names(names)
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            expires = cert.not_valid_after_utc
            if all(n in have for n in wanted) and \
                    expires > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30):
                return cert_path, key_path
        except (ValueError, x509.ExtensionNotFound) as exc:
            raise TlsError(f"{cert_path} is not a certificate: {exc}") from exc
    try:
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ai-voicebot (self-signed)")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
                .add_extension(x509.SubjectAlternativeName(wanted), critical=False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .sign(key, hashes.SHA256()))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    except OSError as exc:
        raise TlsError(f"cannot write a certificate into {directory}: {exc}") from exc
    return cert_path, key_path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot use the certificate {cert} with the key {key}: {exc}") from exc
    return context


def fingerprint(cert: Path) -> str:
    """The certificate's SHA-256 fingerprint, as browsers show it (AB:CD:…)."""
    der = x509.load_pem_x509_certificate(cert.read_bytes()).fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in der)


def first_name(cert: Path) -> str | None:
    """A DNS name the certificate is for (what a local client asks for by name)."""
    try:
        sans = x509.load_pem_x509_certificate(cert.read_bytes()).extensions \
            .get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    dns = sans.get_values_for_type(x509.DNSName)
    return dns[0] if dns else None
