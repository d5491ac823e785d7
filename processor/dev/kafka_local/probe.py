"""Is the broker ready? A Metadata request spoken over a bare socket, sync or async."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from processor.dev.kafka_local.host import DEFAULT_START_TIMEOUT, HOST, LocalKafkaError

_METADATA_API_KEY = 3
# Kafka 4 dropped Metadata v0-v3 (KIP-896). v4 is the oldest version it still serves
# and, unlike v9+, has no tagged fields, so it is simple to encode by hand.
_METADATA_VERSION = 4
_MAX_RESPONSE = 1 << 20  # no topics are asked for; anything bigger is not Kafka talking


@dataclass(frozen=True)
class _ClusterView:
    cluster_id: str | None
    controller_id: int
    broker_ids: tuple[int, ...]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self._pos + size > len(self._data):
            raise ValueError("truncated metadata response")
        (value,) = struct.unpack_from(fmt, self._data, self._pos)
        self._pos += size
        return value

    def int32(self) -> int:
        value: int = self._take(">i")
        return value

    def string(self) -> str | None:
        length: int = self._take(">h")
        if length < 0:
            return None
        if self._pos + length > len(self._data):
            raise ValueError("truncated metadata response")
        text = self._data[self._pos : self._pos + length].decode("utf-8", "replace")
        self._pos += length
        return text


def _metadata_request(correlation_id: int) -> bytes:
    client_id = b"credits-meter-readiness"
    header = struct.pack(
        ">hhih", _METADATA_API_KEY, _METADATA_VERSION, correlation_id, len(client_id)
    )
    # topics = empty array (cluster info only), allow_auto_topic_creation = false
    body = struct.pack(">ib", 0, 0)
    payload = header + client_id + body
    return struct.pack(">i", len(payload)) + payload


def _parse_metadata(payload: bytes, correlation_id: int) -> _ClusterView:
    reader = _Reader(payload)
    if reader.int32() != correlation_id:
        raise ValueError("metadata response for another request")
    reader.int32()  # throttle_time_ms
    brokers: list[int] = []
    for _ in range(reader.int32()):
        brokers.append(reader.int32())
        reader.string()  # host
        reader.int32()  # port
        reader.string()  # rack
    cluster_id = reader.string()
    controller_id = reader.int32()
    return _ClusterView(cluster_id, controller_id, tuple(brokers))


def bootstrap_endpoints(bootstrap: str) -> list[tuple[str, int]]:
    result: list[tuple[str, int]] = []
    for item in bootstrap.split(","):
        entry = item.strip()
        if "://" in entry:
            entry = entry.split("://", 1)[1]
        host, sep, port = entry.rpartition(":")
        if not sep or not port.isdigit():
            raise LocalKafkaError(f"bad bootstrap address {item!r} (want host:port)")
        result.append((host.strip("[]") or HOST, int(port)))
    if not result:
        raise LocalKafkaError("empty bootstrap address")
    return result


def is_ready(view: _ClusterView) -> bool:
    # A KRaft broker lists itself only once it is registered and unfenced, i.e. able
    # to serve produce/fetch; a controller id of -1 means no quorum leader yet.
    return bool(view.broker_ids) and view.controller_id >= 0


def probe_blocking(host: str, port: int, timeout: float) -> _ClusterView:
    correlation_id = int.from_bytes(os.urandom(3), "big")
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(_metadata_request(correlation_id))
        size = struct.unpack(">i", _recv_exact(sock, 4))[0]
        if not 0 < size <= _MAX_RESPONSE:
            raise ValueError(f"implausible response size {size}")
        return _parse_metadata(_recv_exact(sock, size), correlation_id)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        chunks += chunk
    return bytes(chunks)


async def _probe_async(host: str, port: int, timeout: float) -> _ClusterView:  # noqa: ASYNC109
    correlation_id = int.from_bytes(os.urandom(3), "big")
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(_metadata_request(correlation_id))
            await writer.drain()
            size = struct.unpack(">i", await reader.readexactly(4))[0]
            if not 0 < size <= _MAX_RESPONSE:
                raise ValueError(f"implausible response size {size}")
            return _parse_metadata(await reader.readexactly(size), correlation_id)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _not_ready_error(bootstrap: str, timeout: float, last: str) -> LocalKafkaError:
    return LocalKafkaError(
        f"Kafka at {bootstrap} did not answer a metadata request within {timeout:g}s "
        f"(last attempt: {last})"
    )


def wait_ready_blocking(
    bootstrap: str,
    timeout: float = DEFAULT_START_TIMEOUT,
    *,
    check_alive: Callable[[], None] | None = None,
) -> None:
    """Block until a broker at `bootstrap` answers a metadata request listing itself.

    `check_alive` is called between attempts and may raise to give up early (e.g.
    when the broker process has exited).
    """
    endpoints = bootstrap_endpoints(bootstrap)
    deadline = time.monotonic() + timeout
    delay = 0.05
    last = "no attempt made"
    while True:
        for host, port in endpoints:
            remaining = deadline - time.monotonic()
            try:
                view = probe_blocking(host, port, max(0.2, min(2.0, remaining)))
            except (OSError, ValueError) as exc:
                last = f"{host}:{port}: {exc or type(exc).__name__}"
                continue
            if is_ready(view):
                return
            last = f"{host}:{port}: answered but not ready ({view})"
        if check_alive is not None:
            check_alive()
        if time.monotonic() + delay > deadline:
            raise _not_ready_error(bootstrap, timeout, last)
        time.sleep(delay)  # poll interval between probes, not a guess at readiness
        delay = min(delay * 2, 0.5)


# The timeout parameters below are deliberate (ASYNC109): they mirror the blocking API,
# and the error raised on expiry names the last failure, which asyncio.timeout cannot.
async def wait_ready(
    bootstrap: str,
    timeout: float = DEFAULT_START_TIMEOUT,  # noqa: ASYNC109
) -> None:
    """Async twin of `wait_ready_blocking`: poll until the broker answers metadata.

    Raises `LocalKafkaError` after `timeout` seconds, naming the last failure.
    """
    endpoints = bootstrap_endpoints(bootstrap)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.05
    last = "no attempt made"
    while True:
        for host, port in endpoints:
            remaining = deadline - loop.time()
            try:
                view = await _probe_async(host, port, max(0.2, min(2.0, remaining)))
            except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError) as exc:
                last = f"{host}:{port}: {exc or type(exc).__name__}"
                continue
            if is_ready(view):
                return
            last = f"{host}:{port}: answered but not ready ({view})"
        if loop.time() + delay > deadline:
            raise _not_ready_error(bootstrap, timeout, last)
        await asyncio.sleep(delay)  # poll interval between probes
        delay = min(delay * 2, 0.5)
