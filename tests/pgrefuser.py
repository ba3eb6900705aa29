"""A stand-in for a PostgreSQL server that refuses every connection the way a real one does while it starts up or
shuts down: it reads the startup packet and answers with a FATAL ErrorResponse carrying a SQLSTATE and a message.
Used only for refusals a test cannot make a real server give on demand (57P03 needs a server mid-start)."""

from __future__ import annotations

import socket
import struct
import threading
from types import TracebackType

SSL_REQUEST = 80877103
GSS_REQUEST = 80877104


class RefusingServer:
    def __init__(self, sqlstate: str, message: str) -> None:
        self.sqlstate = sqlstate
        self.message = message
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed: the test is over
                return
            with connection:
                self._refuse(connection)

    def _refuse(self, connection: socket.socket) -> None:
        while True:
            header = connection.recv(8, socket.MSG_WAITALL)
            if len(header) < 8:
                return
            length, code = struct.unpack("!ii", header)
            connection.recv(length - 8, socket.MSG_WAITALL)
            if code in (SSL_REQUEST, GSS_REQUEST):
                connection.sendall(b"N")  # no encryption here: the client goes on in the clear
                continue
            fields = b"".join(
                kind + value.encode() + b"\0"
                for kind, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", self.sqlstate), (b"M", self.message))
            )
            body = fields + b"\0"
            connection.sendall(b"E" + struct.pack("!i", len(body) + 4) + body)
            return

    def __enter__(self) -> RefusingServer:
        self.thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.listener.close()
        self.thread.join(timeout=5)
