"""TF Serving's config messages that tensorflow-serving-api does not ship as Python, defined here
with the same packages, names and field numbers, so that `text_format` reads real config files:

    // tensorflow_serving/config/monitoring_config.proto
    message PrometheusConfig { bool enable = 1; string path = 2; }
    message MonitoringConfig { PrometheusConfig prometheus_config = 1; }

    // tensorflow_serving/config/ssl_config.proto (the fields hold the PEM contents themselves)
    message SSLConfig { string server_key = 1; string server_cert = 2; string custom_ca = 3;
                        bool client_verify = 4; }
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "tensorflow.serving"


def _add_file(name: str, messages: dict[str, list[tuple[str, int, int, str]]]) -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(name)
        return
    except KeyError:
        pass
    fdp = descriptor_pb2.FileDescriptorProto(name=name, package=_PACKAGE, syntax="proto3")
    for msg_name, fields in messages.items():
        m = fdp.message_type.add(name=msg_name)
        for fname, number, ftype, type_name in fields:
            m.field.add(name=fname, number=number, type=ftype, label=_F.LABEL_OPTIONAL, type_name=type_name or None)
    pool.Add(fdp)


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(f"{_PACKAGE}.{name}"))


_add_file("tensorflow_serving/config/monitoring_config.proto", {
    "PrometheusConfig": [("enable", 1, _F.TYPE_BOOL, ""), ("path", 2, _F.TYPE_STRING, "")],
    "MonitoringConfig": [("prometheus_config", 1, _F.TYPE_MESSAGE, f".{_PACKAGE}.PrometheusConfig")],
})
_add_file("tensorflow_serving/config/ssl_config.proto", {
    "SSLConfig": [("server_key", 1, _F.TYPE_STRING, ""), ("server_cert", 2, _F.TYPE_STRING, ""),
                  ("custom_ca", 3, _F.TYPE_STRING, ""), ("client_verify", 4, _F.TYPE_BOOL, "")],
})

MonitoringConfig = _message("MonitoringConfig")
PrometheusConfig = _message("PrometheusConfig")
SSLConfig = _message("SSLConfig")
