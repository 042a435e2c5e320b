"""Request bodies in Kubernetes' protobuf encoding, for the kinds `kubectl create <kind>` sends so.

kubectl sends built-in objects it makes itself (`kubectl create namespace|configmap|secret ...`) as
`application/vnd.kubernetes.protobuf`: the 4 bytes `k8s\\0`, then a `runtime.Unknown` holding the
apiVersion, the kind and the object's own message. kube-apiserver decodes every built-in kind;
this module decodes the ones below (their messages written out from k8s.io/api and
k8s.io/apimachinery's generated.proto, same field numbers) into the JSON form, leaving out unset
and empty fields as the JSON encoding's `omitempty` does. A body of another kind, or with a field
these messages do not know, raises `Unsupported` (the API server answers 415 naming the kinds it
reads, and `kubectl apply -f`, which sends JSON, works for every kind).
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.unknown_fields import UnknownFieldSet

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"
_PACKAGE = "localcluster.kubeproto"

# message -> [(field name, number, type, message type or None, repeated)]; `map:` types are maps of
# string to the named scalar. Only the messages the kinds below need.
_F = FieldDescriptor
_MESSAGES: dict[str, list[tuple[str, int, int, str | None, bool]]] = {
    "TypeMeta": [("apiVersion", 1, _F.TYPE_STRING, None, False), ("kind", 2, _F.TYPE_STRING, None, False)],
    "Unknown": [("typeMeta", 1, _F.TYPE_MESSAGE, "TypeMeta", False), ("raw", 2, _F.TYPE_BYTES, None, False),
                ("contentEncoding", 3, _F.TYPE_STRING, None, False), ("contentType", 4, _F.TYPE_STRING, None, False)],
    "Time": [("seconds", 1, _F.TYPE_INT64, None, False), ("nanos", 2, _F.TYPE_INT32, None, False)],
    "OwnerReference": [("kind", 1, _F.TYPE_STRING, None, False), ("name", 3, _F.TYPE_STRING, None, False),
                       ("uid", 4, _F.TYPE_STRING, None, False), ("apiVersion", 5, _F.TYPE_STRING, None, False),
                       ("controller", 6, _F.TYPE_BOOL, None, False), ("blockOwnerDeletion", 7, _F.TYPE_BOOL, None, False)],
    "ObjectMeta": [("name", 1, _F.TYPE_STRING, None, False), ("generateName", 2, _F.TYPE_STRING, None, False),
                   ("namespace", 3, _F.TYPE_STRING, None, False), ("selfLink", 4, _F.TYPE_STRING, None, False),
                   ("uid", 5, _F.TYPE_STRING, None, False), ("resourceVersion", 6, _F.TYPE_STRING, None, False),
                   ("generation", 7, _F.TYPE_INT64, None, False), ("creationTimestamp", 8, _F.TYPE_MESSAGE, "Time", False),
                   ("deletionTimestamp", 9, _F.TYPE_MESSAGE, "Time", False),
                   ("deletionGracePeriodSeconds", 10, _F.TYPE_INT64, None, False),
                   ("labels", 11, _F.TYPE_MESSAGE, "map:string", True), ("annotations", 12, _F.TYPE_MESSAGE, "map:string", True),
                   ("ownerReferences", 13, _F.TYPE_MESSAGE, "OwnerReference", True),
                   ("finalizers", 14, _F.TYPE_STRING, None, True)],
    "NamespaceSpec": [("finalizers", 1, _F.TYPE_STRING, None, True)],
    "NamespaceStatus": [("phase", 1, _F.TYPE_STRING, None, False)],
    "Namespace": [("metadata", 1, _F.TYPE_MESSAGE, "ObjectMeta", False), ("spec", 2, _F.TYPE_MESSAGE, "NamespaceSpec", False),
                  ("status", 3, _F.TYPE_MESSAGE, "NamespaceStatus", False)],
    "ConfigMap": [("metadata", 1, _F.TYPE_MESSAGE, "ObjectMeta", False), ("data", 2, _F.TYPE_MESSAGE, "map:string", True),
                  ("binaryData", 3, _F.TYPE_MESSAGE, "map:bytes", True), ("immutable", 4, _F.TYPE_BOOL, None, False)],
    "Secret": [("metadata", 1, _F.TYPE_MESSAGE, "ObjectMeta", False), ("data", 2, _F.TYPE_MESSAGE, "map:bytes", True),
               ("type", 3, _F.TYPE_STRING, None, False), ("stringData", 4, _F.TYPE_MESSAGE, "map:string", True),
               ("immutable", 5, _F.TYPE_BOOL, None, False)],
}
# apiVersion/kind -> message: the kinds `kubectl create` makes that the docs use.
KINDS = {("v1", "Namespace"): "Namespace", ("v1", "ConfigMap"): "ConfigMap", ("v1", "Secret"): "Secret"}


class Unsupported(ValueError):
    """A protobuf body this module cannot turn into JSON faithfully."""


def _build() -> dict[str, type[message.Message]]:
    file = descriptor_pb2.FileDescriptorProto(name="localcluster/kubeproto.proto", package=_PACKAGE, syntax="proto2")
    for name, fields in _MESSAGES.items():
        msg = file.message_type.add(name=name)
        for field, number, ftype, type_name, repeated in fields:
            f = msg.field.add(name=field, number=number, type=ftype,
                              label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if type_name and type_name.startswith("map:"):
                entry = msg.nested_type.add(name=f"{field[0].upper()}{field[1:]}Entry")
                entry.options.map_entry = True
                value = _F.TYPE_BYTES if type_name == "map:bytes" else _F.TYPE_STRING
                entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
                entry.field.add(name="value", number=2, type=value, label=_F.LABEL_OPTIONAL)
                f.type_name = f".{_PACKAGE}.{name}.{entry.name}"
            elif type_name:
                f.type_name = f".{_PACKAGE}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}")) for name in _MESSAGES}


_CLASSES = _build()


def decode(body: bytes) -> dict[str, Any]:
    """A protobuf request body as the JSON object kube-apiserver would have read; raises Unsupported."""
    if not body.startswith(MAGIC):
        raise Unsupported("the body does not start with the protobuf envelope's magic bytes")
    envelope = _parse("Unknown", body[len(MAGIC):])
    api_version, kind = envelope.typeMeta.apiVersion, envelope.typeMeta.kind
    name = KINDS.get((api_version, kind))
    if name is None:
        raise Unsupported(f"{api_version}/{kind} in protobuf")
    obj = _to_json(_parse(name, envelope.raw))
    return {"apiVersion": api_version, "kind": kind, **obj}


def _parse(name: str, data: bytes) -> message.Message:
    msg = _CLASSES[name]()
    try:
        msg.ParseFromString(data)
    except message.DecodeError as exc:
        raise Unsupported(f"{name}: {exc}") from None
    return msg


def _to_json(msg: message.Message) -> dict[str, Any]:
    """Set, non-empty fields by their JSON names; bytes as base64 and Time as RFC 3339, as in JSON."""
    if len(UnknownFieldSet(msg)):
        raise Unsupported(f"{msg.DESCRIPTOR.name} has fields the local API server does not know")
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            out[field.name] = {k: _scalar(field.message_type.fields_by_name["value"], v) for k, v in value.items()}
        elif field.message_type is not None and field.message_type.name == "Time":
            if value.seconds:
                stamp = datetime.datetime.fromtimestamp(value.seconds, datetime.UTC)
                out[field.name] = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
        elif field.message_type is not None:
            nested = [_to_json(v) for v in value] if field.is_repeated else _to_json(value)
            if nested:
                out[field.name] = nested
        elif field.is_repeated:
            out[field.name] = [_scalar(field, v) for v in value]
        elif value:
            out[field.name] = _scalar(field, value)
    return {k: v for k, v in out.items() if v not in ({}, [])}


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    return base64.b64encode(value).decode() if field.type == _F.TYPE_BYTES else value
