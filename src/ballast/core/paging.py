"""Paged lists, like Kubernetes': `limit` items at a time, and an opaque `continue` token for the next page.

A list is read in a stable key order (instances by app, cell and id; audit records by seq); a page ends at some
key, and the token says "go on after this key, with these filters". It is base64url JSON, `{"l": LIST, "k": KEY,
"f": FILTERS}`: not secret and not signed — a reader may forge one, but all it can name is a position in a list
it may read anyway (authorization is applied to every page, not carried in the token). A token that does not
decode, or that was made for another list or other filters, is refused (400) naming the field `continue`.

Pages are not a snapshot: the store has no MVCC snapshot to hold open between requests, so each page shows the
store as it is when that page is read. Because the key order is stable and each page starts strictly after the
last key returned, an item is never returned twice, and an item that existed throughout is never skipped; one
created or deleted meanwhile may or may not appear, depending on where its key falls.

Pure: no I/O. The routes decode the token, the services read `key > after` in key order, `cut()` decides
whether a next page exists.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Generic, Mapping, Sequence, TypeVar

from ballast.errors import BadRequest, FieldProblem

T = TypeVar("T")
Key = tuple[Any, ...]
FIELD = "continue"
MAX_TOKEN = 2048          # a token of ours is far shorter; a longer one is refused before decoding


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page: its items, and the key of its last item when more follow (None: this is the last page)."""
    items: tuple[T, ...]
    next_after: Key | None


def cut(rows: Sequence[T], limit: int | None, key: Any) -> Page[T]:
    """A page of `rows` read with `limit + 1` (so that one more row says a next page exists); `key(row)` is the
    row's key in list order. `limit` None: everything, no next page."""
    if limit is None or len(rows) <= limit:
        return Page(tuple(rows), None)
    kept = tuple(rows[:limit])
    return Page(kept, tuple(key(kept[-1])))


def encode(list_name: str, after: Key, filters: Mapping[str, Any]) -> str:
    """The token for the page after key `after` of `list_name` read with `filters` (None values left out)."""
    body = {"l": list_name, "k": list(after), "f": _canonical(filters)}
    raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str, list_name: str, filters: Mapping[str, Any], shape: Sequence[type]) -> Key:
    """The key a token goes on after, checked against this request: the same list, the same filters, and a key
    of `shape` (its members' types in order). Anything else is BadRequest naming `continue`."""
    body = _body(token)
    key = body.get("k")
    if not (isinstance(key, list) and len(key) == len(shape)
            and all(type(v) is t for v, t in zip(key, shape))):   # noqa: E721 (bool is no int here)
        raise _refused(token, f"a token from the previous page's metadata.continue of {list_name}")
    if body.get("l") != list_name:
        raise _refused(token, f"a token of the {list_name} list; this one was made for the {body.get('l')!r} list")
    made_for = body.get("f")
    wanted = _canonical(filters)
    if made_for != wanted:
        raise _refused(token, f"a token made for the same filters as this request: it was made for "
                       f"{_show(made_for)}, this request has {_show(wanted)}")
    return tuple(key)


def _body(token: str) -> dict[str, Any]:
    if len(token) > MAX_TOKEN:
        raise _refused(token, "a token from the previous page's metadata.continue (this one is far too long)")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _refused(token, "a token from the previous page's metadata.continue (this one does not decode)") from None
    if not isinstance(body, dict):
        raise _refused(token, "a token from the previous page's metadata.continue (this one does not decode)")
    return body


def _canonical(filters: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sorted(filters.items()) if v is not None}


def _show(filters: Any) -> str:
    if not isinstance(filters, dict) or not filters:
        return "no filters"
    return ", ".join(f"{k}={v!r}" for k, v in filters.items())


def _refused(token: str, expected: str) -> BadRequest:
    return BadRequest(f"invalid continue token: expected {expected}", problems=[FieldProblem(FIELD, token, expected)])
