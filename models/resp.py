"""A pipelined Redis reader for plain connections (``redis://``, ``unix://``): one socket, every command of a
round trip packed into one buffer, the replies parsed by hiredis in C. redis-py's reply path costs ~2 us
of Python per reply, which a lookup pays per key; here a reply costs one ``hiredis.Reader.gets`` call.

A failed call closes the socket (replies may be left unread); the next call connects again. Errors are
``OSError`` (``ConnectionError``, ``TimeoutError``) while the server cannot answer (also while it is
loading its data set); an error reply to a command is a ``LookupUnavailableError``.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import hiredis

from schemas.errors import LookupUnavailableError

PLAIN_KEYS = {"host", "port", "db", "username", "password", "path", "connection_class"}


class RespPipe:
    def __init__(self, *, host: str = "localhost", port: int = 6379, path: str | None = None, db: int = 0,
                 username: str | None = None, password: str | None = None, timeout_s: float = 1.0) -> None:
        self.host, self.port, self.path, self.db = host, port, path, db
        self._auth = [username, password] if username else [password] if password else []
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._reader: Any = None
        self._buf = bytearray(1 << 16)

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float) -> RespPipe | None:
        """A pipe for a plain ``redis://`` or ``unix://`` URL; None for any other (TLS, extra options)."""
        from redis.connection import UnixDomainSocketConnection, parse_url

        kw = parse_url(url)
        conn_class = kw.pop("connection_class", None)
        if set(kw) - PLAIN_KEYS or conn_class not in (None, UnixDomainSocketConnection):
            return None
        return cls(timeout_s=timeout_s, **kw)

    def hmget_many(self, keys: Sequence[str], fields: Sequence[str]) -> list[list[bytes | None]]:
        """``HMGET key *fields`` for every key, in one round trip."""
        return self.call(pack_hmget(keys, fields), len(keys))

    def call(self, packed: bytes, n: int) -> list[Any]:
        """Send ``packed`` (``n`` commands) and read their ``n`` replies."""
        try:
            sock = self._sock if self._sock is not None else self._connect()
            sock.sendall(packed)
            return self._read(n)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._reader = None

    def _connect(self) -> socket.socket:
        if self.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout_s)
            sock.connect(self.path)
        else:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._reader = sock, hiredis.Reader()
        setup = ([["AUTH", *self._auth]] if self._auth else []) + ([["SELECT", str(self.db)]] if self.db else [])
        if setup:
            sock.sendall(b"".join(_pack(cmd) for cmd in setup))
            self._read(len(setup))
        return sock

    def _read(self, n: int) -> list[Any]:
        sock, reader, buf = self._sock, self._reader, self._buf
        if sock is None or reader is None:
            raise ConnectionError("not connected")
        out: list[Any] = []
        gets = reader.gets
        while len(out) < n:
            reply = gets()
            if reply is False:                       # hiredis: more bytes needed
                got = sock.recv_into(buf)
                if not got:
                    raise ConnectionError("redis closed the connection")
                reader.feed(buf, 0, got)
                continue
            if isinstance(reply, hiredis.ReplyError):
                if str(reply).startswith("LOADING"):
                    raise ConnectionError(f"redis is loading its data set: {reply}")
                raise LookupUnavailableError(f"redis answered an error: {reply}")
            out.append(reply)
        return out


def pack_hmget(keys: Sequence[str], fields: Sequence[str]) -> bytes:
    """``HMGET key *fields`` for every key, as one RESP buffer."""
    head = b"*%d\r\n$5\r\nHMGET\r\n" % (len(fields) + 2)
    tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in (f.encode() for f in fields))
    return b"".join([b"%s$%d\r\n%s\r\n%s" % (head, len(k), k, tail) for k in (k.encode() for k in keys)])


def _pack(args: Sequence[str]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        raw = a.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)
