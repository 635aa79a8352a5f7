"""Spec of the API's description: /v1/openapi.json needs a token like every call but the health probe (any role
may read it), there is no docs page, every operation's success body and error statuses are described, and a
method a path lacks is a 405 naming, in `Allow`, every method the path has.

That the description is *true* is tests/unit/test_api_schema.py's job (schemathesis against a real server).
"""

from __future__ import annotations

import pytest

from ballast.api.schemas import SUCCESS, error_statuses
from tests.conftest import Api

SQLITE_ONLY = pytest.mark.parametrize("store_kind", ["sqlite"])


@SQLITE_ONLY
async def test_the_description_needs_a_token_and_any_role_reads_it(api: Api) -> None:
    """Without a token: 401; a viewer reads it; /v1/docs (a page whose scripts come from a public CDN) is gone."""
    anonymous = api.as_(None)
    assert (await anonymous.get("/v1/openapi.json")).status_code == 401
    assert (await anonymous.get("/v1/docs")).status_code == 401, "strangers learn nothing, routes included"
    assert (await api.http.get("/v1/docs")).status_code == 404
    assert (await api.http.post("/v1/users", json={"name": "vic", "role": "viewer"})).status_code == 201
    viewer = api.as_((await api.http.post("/v1/tokens", json={"user": "vic"})).json()["token"])
    r = await viewer.get("/v1/openapi.json")
    assert r.status_code == 200 and r.json()["info"]["title"] == "Ballast control plane"


@SQLITE_ONLY
async def test_every_operation_describes_its_answers(api: Api) -> None:
    """Each operation has its success body (a named model, not a bare object) and every error status, all of them
    in the one error shape."""
    schema = (await api.http.get("/v1/openapi.json")).json()
    described = {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}
    assert described == set(SUCCESS)
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            statuses, _ = SUCCESS[(method.upper(), path)]
            expected = {str(s) for s in statuses} | {str(s) for s in error_statuses(method.upper(), path)}
            assert set(op["responses"]) == expected, (method, path)
            for status, answer in op["responses"].items():
                content = answer["content"]
                if "application/json" in content:
                    ref = content["application/json"]["schema"]["$ref"]
                    name = ref.rsplit("/", 1)[-1]
                    assert name in schema["components"]["schemas"], ref
                    if int(status) >= 400:
                        assert name == "Error", (method, path, status)
    error = schema["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"error", "message"} and "problems" in error["properties"]


@SQLITE_ONLY
@pytest.mark.parametrize("method, path, allowed", [
    ("TRACE", "/v1/whoami", "GET"),
    ("PUT", "/v1/apps/shop", "DELETE, GET"),          # two routes share the path: both are named
    ("PATCH", "/v1/nodes/n1", "DELETE, GET, PUT"),
])
async def test_a_missing_method_is_405_naming_the_methods_there_are(api: Api, method: str, path: str,
                                                                    allowed: str) -> None:
    r = await api.http.request(method, path)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allowed
    assert r.json()["error"] == "HTTPError"
