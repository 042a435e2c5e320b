"""`--ssl_config_file`: gRPC over TLS and mutual TLS with TF Serving's SSLConfig file, against a
real model-server and TF Serving's client stubs on `grpc.ssl_channel_credentials`. The tests make
their own CA, server and client certificates."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from server_support import predict_request, run_server_expecting_exit
from tensorflow_serving.apis import prediction_service_pb2_grpc


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
          server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))
    if issuer is None:
        builder = builder.issuer_name(name).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        return builder.sign(key, hashes.SHA256())
    builder = builder.issuer_name(issuer[0].subject)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer[1], hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki() -> dict[str, bytes]:
    ca_key = _key()
    ca = _cert("test CA", ca_key, None)
    server_key, client_key = _key(), _key()
    return {
        "ca": _pem(ca),
        "server_key": _pem_key(server_key), "server_cert": _pem(_cert("model-server", server_key, (ca, ca_key), True)),
        "client_key": _pem_key(client_key), "client_cert": _pem(_cert("client", client_key, (ca, ca_key))),
        "other_key": _pem_key(_key()),
    }


def ssl_config(path: Path, key: bytes, cert: bytes, ca: bytes | None = None, verify: bool = False) -> Path:
    """TF Serving's SSLConfig text proto: the PEM contents themselves, as escaped strings."""
    def quoted(b: bytes) -> str:
        return '"' + b.decode().replace("\n", "\\n") + '"'

    text = f"server_key: {quoted(key)}\nserver_cert: {quoted(cert)}\n"
    if ca is not None:
        text += f"custom_ca: {quoted(ca)}\n"
    if verify:
        text += "client_verify: true\n"
    path.write_text(text)
    return path


def _predict(channel: grpc.Channel) -> float:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    out = stub.Predict(predict_request("half_plus_two", {"x": np.array([2.0], np.float32)}), timeout=30)
    return float(tf.make_ndarray(out.outputs["y"])[0])


@pytest.mark.parametrize("workers", ["1", "2"])  # front-end workers serve TLS from the same files
def test_grpc_over_tls(start_server, models_dir: Path, tmp_path: Path, pki: dict[str, bytes], workers: str) -> None:  # type: ignore[no-untyped-def]
    cfg = ssl_config(tmp_path / "ssl.config", pki["server_key"], pki["server_cert"])
    srv = start_server([f"--model_config_file={models_dir / 'models.config'}", f"--ssl_config_file={cfg}",
                        f"--frontend_workers={workers}"])
    with grpc.secure_channel(srv.target, grpc.ssl_channel_credentials(root_certificates=pki["ca"])) as ch:
        assert _predict(ch) == 3.0
    with grpc.insecure_channel(srv.target) as ch, pytest.raises(grpc.RpcError) as err:
        _predict(ch)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # plaintext is not spoken there
    assert "(TLS)" in srv.output()


@pytest.mark.parametrize("workers", ["1", "2"])  # front-end workers serve TLS from the same files
def test_mutual_tls_requires_a_client_certificate(start_server, models_dir: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                  pki: dict[str, bytes], workers: str) -> None:
    cfg = ssl_config(tmp_path / "mtls.config", pki["server_key"], pki["server_cert"], pki["ca"], verify=True)
    srv = start_server([f"--model_config_file={models_dir / 'models.config'}", f"--ssl_config_file={cfg}",
                        f"--frontend_workers={workers}"])
    creds = grpc.ssl_channel_credentials(root_certificates=pki["ca"], private_key=pki["client_key"],
                                         certificate_chain=pki["client_cert"])
    with grpc.secure_channel(srv.target, creds) as ch:
        assert _predict(ch) == 3.0
    with grpc.secure_channel(srv.target, grpc.ssl_channel_credentials(root_certificates=pki["ca"])) as ch, \
            pytest.raises(grpc.RpcError) as err:
        _predict(ch)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert srv.ready()  # REST stays plain HTTP, as in TF Serving


@pytest.mark.parametrize(("case", "words"), [
    ("missing", "cannot read --ssl_config_file"),
    ("not a proto", "Error parsing text-format tensorflow.serving.SSLConfig"),
    ("bad key", "server_key is not a PEM private key"),
    ("bad cert", "server_cert is not a PEM certificate"),
    ("mismatch", "server_key does not match"),
    ("verify without ca", "client_verify needs custom_ca"),
])
def test_unusable_ssl_config_is_a_start_up_error(tmp_path: Path, pki: dict[str, bytes], case: str, words: str) -> None:
    path = tmp_path / "ssl.config"
    key, cert = pki["server_key"], pki["server_cert"]
    if case == "not a proto":
        path.write_text("server_key: 'x' bogus_field: 1")
    elif case == "bad key":
        ssl_config(path, b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n", cert)
    elif case == "bad cert":
        ssl_config(path, key, b"not a certificate")
    elif case == "mismatch":
        ssl_config(path, pki["other_key"], cert)
    elif case == "verify without ca":
        ssl_config(path, key, cert, verify=True)
    r = run_server_expecting_exit(["--model_name=m", f"--model_base_path={tmp_path}", f"--ssl_config_file={path}"])
    assert r.returncode == 1 and words in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
