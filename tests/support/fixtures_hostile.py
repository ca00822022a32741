"""A hostile API server for tests: it answers with whatever a test plants.

Registries, the Library and the Hub are supposed to answer well-formed JSON; this one
answers each path prefix with the body, status and headers a test chose (a list where
an object belongs, a size of 10**20, JSON nested 100,000 deep, text with escape codes),
so that tests can check what the client does with answers no honest server sends.
"""

from __future__ import annotations

import json
from typing import Any

from tests.support.fixtures_http import FixtureServer, Request, Response


class HostileAPI:
    def __init__(self) -> None:
        self.answers: dict[str, Response] = {}
        self.server = FixtureServer(self._handle)
        self.url = self.server.url
        self.host = self.url.removeprefix("http://")

    def answer(
        self,
        prefix: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer every request whose path starts with `prefix` (the longest wins)."""
        data = raw if raw is not None else json.dumps(body).encode()
        self.answers[prefix] = Response(
            status, data, {"Content-Type": "application/json", **(headers or {})}
        )

    def _handle(self, req: Request) -> Response:
        for prefix in sorted(self.answers, key=len, reverse=True):
            if req.path.startswith(prefix):
                return self.answers[prefix]
        return Response(404, b'{"errors": [{"code": "NOT_FOUND"}]}')

    def stop(self) -> None:
        self.server.stop()
