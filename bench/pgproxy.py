"""A counting TCP proxy between email-sync and PostgreSQL (127.0.0.1 only), to count database statements.

pg_stat_statements is not preloaded on the shared server (and it may not be restarted), so statements are counted
on the wire instead. The proxy parses only the client-to-server half of the v3 protocol: after the untyped startup
(and SSL/GSS request) messages, every message is ``type byte + int32 length``. It counts:

- ``Q`` (simple Query: what psycopg2 sends for everything, including BEGIN and COMMIT): one round trip each;
  the SQL text is split on top-level ``;`` (psycopg2's execute_batch/values_plus_batch joins several statements
  into one Query), and every statement is classified by its first keyword;
- ``P``/``B``/``E``/``S`` (extended protocol, should a driver use it): each Execute counts as a statement.

The server-to-client half is passed through untouched. Requires sslmode=disable on the client (an encrypted
stream cannot be parsed). Started by bench.py in its own process; SIGTERM writes the counters as JSON to
``--out`` and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.serving import serve_until_stopped

UNTYPED_CODES = {80877103, 80877104, 80877102}  # SSLRequest, GSSENCRequest, CancelRequest


def split_statements(sql: str) -> list[str]:
    """Top-level statements of a Query message: split on ``;`` outside quotes and comments."""
    out, start, i, n = [], 0, 0, len(sql)
    quote: str | None = None
    while i < n:
        c = sql[i]
        if quote:
            if c == quote:
                if i + 1 < n and sql[i + 1] == quote:  # doubled quote inside a literal
                    i += 1
                else:
                    quote = None
        elif c in ("'", '"'):
            quote = c
        elif c == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
        elif c == ";":
            out.append(sql[start:i])
            start = i + 1
        i += 1
    out.append(sql[start:])
    return [s.strip() for s in out if s.strip()]


def kind_of(statement: str) -> str:
    words = statement.split(None, 3)
    first = words[0].upper() if words else "?"
    if first == "WITH":  # the claim: a CTE that locks, upserts and returns
        body = statement.upper()
        return "WITH+INSERT" if "INSERT" in body else "WITH+UPDATE" if "UPDATE" in body else "WITH"
    if first in ("SELECT", "UPDATE", "INSERT", "DELETE", "BEGIN", "COMMIT", "ROLLBACK", "SHOW", "SET"):
        if first in ("UPDATE", "INSERT", "DELETE") and len(words) > 2:
            table = words[2] if first != "UPDATE" else words[1]
            return f"{first} {table.strip(chr(34))}"
        return first
    return first


class Counts:
    def __init__(self) -> None:
        self.messages: Counter[str] = Counter()
        self.statements: Counter[str] = Counter()
        self.connections = 0
        self.bytes_in = 0

    def as_dict(self) -> dict:
        total = sum(self.statements.values())
        tx = self.statements["BEGIN"] + self.statements["COMMIT"] + self.statements["ROLLBACK"]
        return {
            "connections": self.connections,
            "round_trips": self.messages["Q"] + self.messages["S"],
            "query_messages": self.messages["Q"],
            "statements": total,
            "statements_excluding_begin_commit": total - tx,
            "by_kind": dict(self.statements.most_common()),
            "messages": dict(self.messages),
            "client_bytes": self.bytes_in,
        }


async def pump_counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counts: Counts) -> None:
    """Client → server: forward every message, counting as we go."""
    started = False
    try:
        while True:
            if not started:
                head = await reader.readexactly(8)
                length, code = struct.unpack("!ii", head)
                rest = await reader.readexactly(length - 8)
                writer.write(head + rest)
                if code not in UNTYPED_CODES:
                    started = True
                await writer.drain()
                continue
            head = await reader.readexactly(5)
            kind = chr(head[0])
            (length,) = struct.unpack("!i", head[1:])
            body = await reader.readexactly(length - 4)
            counts.bytes_in += 5 + len(body)
            counts.messages[kind] += 1
            if kind == "Q":
                for statement in split_statements(body[:-1].decode("utf-8", "replace")):
                    counts.statements[kind_of(statement)] += 1
            elif kind == "E":
                counts.statements["EXECUTE(extended)"] += 1
            writer.write(head + body)
            if kind in ("Q", "S", "X") or writer.transport.get_write_buffer_size() > 1 << 16:
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def pump_raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main_async(listen_port: int, target_port: int, out: str, max_seconds: float) -> None:
    counts = Counts()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        counts.connections += 1
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pump_counted(client_r, server_w, counts), pump_raw(server_r, client_w))

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    await serve_until_stopped(server, max_seconds, "pgproxy")
    with open(out, "w") as f:
        json.dump(counts.as_dict(), f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target-port", type=int, default=5432)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-seconds", type=float, default=3600)
    args = parser.parse_args()
    asyncio.run(main_async(args.port, args.target_port, args.out, args.max_seconds))


if __name__ == "__main__":
    main()
