"""The async API client shared by the CLI and the node agent.

HTTP problems become `ApiError` carrying the server's message and field
problems, so callers never see httpx exceptions.
"""

from __future__ import annotations

from typing import Any

import httpx

from ballast.errors import BallastError


class ApiError(BallastError):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(str(body.get("message") or body.get("error") or f"HTTP {status}"))
        self.status = status
        self.body = body

    def render(self) -> str:
        lines = [f"error ({self.status}): {self.message}"]
        for p in self.body.get("problems", []):
            lines.append(f"  {p['path']}: got {p['value']!r}, expected {p['expected']}")
        return "\n".join(lines)


class Unreachable(BallastError):
    status = 503


class Client:
    def __init__(self, server: str, token: str | None, *, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.server = server.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.server, headers=headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                      content: bytes | None = None, timeout: float | None = None) -> Any:
        try:
            response = await self._http.request(method, path, json=json, params=params, content=content,
                                                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach the control plane at {self.server}: {exc!r}") from exc
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"message": response.text[:500]}
            raise ApiError(response.status_code, body if isinstance(body, dict) else {"message": str(body)})
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.content

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    async def post(self, path: str, json: Any = None) -> Any:
        return await self.request("POST", path, json=json)

    async def put(self, path: str, json: Any = None) -> Any:
        return await self.request("PUT", path, json=json)

    async def delete(self, path: str) -> Any:
        return await self.request("DELETE", path)
