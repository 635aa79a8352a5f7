"""Spec of manifest parsing: valid documents become typed manifests; every bad field is named with its value."""

from __future__ import annotations

from typing import Any

import pytest

from ballast.core.manifests import API_VERSION, AppServiceManifest, CellManifest, parse_documents, spec_json
from ballast.errors import FieldProblem, InvalidInput

TEMPLATE = {"command": ["python", "-m", "shop"]}


def cell(name: str = "cell-a", zone: str = "zone-a", **extra: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Cell", "metadata": {"name": name}, "spec": {"zone": zone}, **extra}


def app(spec: dict[str, Any] | None = None, name: str = "shop", **extra: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "AppService", "metadata": {"name": name},
            "spec": spec if spec is not None else {"replicas": 2, "template": TEMPLATE}, **extra}


def with_template(**fields: Any) -> dict[str, Any]:
    """An AppService whose template is the minimal one plus `fields`."""
    return app({"replicas": 1, "template": {**TEMPLATE, **fields}})


def problems_of(documents: list[Any]) -> list[FieldProblem]:
    with pytest.raises(InvalidInput) as caught:
        parse_documents(documents)
    assert "nothing was applied" in caught.value.message
    return caught.value.problems


def test_cell_parses_to_a_typed_manifest() -> None:
    """A Cell document with a zone parses and keeps its labels."""
    [parsed] = parse_documents([{**cell(), "metadata": {"name": "cell-a", "labels": {"tier": "gold"}}}])
    assert isinstance(parsed, CellManifest)
    assert (parsed.metadata.name, parsed.spec.zone, parsed.metadata.labels) == ("cell-a", "zone-a", {"tier": "gold"})


def test_appservice_with_cells_form() -> None:
    """`cells:` gives instance counts per cell and leaves replicas unset."""
    [parsed] = parse_documents([app({"cells": {"cell-a": 3, "cell-b": 0}, "template": TEMPLATE})])
    assert isinstance(parsed, AppServiceManifest)
    assert parsed.spec.cells == {"cell-a": 3, "cell-b": 0}
    assert parsed.spec.replicas is None


def test_appservice_with_replicas_form_fills_defaults_under_public_names() -> None:
    """`replicas:` parses, and the stored spec uses the public (aliased) names with defaults filled."""
    [parsed] = parse_documents([app({"replicas": 4, "template": {
        **TEMPLATE, "port": 8080, "env": {"MODE": "prod"}, "healthCheck": {"path": "/healthz"},
        "resources": {"cpu": "250m", "memory": "128Mi"}}})])
    assert isinstance(parsed, AppServiceManifest)
    assert parsed.spec.replicas == 4 and parsed.spec.cells is None
    stored = spec_json(parsed)
    assert stored["template"]["healthCheck"]["periodSeconds"] == 2.0
    assert stored["template"]["gracePeriodSeconds"] == 10.0
    assert stored["template"]["port"] == 8080
    assert parsed.spec.template.resources.request().cpu_millis == 250


def test_cell_and_app_with_the_same_name_are_not_duplicates() -> None:
    """Names are unique per kind, so a Cell and an AppService may share one."""
    assert len(parse_documents([cell(name="shop"), app(name="shop")])) == 2


INVALID = [
    pytest.param(app(kind="Deployment"), "items[0].kind", "Deployment", "one of AppService, Cell", id="unknown-kind"),
    pytest.param({k: v for k, v in app().items() if k != "kind"}, "items[0].kind", None, "one of AppService, Cell",
                 id="missing-kind"),
    pytest.param(app(apiVersion="apps/v1"), "items[0].apiVersion", "apps/v1", "'ballast.io/v1alpha1'",
                 id="wrong-apiVersion"),
    pytest.param({**cell(), "metadata": {}}, "items[0].metadata.name", None, "a value: this field is required", id="missing-name"),
    pytest.param(app(name="Shop_1"), "items[0].metadata.name", "Shop_1", "String should match pattern",
                 id="bad-name-pattern"),
    pytest.param(app({"replicas": 1, "template": {}}), "items[0].spec.template.command", None, "a value: this field is required",
                 id="missing-command"),
    pytest.param(app({"replicas": 1, "template": {"command": []}}), "items[0].spec.template.command", [],
                 "at least 1 item", id="empty-command"),
    pytest.param(app({"replicas": "ten", "template": TEMPLATE}), "items[0].spec.replicas", "ten",
                 "valid integer", id="replicas-wrong-type"),
    pytest.param(app({"replicas": -1, "template": TEMPLATE}), "items[0].spec.replicas", -1,
                 "greater than or equal to 0", id="negative-replicas"),
    pytest.param(app({"cells": {"cell-a": -2}, "template": TEMPLATE}), "items[0].spec.cells.cell-a", -2,
                 "greater than or equal to 0", id="negative-cell-count"),
    pytest.param(app({"cells": {"cell-a": 1}, "replicas": 1, "template": TEMPLATE}), "items[0].spec",
                 {"cells": {"cell-a": 1}, "replicas": 1, "template": TEMPLATE}, "give cells or replicas, not both",
                 id="both-cells-and-replicas"),
    pytest.param(app({"template": TEMPLATE}), "items[0].spec", {"template": TEMPLATE},
                 "give either cells (instances per cell) or replicas", id="neither-cells-nor-replicas"),
    pytest.param(with_template(port=80), "items[0].spec.template.port", 80, "greater than or equal to 1024",
                 id="port-below-1024"),
    pytest.param(with_template(port=70000), "items[0].spec.template.port", 70000, "less than or equal to 65535",
                 id="port-above-65535"),
    pytest.param(with_template(env={"1BAD": "x"}), "items[0].spec.template.env", {"1BAD": "x"},
                 "environment variable name '1BAD' must match [A-Za-z_][A-Za-z0-9_]*", id="env-name-invalid"),
    pytest.param(with_template(env={"PORT": "9000"}), "items[0].spec.template.env", {"PORT": "9000"},
                 "environment variable 'PORT' is set by Ballast and cannot be overridden", id="env-overrides-PORT"),
    pytest.param(with_template(env={"BALLAST_NODE": "x"}), "items[0].spec.template.env", {"BALLAST_NODE": "x"},
                 "is set by Ballast and cannot be overridden", id="env-overrides-BALLAST_"),
    pytest.param(with_template(healthCheck={"path": "healthz"}), "items[0].spec.template.healthCheck.path", "healthz",
                 "String should match pattern '^/'", id="healthcheck-path-relative"),
    pytest.param(with_template(resources={"cpu": "abc"}), "items[0].spec.template.resources.cpu", "abc",
                 "invalid cpu 'abc': expected cores such as \"1\" or \"0.5\", or millicores such as \"250m\"",
                 id="cpu-not-a-quantity"),
    pytest.param(with_template(resources={"memory": "12Qi"}), "items[0].spec.template.resources.memory", "12Qi",
                 "unknown unit 'Qi'", id="memory-unknown-unit"),
    pytest.param(with_template(artifact="sha256:" + "ab" * 32, workingDir="../../etc"), "items[0].spec.template.workingDir",
                 "../../etc", "a relative path inside the artifact (no '..', not absolute)", id="workingDir-dotdot"),
    pytest.param(with_template(artifact="sha256:" + "ab" * 32, workingDir="/etc"), "items[0].spec.template.workingDir", "/etc",
                 "a relative path inside the artifact (no '..', not absolute)", id="workingDir-absolute"),
    pytest.param(with_template(workingDir="app"), "items[0].spec.template", {**TEMPLATE, "workingDir": "app"},
                 "workingDir is a directory inside the artifact: give template.artifact too",
                 id="workingDir-without-artifact"),
    pytest.param(with_template(env={f"V{k}": "x" * 32_000 for k in range(40)}), "items[0].spec.template",
                 {**TEMPLATE, "env": {f"V{k}": "x" * 32_000 for k in range(40)}},
                 "at most 1,048,576 (what a new process can be given", id="exec-too-large"),
    pytest.param(with_template(image="shop:1"), "items[0].spec.template.image", "shop:1", "Extra inputs are not permitted",
                 id="unknown-field"),
    pytest.param(with_template(command=["python\x00"]), "items[0].spec.template.command[0]", "python\x00",
                 "text without NUL characters or unpaired surrogates", id="NUL-in-command"),
    pytest.param(with_template(env={"MODE": "\ud800"}), "items[0].spec.template.env.MODE", "\ud800",
                 "text without NUL characters or unpaired surrogates", id="lone-surrogate-in-env"),
    pytest.param({**cell(), "metadata": {"name": "cell-a", "labels": {"\udc00": "x"}}}, "items[0].metadata.labels.\udc00",
                 "\udc00", "text without NUL characters or unpaired surrogates", id="lone-surrogate-in-label-key"),
    pytest.param(app({"replicas": 1, "template": TEMPLATE, "expose": {"host": "Shop.Local"}}),
                 "items[0].spec.expose[0].host", "Shop.Local", "String should match pattern", id="expose-host-case"),
    pytest.param(app({"replicas": 1, "template": TEMPLATE, "expose": {"host": "shop.local", "path": "api"}}),
                 "items[0].spec.expose[0].path", "api", "String should match pattern", id="expose-path-relative"),
    pytest.param(app({"replicas": 1, "template": TEMPLATE, "expose": {"host": "shop.local", "path": "/a b"}}),
                 "items[0].spec.expose[0].path", "/a b", "String should match pattern", id="expose-path-space"),
    pytest.param(app({"replicas": 1, "template": TEMPLATE, "expose": {"host": "shop.local", "path": "/a//b"}}),
                 "items[0].spec.expose[0].path", "/a//b", "without empty segments", id="expose-path-empty-segment"),
    pytest.param(app({"replicas": 1, "template": TEMPLATE, "expose": {"host": "s.local", "port": 80}}),
                 "items[0].spec.expose[0].port", 80, "Extra inputs are not permitted", id="expose-unknown-field"),
    pytest.param(app({"replicas": 1, "template": TEMPLATE, "expose": [{"host": "s.local"}, {"host": "s.local",
                                                                                               "path": "/"}]}),
                 "items[0].spec", {"replicas": 1, "template": TEMPLATE, "expose": [{"host": "s.local"},
                                                                                   {"host": "s.local", "path": "/"}]},
                 "the same host and path twice", id="expose-duplicate-route"),
    pytest.param(app({"replicas": 1, "template": TEMPLATE, "traffic": {"components": ["gateway"]}}),
                 "items[0].spec", {"replicas": 1, "template": TEMPLATE, "traffic": {"components": ["gateway"]}},
                 "no expose route", id="gateway-without-expose"),
    pytest.param(app({"replicas": 1, "template": TEMPLATE, "traffic": {"components": ["lb"]}}),
                 "items[0].spec.traffic.components[0]", "lb", "'gateway' or 'mesh'", id="unknown-component"),
    pytest.param(app({"replicas": 1, "template": TEMPLATE, "traffic": {"drainTimeoutSeconds": 0}}),
                 "items[0].spec.traffic.drainTimeoutSeconds", 0, "greater than 0", id="drain-timeout-zero"),
    pytest.param(["not", "a", "mapping"], "items[0]", ["not", "a", "mapping"],
                 "a mapping with apiVersion, kind, metadata, spec", id="list-document"),
    pytest.param("kind: Cell", "items[0]", "kind: Cell", "a mapping with apiVersion, kind, metadata, spec",
                 id="string-document"),
    pytest.param(None, "items[0]", None, "a mapping with apiVersion, kind, metadata, spec", id="null-document"),
]


@pytest.mark.parametrize(("document", "path", "value", "expected"), INVALID)
def test_invalid_document_names_path_value_and_expectation(document: Any, path: str, value: Any, expected: str) -> None:
    """Each invalid document yields a problem at the exact field path, with the offending value and what was expected."""
    problems = problems_of([document])
    matching = [p for p in problems if p.path == path]
    assert matching, f"no problem at {path}; got {problems}"
    assert matching[0].value == value
    assert expected in matching[0].expected
    assert f"{path}: got {value!r}, expected" in matching[0].render()


def test_duplicate_names_in_one_file_point_at_the_first_use() -> None:
    """Two AppServices named "shop" in one file: the second is refused, naming the first."""
    [problem] = problems_of([app(), app()])
    assert problem == FieldProblem("items[1].metadata.name", "shop", "a name not already used by items[0] (AppService)")


def test_all_problems_of_all_documents_are_reported_together() -> None:
    """Problems from several documents come back in one error, in document order, none dropped."""
    problems = problems_of([
        cell(),
        app(kind="Deployment"),
        app({"replicas": -1, "template": {**TEMPLATE, "port": 80}}, name="pay"),
        "junk",
        app(name="pay"),
    ])
    assert [p.path for p in problems] == [
        "items[1].kind",
        "items[2].spec.replicas",
        "items[2].spec.template.port",
        "items[3]",
    ]


def test_source_prefix_is_used_in_paths() -> None:
    """Callers may name the list the documents came from, and paths use that name."""
    with pytest.raises(InvalidInput) as caught:
        parse_documents([cell(zone="Zone A")], source="shop.yaml")
    assert [p.path for p in caught.value.problems] == ["shop.yaml[0].spec.zone"]


def test_expose_takes_one_route_or_a_list_and_defaults_the_components() -> None:
    """`expose: {host, path}` is one route; the default components are mesh plus gateway when exposed."""
    [one] = parse_documents([app({"replicas": 1, "template": TEMPLATE, "expose": {"host": "shop.local"}})])
    assert isinstance(one, AppServiceManifest)
    assert [(r.host, r.path) for r in one.spec.expose or []] == [("shop.local", "/")]
    assert one.spec.traffic_components() == {"mesh", "gateway"}
    [plain] = parse_documents([app()])
    assert isinstance(plain, AppServiceManifest) and plain.spec.traffic_components() == {"mesh"}
    policy = plain.spec.traffic_policy()
    assert (policy.drain, policy.drain_timeout_seconds, policy.ack_timeout_seconds) == (True, 30.0, 30.0)
