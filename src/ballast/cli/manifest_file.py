"""Reading a manifest file: YAML documents, within limits that a hostile or mistaken file cannot exceed.

A file is a person's input: it may be binary, huge, nested thousands deep, or a few hundred bytes of aliases
that expand to billions of nodes ("billion laughs"). Each is refused quickly with one line that says what is
wrong, before anything is sent to the control plane. The limits are far above any real manifest.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_BYTES = 8 * 2**20          # the whole file
MAX_DEPTH = 64                 # mappings and lists inside each other
MAX_NODES = 200_000            # every value, with each alias counted as often as it is used


class ManifestFileError(Exception):
    """The file cannot be read as manifests; the message names the file and why."""


def read_documents(data: bytes, source: str) -> list[Any]:
    """The non-empty YAML documents of `data`, or ManifestFileError."""
    if len(data) > MAX_BYTES:
        raise ManifestFileError(f"{source} is larger than {MAX_BYTES:,} bytes, the most a manifest file may hold")
    if b"\0" in data:
        raise ManifestFileError(f"{source} is a binary file (it holds NUL bytes), not YAML")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestFileError(f"{source} is not UTF-8 text (byte {exc.start}): a binary file?") from None
    try:
        roots = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        for root in roots:
            if root is not None:
                _check_size(root, source)
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except RecursionError:
        raise ManifestFileError(f"{source} is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except yaml.YAMLError as exc:
        raise ManifestFileError(f"{source} is not valid YAML: {exc}") from None
    if not docs:
        raise ManifestFileError(f"{source} holds no documents")
    return docs


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def _check_size(root: Node, source: str) -> None:
    """Depth and expanded size of one document's node graph (aliases share nodes: sizes are memoised by node,
    so a bomb is measured without being expanded)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    # Iterative post-order walk: (node, depth, children done?)
    stack: list[tuple[Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[key] > MAX_NODES:
                raise ManifestFileError(f"{source} expands to more than {MAX_NODES:,} values (aliases included): "
                                        "refused as an alias bomb")
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise ManifestFileError(f"{source} holds a recursive alias (a value that contains itself)")
        if depth > MAX_DEPTH:
            raise ManifestFileError(f"{source} is nested too deeply (at most {MAX_DEPTH} levels)")
        open_nodes.add(key)
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in _children(node) if id(c) not in sizes)
