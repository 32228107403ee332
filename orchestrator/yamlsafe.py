"""YAML for files a user (or an attacker) wrote: safe, strict and bounded.

On top of ``yaml.SafeLoader``: a key given twice in one mapping is an error naming both
lines (PyYAML keeps the last one silently); nesting deeper than ``MAX_DEPTH`` is refused
before Python's recursion limit is near; and the document's size *with every alias
expanded* is counted on the composed node graph before anything is built, so an alias bomb
(a few lines that expand to billions of nodes) is refused in linear time and memory.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from orchestrator.errors import ConfigError

MAX_DEPTH = 64  # no study nests deeper than a handful of levels
MAX_EXPANDED_NODES = 200_000  # aliases expanded; a large real study is a few thousand
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    def __init__(self, stream: str, origin: str) -> None:
        super().__init__(stream)
        self._origin = origin
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise ConfigError(
                    f"{self._origin}: nested more than {MAX_DEPTH} levels deep at line {mark.line + 1}; "
                    "a study never needs that"
                )
            node: Node | None = super().compose_node(parent, index)
            return node
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                continue  # merge keys (<<: *anchor) may be overridden on purpose
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"{self._origin}: key '{key}' appears twice in one mapping (lines {seen[key]} and {line}); keep one"
                )
            seen[key] = line
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def expanded_size(root: Node, limit: int) -> int:
    """Nodes in the document with every alias expanded (each reference counts its whole subtree),
    counted once per distinct node; stops as soon as the count passes ``limit``."""
    sizes: dict[int, int] = {}
    # Iterative post-order: a deep or wide graph never recurses.
    stack: list[tuple[Node, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if not done:
            if key in on_path:  # a recursive alias: infinite when expanded
                return limit + 1
            on_path.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        on_path.discard(key)
        total = 1 + sum(sizes.get(id(child), limit + 1) for child in children)
        sizes[key] = min(total, limit + 1)
        if total > limit and node is root:
            return total
    return sizes[id(root)]


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load(text: str, origin: str, max_nodes: int = MAX_EXPANDED_NODES) -> Any:
    """Parse ``text`` (from ``origin``, for messages); ConfigError for what this module refuses,
    yaml.YAMLError for syntax errors."""
    loader = _StrictLoader(text, origin)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        size = expanded_size(root, max_nodes)
        if size > max_nodes:
            raise ConfigError(
                f"{origin}: the YAML expands to more than {max_nodes:,} nodes once its aliases are followed "
                "(an alias bomb?); refused before building it"
            )
        return loader.construct_document(root)
    finally:
        loader.dispose()
