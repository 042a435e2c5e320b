"""gRPC over TLS from TF Serving's `--ssl_config_file`.

The file is a text-format `tensorflow.serving.SSLConfig` whose fields hold the PEM contents
themselves (not paths): `server_key`, `server_cert`, `custom_ca` and `client_verify`. As in
TF Serving, gRPC is served over TLS with that key and certificate; `client_verify: true` requires
and verifies a client certificate signed by `custom_ca` (mutual TLS). The REST port stays plain
HTTP, as in TF Serving. Everything is checked at start-up, so that a file that cannot be read, a
key or certificate that does not parse, or a key that does not match its certificate is a clear
error instead of failed handshakes later.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from modelserver.config.files import ConfigError, read_text
from modelserver.config.model_config import parse_text_proto
from modelserver.config.protos import SSLConfig


@dataclass(frozen=True, slots=True)
class TlsConfig:
    server_key: bytes
    server_cert: bytes
    custom_ca: bytes | None
    client_verify: bool


def load_ssl_config(path: str | Path) -> TlsConfig:
    p = Path(path)
    cfg = parse_text_proto(read_text(p, "--ssl_config_file"), SSLConfig(), str(p))
    return check(TlsConfig(cfg.server_key.encode(), cfg.server_cert.encode(),
                           cfg.custom_ca.encode() or None, bool(cfg.client_verify)), str(p))


def check(cfg: TlsConfig, source: str) -> TlsConfig:
    """Parses the PEM blocks and checks that the key belongs to the certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if not cfg.server_key.strip() or not cfg.server_cert.strip():
        raise ConfigError(f"{source}: server_key and server_cert must both hold PEM data")
    try:
        key = serialization.load_pem_private_key(cfg.server_key, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: server_key is not a PEM private key (unencrypted): {exc}") from None
    try:
        certs = x509.load_pem_x509_certificates(cfg.server_cert)
    except ValueError as exc:
        raise ConfigError(f"{source}: server_cert is not a PEM certificate: {exc}") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.PEM, pub) != \
            certs[0].public_key().public_bytes(serialization.Encoding.PEM, pub):
        raise ConfigError(f"{source}: server_key does not match the first certificate of server_cert")
    if cfg.custom_ca is not None:
        try:
            x509.load_pem_x509_certificates(cfg.custom_ca)
        except ValueError as exc:
            raise ConfigError(f"{source}: custom_ca is not a PEM certificate: {exc}") from None
    if cfg.client_verify and cfg.custom_ca is None:
        raise ConfigError(f"{source}: client_verify needs custom_ca (the CA that signs client certificates)")
    return cfg


def server_credentials(cfg: TlsConfig) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(cfg.server_key, cfg.server_cert)], root_certificates=cfg.custom_ca,
                                       require_client_auth=cfg.client_verify)
