"""The async API client shared by the CLI and the node agent.

HTTP problems become `ApiError` carrying the server's message and field
problems, so callers never see httpx exceptions.

The control plane may be several replicas sharing one store: the client takes a list of URLs (or one string,
comma-separated), sticks to the one that answers, and on a transport error (or a 503 of a replica whose store is
unavailable) tries the next. A request the server may have acted on (not GET/PUT/DELETE, connection made) is not
repeated elsewhere: it fails, and the next request goes to the next replica. Every answer names the store it
came from (X-Ballast-Store); the client pins the first it sees and refuses answers of any other (`StoreMismatch`).
"""

from __future__ import annotations

from typing import Any, Sequence

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


class StoreMismatch(BallastError):
    """Two URLs of what should be one control plane answer from different stores."""

    status = 2


STORE_HEADER = "x-ballast-store"
# The agents' and gateways' bound on a replica's answer (a long-poll's own wait more) before they try the next:
# well inside the node timeout (core/nodes.py), so heartbeats through a paused replica are late, never lost.
ANSWER_SECONDS = 5.0
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


def server_list(servers: str | Sequence[str]) -> list[str]:
    """`http://a:7700,http://b:7700` or a list of URLs (each may itself hold commas): the URLs, in order."""
    items = [servers] if isinstance(servers, str) else list(servers)
    urls = [u.strip().rstrip("/") for item in items for u in item.split(",") if u.strip()]
    if not urls:
        raise Unreachable("no control plane URL given")
    return urls


class Client:
    def __init__(self, server: str | Sequence[str], token: str | None, *, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None, answer_seconds: float | None = None) -> None:
        """`answer_seconds`: with several URLs, how long a replica may take to answer (a long-poll: its `timeout`
        parameter more) before the client tries the next; a paused replica accepts connections and says nothing."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.servers = server_list(server)
        self._current = 0
        self._answer_seconds = answer_seconds if len(self.servers) > 1 else None
        self.store: str | None = None        # the store id the first answer named
        self._store_url = ""
        self._http = httpx.AsyncClient(headers=headers, timeout=timeout, transport=transport)

    @property
    def server(self) -> str:
        """The URL in use: the last that answered."""
        return self.servers[self._current]

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                      content: bytes | None = None, timeout: float | None = None) -> Any:
        if timeout is None and self._answer_seconds is not None:
            wait = (params or {}).get("timeout")   # a long-poll's own bound (the API's convention)
            timeout = self._answer_seconds + (float(wait) if isinstance(wait, (int, float)) else 0.0)
        failures: list[str] = []
        tried: set[int] = set()
        while len(tried) < len(self.servers):
            # The one in use, unless this request already failed there (another request may have moved on).
            index = next(i for i in self._from_current() if i not in tried)
            tried.add(index)
            url = self.servers[index]
            try:
                response = await self._http.request(method, url + path, json=json, params=params, content=content,
                                                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
            except httpx.TransportError as exc:
                failures.append(f"{url}: {exc!r}")
                self._leave(index)
                if method in IDEMPOTENT or isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
                    continue   # never reached a server, or repeating it changes nothing
                raise Unreachable(f"the control plane at {url} did not answer {method} {path} (not repeated "
                                  f"elsewhere: it may have been done): {exc!r}") from exc
            if response.status_code == 503 and len(self.servers) > 1 and _store_down(response):
                failures.append(f"{url}: its store is unavailable")
                self._leave(index)
                continue
            return self._answer(url, response)
        raise Unreachable("cannot reach the control plane: " + "; ".join(failures))

    def _from_current(self) -> list[int]:
        n = len(self.servers)
        return [(self._current + k) % n for k in range(n)]

    def _leave(self, index: int) -> None:
        """Move on from a replica that failed, if it is still the one in use. Several requests in flight on a
        paused replica all fail there; each moving the pointer one step would walk it round, back onto the
        paused one, again and again."""
        if self._current == index:
            self._current = (index + 1) % len(self.servers)

    def _answer(self, url: str, response: httpx.Response) -> Any:
        store = response.headers.get(STORE_HEADER)
        if store:
            if self.store is None:
                self.store, self._store_url = store, url
            elif store != self.store:
                raise StoreMismatch(f"{url} answers from store {store}, but {self._store_url} from store "
                                    f"{self.store}: these URLs are not one control plane")
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"message": response.text[:500]}
            raise ApiError(response.status_code, body if isinstance(body, dict) else {"message": str(body)})
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.content

    async def check_replicas(self) -> dict[str, str | None]:
        """Ask every URL's /healthz which store it serves (None: it did not answer); raise StoreMismatch when
        two that answer name different stores."""
        seen: dict[str, str | None] = {}
        for url in self.servers:
            try:
                response = await self._http.get(url + "/healthz", timeout=5.0)
                seen[url] = response.headers.get(STORE_HEADER) if response.status_code == 200 else None
            except httpx.TransportError:
                seen[url] = None
        ids = {s for s in seen.values() if s}
        if len(ids) > 1:
            raise StoreMismatch("the control plane URLs answer from different stores: "
                                + ", ".join(f"{u} -> {s}" for u, s in seen.items() if s)
                                + "; give only URLs of replicas that share one store")
        return seen

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    async def post(self, path: str, json: Any = None) -> Any:
        return await self.request("POST", path, json=json)

    async def put(self, path: str, json: Any = None) -> Any:
        return await self.request("PUT", path, json=json)

    async def delete(self, path: str) -> Any:
        return await self.request("DELETE", path)


def _store_down(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("error") == "StoreUnavailable"
