"""The current color and which outbound calls carry it."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import pytest

from ballast.sdk import (Color, apply_color, current_color, is_mesh_url, mesh_url, outbound_headers, parse_baggage,
                         use_color, with_tags)

MESH = "http://127.128.21.2:20001"


@pytest.mark.parametrize(("url", "mesh", "through"), [
    (MESH + "/orders?x=1", MESH, True),
    (MESH, MESH, True),
    (MESH + "/", MESH + "/", True),
    ("HTTP://127.128.21.2:20001/x", MESH, True),
    ("http://127.128.21.2:200011/x", MESH, False),      # a longer port is another listener
    ("http://127.128.21.2:20001.evil.example/x", MESH, False),
    ("http://127.128.21.2:20002/x", MESH, False),
    ("https://127.128.21.2:20001/x", MESH, False),
    ("http://api.example.com/x", MESH, False),
    ("http://user@127.128.21.2:20001/x", MESH, True),
    ("http://mesh.local/x", "http://mesh.local:80", True),  # default ports are equal
    ("http://h:1/svc/x", "http://h:1/svc", True),
    ("http://h:1/svcx", "http://h:1/svc", False),
    ("http://h:notaport/x", "http://h:1", False),
    ("/relative", MESH, False),
])
def test_is_mesh_url(url: str, mesh: str, through: bool) -> None:
    assert is_mesh_url(url, mesh) is through


def test_outbound_headers_only_with_a_color_and_only_through_the_mesh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BALLAST_MESH_URL", raising=False)
    assert outbound_headers() == {}  # no color
    with use_color("env=gray"):
        assert outbound_headers() == {"baggage": "env=gray"}             # the caller says it goes through the mesh
        assert outbound_headers(MESH + "/x") == {}                       # no mesh known: nowhere is the mesh
        assert outbound_headers(MESH + "/x", mesh=MESH) == {"baggage": "env=gray"}
        monkeypatch.setenv("BALLAST_MESH_URL", MESH)                     # read at call time
        assert mesh_url() == MESH
        assert outbound_headers(MESH + "/x") == {"baggage": "env=gray"}
        assert outbound_headers("https://payments.example.com/charge") == {}
        assert outbound_headers(MESH, color=Color(a="1")) == {"baggage": "a=1"}


def test_apply_color_keeps_a_callers_header_and_strips_the_color_off_the_mesh() -> None:
    with use_color("env=gray"):
        headers: dict[str, str] = {}
        apply_color(headers, MESH + "/x", mesh=MESH)
        assert headers == {"baggage": "env=gray"}
        apply_color(headers, "http://elsewhere.example/", mesh=MESH)   # a redirect out of the mesh
        assert headers == {}
        own = {"baggage": "trace=1"}
        apply_color(own, MESH, mesh=MESH)
        apply_color(own, "http://elsewhere.example/", mesh=MESH)
        assert own == {"baggage": "trace=1"}


def test_use_color_and_with_tags_nest_and_restore() -> None:
    assert not current_color()
    with use_color(["env=gray", "biz=a"]) as outer:
        assert current_color() is outer and dict(outer) == {"env": "gray", "biz": "a"}
        with with_tags(biz="b", lane="x") as inner:
            assert current_color() is inner and dict(inner) == {"env": "gray", "biz": "b", "lane": "x"}
        assert current_color() is outer
    assert not current_color()
    with pytest.raises(ValueError):
        with with_tags(lane="not a tag"):
            pass


async def test_concurrent_tasks_do_not_see_each_others_color() -> None:
    seen: dict[str, str] = {}
    both_set = asyncio.Barrier(2)

    async def serve(name: str) -> None:
        with use_color(f"who={name}"):
            await both_set.wait()  # both colors are set before either is read
            seen[name] = outbound_headers()["baggage"]

    await asyncio.gather(serve("a"), serve("b"))
    assert seen == {"a": "who=a", "b": "who=b"} and not current_color()


def test_threads_do_not_see_each_others_color() -> None:
    seen: list[Color] = []
    with use_color("who=main"):
        worker = threading.Thread(target=lambda: seen.append(current_color()))
        worker.start()
        worker.join(5)
    assert seen == [Color()]


def test_the_core_and_middleware_import_only_the_standard_library() -> None:
    """What an app vendors (the demo artifact does): nothing outside the standard library is loaded."""
    code = ("import sys\nbefore = set(sys.modules)\n"
            "import ballast.sdk, ballast.sdk.asgi, ballast.sdk.wsgi, ballast.sdk.urllib, ballast.sdk.httpx, "
            "ballast.sdk.requests\n"
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.strip() == "['ballast']"


def test_parse_accepts_what_a_server_hands_over() -> None:
    assert parse_baggage(()) == Color() and parse_baggage("") == Color()
