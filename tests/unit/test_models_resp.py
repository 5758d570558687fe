"""The pipelined Redis reader against a scripted RESP server on a local socket (no Redis): the
connection setup, replies split across reads, error replies, and a reconnect after the server hangs up."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from models.resp import RespPipe, pack_hmget
from schemas.errors import LookupUnavailableError


class _Server:
    """Answers each connection with its scripted exchanges (answers sent in 3-byte pieces), recording what it got."""

    def __init__(self, script: list[list[tuple[int, bytes]]]) -> None:
        self.script = script                  # per connection, per exchange: bytes to receive, then the answer
        self.got: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for exchanges in self.script:
            conn, _ = self.sock.accept()
            with conn:
                for want, answer in exchanges:
                    data = b""
                    while len(data) < want:
                        data += conn.recv(65536)
                    self.got.append(data)
                    for i in range(0, len(answer), 3):
                        conn.sendall(answer[i:i + 3])


@pytest.fixture
def pipe_for() -> Iterator[list[_Server]]:
    servers: list[_Server] = []
    yield servers
    for s in servers:
        s.sock.close()


def test_setup_commands_then_replies_split_across_reads(pipe_for: list[_Server]) -> None:
    request = pack_hmget(["acct:1", "acct:2"], ["limit", "_ts"])
    setup = b"*3\r\n$4\r\nAUTH\r\n$1\r\nu\r\n$2\r\npw\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n"
    server = _Server([[(len(setup), b"+OK\r\n+OK\r\n"),
                       (len(request), b"*2\r\n$3\r\n250\r\n$-1\r\n*2\r\n$-1\r\n$-1\r\n")]])
    pipe_for.append(server)
    pipe = RespPipe.from_url(f"redis://u:pw@127.0.0.1:{server.port}/3", timeout_s=5.0)
    assert pipe is not None
    assert pipe.hmget_many(["acct:1", "acct:2"], ["limit", "_ts"]) == [[b"250", None], [None, None]]
    assert server.got == [setup, request]
    pipe.close()


def test_an_error_reply_raises_and_a_hangup_is_a_connection_error_then_a_reconnect(pipe_for: list[_Server]) -> None:
    one = pack_hmget(["k"], ["f"])
    server = _Server([[(len(one), b"-WRONGTYPE not a hash\r\n")], [(len(one), b"-LOADING loading\r\n")],
                      [(len(one), b"")], [(len(one), b"*1\r\n$1\r\n7\r\n")]])
    pipe_for.append(server)
    pipe = RespPipe.from_url(f"redis://127.0.0.1:{server.port}", timeout_s=5.0)
    assert pipe is not None
    with pytest.raises(LookupUnavailableError, match="WRONGTYPE"):
        pipe.hmget_many(["k"], ["f"])
    with pytest.raises(ConnectionError, match="loading"):
        pipe.hmget_many(["k"], ["f"])
    with pytest.raises(ConnectionError, match="closed"):
        pipe.hmget_many(["k"], ["f"])
    assert pipe.hmget_many(["k"], ["f"]) == [[b"7"]]           # a new connection after each failure


@pytest.mark.parametrize("url", ["rediss://h:6380/0", "redis://h:6379/0?socket_keepalive=true"])
def test_tls_or_extra_options_are_left_to_redis_py(url: str) -> None:
    assert RespPipe.from_url(url, timeout_s=1.0) is None
