"""W3C baggage as ballast.sdk reads and writes it: forgiving in, always valid out."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ballast.sdk import MAX_BYTES, MAX_MEMBERS, Color, Member, format_baggage, parse_baggage


@pytest.mark.parametrize(("header", "expected"), [
    ("env=gray,biz=replenish", {"env": "gray", "biz": "replenish"}),
    (" env = gray \t,\tbiz=replenish ", {"env": "gray", "biz": "replenish"}),           # OWS around everything
    ("env=gray,,  ,biz=x,", {"env": "gray", "biz": "x"}),                             # empty members
    ("env=gray,env=blue", {"env": "blue"}),                                           # the last one wins
    ("k=a%20b%2C%3B%25", {"k": "a b,;%"}),                                            # percent-decoding
    ("k=%E2%9C%93", {"k": "\u2713"}),                                                 # UTF-8
    ("k=%FF", {"k": "\ufffd"}),                                                       # not UTF-8: U+FFFD
    ("k=", {"k": ""}),                                                                # an empty value
    ("novalue,=x,bad key=1,k=\"q\",k2=a b,ok=1", {"ok": "1"}),                         # malformed: dropped
    ("k=v;p=1;bad key", {}),                                                          # a malformed property
    ("", {}),
])
def test_parse(header: str, expected: dict[str, str]) -> None:
    assert dict(parse_baggage(header)) == expected


def test_several_header_lines_are_one_list() -> None:
    assert dict(parse_baggage(["a=1,b=2", "b=3", "c=4"])) == {"a": "1", "b": "3", "c": "4"}


def test_properties_are_kept_with_their_member() -> None:
    color = parse_baggage("k=v ; p1 ; p2 = x,j=w")
    assert color.members == (Member("k", "v", ("p1", "p2=x")), Member("j", "w"))
    assert format_baggage(color) == "k=v;p1;p2=x,j=w"


def test_a_repeated_key_keeps_its_first_place_and_its_last_value_and_properties() -> None:
    color = parse_baggage("a=1;p,b=2,a=3")
    assert color.members == (Member("a", "3"), Member("b", "2"))


@pytest.mark.parametrize(("color", "header"), [
    (Color(env="gray", biz="replenish"), "env=gray,biz=replenish"),
    (Color({"k": "a b,c;d%e\"f\\g"}), "k=a%20b%2Cc%3Bd%25e%22f%5Cg"),   # all but baggage-octets are encoded
    (Color({"k": "\u2713"}), "k=%E2%9C%93"),
    (Color(), ""),
])
def test_format(color: Color, header: str) -> None:
    assert format_baggage(color) == header
    assert parse_baggage(header) == color


def test_at_most_180_members_the_first_ones_kept() -> None:
    color = parse_baggage(",".join(f"k{i}=v" for i in range(MAX_MEMBERS + 20)))
    assert len(color) == MAX_MEMBERS and list(color)[-1] == f"k{MAX_MEMBERS - 1}"
    assert len(Color((f"k{i}", "v") for i in range(500))) == MAX_MEMBERS


def test_at_most_8192_bytes_members_dropped_from_the_end() -> None:
    value = "v" * 1000
    color = parse_baggage(",".join(f"k{i}={value}" for i in range(20)))
    header = format_baggage(color)
    assert len(header.encode()) <= MAX_BYTES < len(header) + len(f",k8={value}")
    assert list(color) == [f"k{i}" for i in range(8)]
    # Percent-encoding counts: three bytes a space.
    assert len(format_baggage(Color(k=" " * 5000))) == 0


def test_exactly_8192_bytes_fit() -> None:
    header = "k=" + "v" * (MAX_BYTES - 2)
    assert format_baggage(parse_baggage(header)) == header
    assert len(parse_baggage(header + "v")) == 0


def test_a_color_is_an_immutable_mapping() -> None:
    color = Color(a="1")
    with pytest.raises(AttributeError):
        color._members = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        color["b"] = "2"  # type: ignore[index]
    assert color == {"a": "1"} and hash(color) == hash(Color(a="1"))
    assert parse_baggage("a=1;p") != parse_baggage("a=1")  # properties count between colors


def test_with_tags_adds_or_replaces_ballast_tags() -> None:
    color = parse_baggage("env=gray;p,other=x").with_tags({"biz.unit": "re-plen_1"}, env="blue")
    assert format_baggage(color) == "env=blue,other=x,biz.unit=re-plen_1"


@pytest.mark.parametrize(("key", "value"), [("", "v"), ("a b", "v"), ("k" * 64, "v"), ("k", ""), ("k", "a,b"),
                                            ("k", "v" * 254), ("k", "\u2713")])
def test_with_tags_refuses_what_ballast_rules_cannot_match(key: str, value: str) -> None:
    with pytest.raises(ValueError):
        Color().with_tags({key: value})


def test_a_color_made_in_code_refuses_a_key_that_is_no_token() -> None:
    with pytest.raises(ValueError, match="token"):
        Color({"a b": "1"})


keys = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
               min_size=1, max_size=20)
properties = st.lists(st.one_of(keys, st.builds(lambda k, v: f"{k}={v}", keys, st.from_regex(
    r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*", fullmatch=True))), max_size=3).map(tuple)
members = st.builds(Member, keys, st.text(max_size=300), properties)


@given(st.lists(members, max_size=250))
def test_format_parse_round_trip(given_members: list[Member]) -> None:
    color = Color.of(given_members)
    header = format_baggage(color)
    assert len(header.encode()) <= MAX_BYTES and len(color) <= MAX_MEMBERS
    assert parse_baggage(header) == color
    assert format_baggage(parse_baggage(header)) == header


@given(st.text(max_size=500))
def test_parsing_anything_never_raises_and_yields_a_valid_header(header: str) -> None:
    color = parse_baggage(header)
    assert parse_baggage(format_baggage(color)) == color
