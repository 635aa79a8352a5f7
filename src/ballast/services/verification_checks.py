"""The external checks of a verification: a user's webhook, and PromQL against the user's Prometheus.

Thin adapters: each asks once (a webhook that does not answer is asked again,
twice at most), and turns what came back into a `Check` with the pure rules
of `core.verification`. Nothing here raises: an unreachable endpoint is an
inconclusive check, never a pass. The calls go through `services.outbound`:
an address the platform's policy refuses is an inconclusive check naming why,
and no credential of ours goes with them.
"""

from __future__ import annotations

import asyncio
from typing import Any, Mapping

import httpx

from ballast.core.outbound import OutboundPolicy
from ballast.core.verification import Check, PromCheck, Verification, Webhook, prometheus_check, promql, webhook_check
from ballast.services import outbound

WEBHOOK_ATTEMPTS = 3
PROMETHEUS_TIMEOUT = 10.0


async def run(v: Verification, payload: dict[str, Any], variables: Mapping[str, str], at: float, *,
              policy: OutboundPolicy, transport: httpx.AsyncBaseTransport | None = None) -> list[Check]:
    if not v.webhooks and not v.queries:
        return []
    async with outbound.client(policy, transport=transport) as http:
        jobs = [_webhook(http, w, payload) for w in v.webhooks]
        if v.prometheus_url:
            jobs += [_query(http, v.prometheus_url, q, variables, at) for q in v.queries]
        return list(await asyncio.gather(*jobs))


async def _webhook(http: httpx.AsyncClient, hook: Webhook, payload: dict[str, Any]) -> Check:
    error = ""
    for attempt in range(WEBHOOK_ATTEMPTS):
        try:
            response = await http.post(hook.url, json=payload, timeout=hook.timeout_seconds)
        except outbound.OutboundRefused as exc:
            return webhook_check(hook.url, None, exc.message)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__} after {attempt + 1} attempt(s)"
            await asyncio.sleep(0.5 * (attempt + 1))
            continue
        return webhook_check(hook.url, response.status_code)
    return webhook_check(hook.url, None, error)


async def _query(http: httpx.AsyncClient, base: str, check: PromCheck, variables: Mapping[str, str],
                 at: float) -> Check:
    url = base.rstrip("/") + "/api/v1/query"
    try:
        response = await http.get(url, params={"query": promql(check.query, variables), "time": f"{at:.3f}"},
                                  timeout=PROMETHEUS_TIMEOUT)
    except outbound.OutboundRefused as exc:
        return prometheus_check(check, None, exc.message)
    except httpx.HTTPError as exc:
        return prometheus_check(check, None, f"{url}: {type(exc).__name__}")
    try:
        body = response.json()
    except ValueError:
        return prometheus_check(check, None, f"{url} answered {response.status_code} without JSON")
    return prometheus_check(check, body)
