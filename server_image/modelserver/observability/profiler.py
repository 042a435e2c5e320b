"""TensorFlow's profiler service (`tensorflow.ProfilerService`) on model-server's gRPC port.

TensorBoard's "Capture Profile" and `tf.profiler.experimental.client.trace("grpc://host:8500",
logdir, duration_ms)` are pointed at TF Serving's gRPC address, because TF Serving serves the
profiler service there. This module serves it the same way on our grpc.aio server:

- Profile: starts a profiler session in this process (host, Python and device tracer levels from
  the request's ProfileOptions), keeps it open for `duration_ms` (at most
  --profiler_max_duration_seconds) while requests flow (ended early by Terminate for its session
  id, or by the client going away), collects the XSpace and writes it where the client looks for
  it, `<repository_root>/<session_id>/<host_name>.xplane.pb`, as TensorFlow's own
  ProfilerServiceImpl does; the response says whether any event was collected (and carries the
  XSpace itself when `emit_xspace` is set). Unlike TensorFlow's service, it writes only inside
  --profiler_dir: a repository_root outside it (after resolving `..` and links), or a session id
  or host name that is not a plain file name, is INVALID_ARGUMENT; and one capture runs at a
  time (another is UNAVAILABLE at once).
- Terminate: ends an open session early. Monitor and continuous profiling: UNIMPLEMENTED (as in
  TensorFlow's own service).

The request and response messages are TensorFlow's (`tsl/profiler/protobuf/profiler_service.proto`,
not shipped as Python); they are defined here with the same names and field numbers, in a private
descriptor pool, over the ProfileOptions message TensorFlow does ship.
`--profiler_port` still starts TensorFlow's own profiler server on a port of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from modelserver.core.errors import ServingError

log = logging.getLogger("modelserver.profiler")

SERVICE = "tensorflow.ProfilerService"
MAX_DURATION_MS = 60 * 60 * 1000  # TensorFlow's cap on one capture
_F = descriptor_pb2.FieldDescriptorProto


def _messages() -> dict[str, Any]:
    from tensorflow.tsl.profiler.protobuf import profiler_options_pb2, xplane_pb2

    pool = descriptor_pool.DescriptorPool()
    for dep in (profiler_options_pb2, xplane_pb2):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(dep.DESCRIPTOR.serialized_pb))
    fdp = descriptor_pb2.FileDescriptorProto(
        name="tsl/profiler/protobuf/profiler_service.proto", package="tensorflow", syntax="proto3",
        dependency=[profiler_options_pb2.DESCRIPTOR.name, xplane_pb2.DESCRIPTOR.name])

    def message(name: str, *fields: tuple[str, int, int, str, bool]) -> None:
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, type_name, repeated in fields:
            m.field.add(name=fname, number=number, type=ftype, type_name=type_name or None,
                        label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)

    message("ProfileRequest",
            ("duration_ms", 1, _F.TYPE_UINT64, "", False), ("max_events", 2, _F.TYPE_UINT64, "", False),
            ("tools", 3, _F.TYPE_STRING, "", True), ("opts", 4, _F.TYPE_MESSAGE, ".tensorflow.ProfileOptions", False),
            ("repository_root", 5, _F.TYPE_STRING, "", False), ("session_id", 6, _F.TYPE_STRING, "", False),
            ("host_name", 7, _F.TYPE_STRING, "", False), ("emit_xspace", 9, _F.TYPE_BOOL, "", False))
    # The XSpace travels as the bytes TensorFlow produced: its string fields may hold bytes that
    # are not UTF-8, which a proto3 parse would reject. Only its event count is read, through
    # skeleton messages that keep XSpace's field numbers for planes, lines and events.
    message("ProfileResponse", ("empty_trace", 7, _F.TYPE_BOOL, "", False), ("xspace", 8, _F.TYPE_BYTES, "", False))
    message("TerminateRequest", ("session_id", 1, _F.TYPE_STRING, "", False))
    message("TerminateResponse")
    number = {m.name: {f.name: f.number for f in m.fields} for m in
              (xplane_pb2.XSpace.DESCRIPTOR, xplane_pb2.XPlane.DESCRIPTOR, xplane_pb2.XLine.DESCRIPTOR)}
    message("EventCountLine", ("events", number["XLine"]["events"], _F.TYPE_BYTES, "", True))
    message("EventCountPlane", ("lines", number["XPlane"]["lines"], _F.TYPE_MESSAGE, ".tensorflow.EventCountLine", True))
    message("EventCountSpace", ("planes", number["XSpace"]["planes"], _F.TYPE_MESSAGE, ".tensorflow.EventCountPlane",
                                True))
    pool.Add(fdp)
    names = ("ProfileRequest", "ProfileResponse", "TerminateRequest", "TerminateResponse", "EventCountSpace")
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{n}")) for n in names}


def session_options(opts: Any) -> dict[str, int]:
    """ProfileOptions as the Python profiler session's options (TensorFlow's defaults where the
    request leaves a level unset: host 2, device 1, Python 0)."""
    given = opts.version > 0 or opts.host_tracer_level or opts.device_tracer_level or opts.python_tracer_level
    if not given:
        return {"host_tracer_level": 2, "device_tracer_level": 1, "python_tracer_level": 0, "delay_ms": 0}
    return {"host_tracer_level": int(opts.host_tracer_level), "device_tracer_level": int(opts.device_tracer_level),
            "python_tracer_level": int(opts.python_tracer_level), "delay_ms": 0}


def has_events(xspace: Any) -> bool:
    return any(len(line.events) for plane in xspace.planes for line in plane.lines)


# A session id or host name becomes one path component: TensorBoard sends a timestamp
# ("2026_12_06_06_20_48") and "host:port".
_NAME = re.compile(r"[A-Za-z0-9_\[][A-Za-z0-9_.:@+\[\]-]{0,127}")


def xplane_path(root: Path, repository_root: str, session_id: str, host_name: str) -> Path:
    """Where a capture is written: `<repository_root>/<session_id>/<host_name>.xplane.pb`, which
    must lie inside `root` (--profiler_dir); INVALID_ARGUMENT otherwise."""
    host = host_name or socket.gethostname()
    for what, name in (("session_id", session_id), ("host_name", host)):
        if not _NAME.fullmatch(name) or name in (".", ".."):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Profile: {what} {name[:80]!r} is not a plain "
                               f"file name ({_NAME.pattern})")
    base = root.resolve()
    target = Path(os.path.realpath(os.path.join(base, repository_root)))  # an absolute root replaces `base`
    if not target.is_relative_to(base):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Profile: repository_root {repository_root[:200]!r} "
                           f"is outside the profiler directory {base} (--profiler_dir)")
    return target / session_id / f"{host}.xplane.pb"


class ProfilerService:
    """The servicer: one capture at a time per process (TensorFlow allows one profiler session),
    written inside `root`, at most `max_duration_s` long."""

    def __init__(self, root: str | Path | None = None, max_duration_s: float = MAX_DURATION_MS / 1000) -> None:
        self.msgs = _messages()
        self.root = Path(root or tempfile.gettempdir())
        self.max_duration_s = max_duration_s
        self._terminate: dict[str, asyncio.Event] = {}
        self._busy = False

    async def Profile(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        try:
            path = (xplane_path(self.root, request.repository_root, request.session_id, request.host_name)
                    if request.repository_root else None)
            return await self.capture(request, path)
        except ServingError as exc:
            await context.abort(exc.code, exc.message)

    async def capture(self, request: Any, path: Path | None) -> Any:
        """One capture (UNAVAILABLE while another runs), its XSpace written to `path` if given."""
        if self._busy:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, "Cannot start profiling: another capture is running")
        self._busy = True
        try:
            return await self._profile(request, path)
        finally:
            self._busy = False

    def terminate(self, session_id: str) -> None:
        """Ends the open capture of `session_id` early (nothing when there is none)."""
        event = self._terminate.get(session_id)
        if event is not None:
            event.set()

    async def _profile(self, request: Any, path: Path | None) -> Any:
        from tensorflow.python.profiler.internal import _pywrap_profiler

        loop = asyncio.get_running_loop()
        session = _pywrap_profiler.ProfilerSession()
        with tempfile.TemporaryDirectory(prefix="modelserver-profile-") as scratch:
            try:
                await loop.run_in_executor(None, session.start, scratch, session_options(request.opts))
            except Exception as exc:  # AlreadyExists: the profiler API is running in this process
                raise ServingError(grpc.StatusCode.UNAVAILABLE, f"Cannot start profiling: {exc}") from None
            stop = self._terminate.setdefault(request.session_id, asyncio.Event())
            try:
                duration = min(int(request.duration_ms) / 1000.0, self.max_duration_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), duration)
            finally:  # also when the client went away: never leave the process's session open
                data = await loop.run_in_executor(None, _collect, session, Path(scratch))
                self._terminate.pop(request.session_id, None)
        response = self.msgs["ProfileResponse"](empty_trace=not has_events(self.msgs["EventCountSpace"].FromString(data)))
        if path is not None:
            await loop.run_in_executor(None, _write, path, data)
            log.info("profile of %.0f ms written to %s", duration * 1000, path)
        if request.emit_xspace:
            response.xspace = data
        return response

    async def Terminate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await self.terminate_capture(request.session_id)
        return self.msgs["TerminateResponse"]()

    async def terminate_capture(self, session_id: str) -> None:
        self.terminate(session_id)


def _collect(session: Any, scratch: Path) -> bytes:
    """Stops the session and returns its serialized XSpace (which the Python session API only
    exports as TensorBoard's `<logdir>/plugins/profile/<run>/<host>.xplane.pb`)."""
    session.export_to_tb()
    files = sorted(scratch.glob("plugins/profile/*/*.xplane.pb"))
    return files[0].read_bytes() if files else b""


def _write(path: Path, data: bytes) -> None:
    os.makedirs(path.parent, exist_ok=True)
    path.write_bytes(data)


def _parsed(cls: Any, method: Any) -> tuple[Any, Any]:
    """(deserializer, handler): bytes that are not a valid `cls` reach the handler as None and are
    answered INVALID_ARGUMENT (gRPC's own deserializer failure would be INTERNAL)."""
    def deserialize(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError:
            return None

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Could not parse the request as {cls.DESCRIPTOR.full_name}")
        return await method(request, context)

    return deserialize, handle


def add_service(server: grpc.aio.Server, root: str | Path | None = None,
                max_duration_s: float = MAX_DURATION_MS / 1000, service: ProfilerService | None = None) -> ProfilerService:
    service = service if service is not None else ProfilerService(root, max_duration_s)
    m = service.msgs
    handlers = {}
    for name, method, req, resp in (("Profile", service.Profile, "ProfileRequest", "ProfileResponse"),
                                    ("Terminate", service.Terminate, "TerminateRequest", "TerminateResponse")):
        deserialize, handle = _parsed(m[req], method)
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            handle, request_deserializer=deserialize, response_serializer=m[resp].SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    return service
