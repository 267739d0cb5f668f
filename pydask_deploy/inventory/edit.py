"""Edit an inventory's ``all.vars`` the way ``upgrade --set KEY=VALUE`` records a change.

The file is edited through ruamel.yaml's round-trip mode, which keeps its comments, key
order, quoting, anchors and flow or block style; this is the one module that imports it.
The edit is validated as a whole inventory before the file is written, and it is written in
one step (a temporary file, then rename), so a bad value never lands.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import os
import re
import tempfile
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark
from ruamel.yaml.error import YAMLError as RoundTripError
from ruamel.yaml.scalarstring import SingleQuotedScalarString
from ruamel.yaml.tokens import CommentToken

from pydask_deploy.errors import UsageError
from pydask_deploy.inventory.load import load_inventory
from pydask_deploy.inventory.model import Inventory
from pydask_deploy.inventory.variables import VAR_TYPES, known_variables


def parse_setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> (key, value): KEY a known ``dask_*`` variable, VALUE read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"--set takes KEY=VALUE, got {text!r}")
    known = known_variables()
    if key not in known:
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        raise UsageError(f"--set: unknown variable `{key}`{hint}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise UsageError(f"--set {key}: the value {raw!r} is not valid YAML ({exc})") from None
    check = VAR_TYPES.get(key)
    problem = check(value) if check else None
    if problem:
        raise UsageError(f"--set: `{key}` {problem}, got {raw!r}")
    return key, value


def flow(value: object) -> str:
    """A value as one line of YAML: ``[scikit-learn, six]``, ``'2026.8.0'``, ``false``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()


# --------------------------------------------------------------------------- reading back


class _AnsibleReader(yaml.SafeLoader):
    """PyYAML as Ansible reads an inventory; its tags (``!vault``, ``!unsafe``) kept as pairs."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> object:
    if isinstance(node, yaml.ScalarNode):
        return ("!" + suffix, node.value)
    if isinstance(node, yaml.SequenceNode):
        return ("!" + suffix, loader.construct_sequence(node, deep=True))
    return ("!" + suffix, loader.construct_mapping(node, deep=True))  # type: ignore[arg-type]


_AnsibleReader.add_multi_constructor("!", _tagged)


def _read(text: str) -> object:
    """What Ansible sees in ``text`` (YAML 1.1, as PyYAML reads it)."""
    return yaml.load(text, Loader=_AnsibleReader)  # a SafeLoader: no arbitrary objects


def _with_settings(data: object, settings: Mapping[str, object]) -> object:
    """``data`` (as ``_read`` gives it) with ``settings`` in ``all.vars``: what an edit means."""
    if not isinstance(data, dict):
        data = {}
    group = data.get("all")
    if not isinstance(group, dict):
        group = data["all"] = {}
    variables = group.get("vars")
    if not isinstance(variables, dict):
        variables = group["vars"] = {}
    variables.update(settings)
    return data


# --------------------------------------------------------------------------- round trip


def _reads_back(text: str) -> bool:
    """Whether ``text`` written bare (a plain scalar) is read by Ansible as this string."""
    try:
        return bool(yaml.safe_load(text) == text)
    except yaml.YAMLError:
        return False


def _node(value: object) -> object:
    """``value`` as ruamel.yaml writes it: collections in flow style, on the key's line.

    ruamel.yaml writes YAML 1.2, where ``yes`` or ``on`` are plain strings; Ansible reads
    YAML 1.1, where they are booleans. A string Ansible would misread is written quoted.
    """
    if isinstance(value, Mapping):
        mapping = CommentedMap((k, _node(v)) for k, v in value.items())
        mapping.fa.set_flow_style()
        return mapping
    if isinstance(value, list | tuple):
        sequence = CommentedSeq(_node(v) for v in value)
        sequence.fa.set_flow_style()
        return sequence
    if isinstance(value, str) and not _reads_back(value):
        return SingleQuotedScalarString(value)
    return value


def _last(node: CommentedMap | CommentedSeq) -> object:
    """The key (or index) of a collection's last entry."""
    return next(reversed(node)) if isinstance(node, CommentedMap) else len(node) - 1


def _trailing(node: object) -> tuple[list[CommentToken | None], int] | None:
    """Where the comment after a block collection is held: (comment entry, slot), or None.

    ruamel.yaml hangs the comment lines and blank lines that follow a block on its deepest
    last entry, so they go wherever that entry goes.
    """
    if not isinstance(node, CommentedMap | CommentedSeq) or node.fa.flow_style() or not node:
        return None
    last = _last(node)
    deeper = _trailing(node[last])
    if deeper is not None:
        return deeper
    slot = 2 if isinstance(node, CommentedMap) else 0  # after the value, after the item
    entry = node.ca.items.get(last)
    if entry and entry[slot] is not None:
        return entry, slot
    return None


def _take_tail(node: object) -> str:
    """Remove the whole lines (comments, blank lines) after a block collection; their text.

    The comment on the end of its last line stays where it is.
    """
    found = _trailing(node)
    if found is None:
        return ""
    entry, slot = found
    token = entry[slot]
    assert token is not None
    end = token.value.find("\n")
    if end < 0:
        return ""
    tail = token.value[end + 1 :]
    if end == 0:
        entry[slot] = None  # nothing left on the line itself
    else:
        token.value = token.value[: end + 1]
    return tail


def _hang(mapping: CommentedMap, key: object, tail: str) -> None:
    """Put whole comment lines ``tail`` after ``mapping[key]``'s line, below its own comment."""
    if not tail:
        return
    entry = mapping.ca.items.setdefault(key, [None, None, None, None])
    own = entry[2]
    text = own.value if own is not None else "\n"
    if not text.endswith("\n"):
        text += "\n"
    mark = own.start_mark if own is not None else CommentMark(0)
    entry[2] = CommentToken(text + tail, mark)


def _set(variables: CommentedMap, key: str, value: object) -> None:
    """``variables[key] = value`` in place, or added last; the lines after a block kept after it.

    A replaced block value (a list one item a line) and the last entry before a new key are
    followed by what closed them (a blank line, a comment about the next section): those
    lines stay below the value that now takes their place.
    """
    flow_style = variables.fa.flow_style()
    if key in variables:
        tail = "" if flow_style else _take_tail(variables[key])
        variables[key] = _node(value)
    else:
        tail = "" if flow_style else _take_tail(variables)
        variables[key] = _node(value)
    _hang(variables, key, tail)


def _indents(text: str) -> tuple[int, int, int]:
    """(mapping, sequence, dash offset) indentation as the file writes it, for ruamel.yaml.

    ruamel.yaml writes one indentation for a whole file; taking the file's own keeps the
    lines that were not edited as they were.
    """
    mapping: int | None = None
    sequence: tuple[int, int] | None = None
    parent: int | None = None  # indentation of the last `key:` line with its value below
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        lead = len(line) - len(line.lstrip(" "))
        if parent is not None and lead > parent:
            if stripped.startswith("- ") and sequence is None:
                item = lead + 2 + len(stripped[2:]) - len(stripped[2:].lstrip(" "))
                sequence = (item - parent, lead - parent)
            elif not stripped.startswith("-") and mapping is None:
                mapping = lead - parent
        parent = lead if re.search(r":\s*(#.*)?$", stripped) else None
        if mapping is not None and sequence is not None:
            break
    width = mapping or 2
    seq, offset = sequence or (width, 0)
    return width, max(seq, offset + 2), offset


def _round_trip(text: str, settings: Mapping[str, object]) -> str | None:
    """``text`` with ``settings`` in ``all.vars`` through ruamel.yaml, or None if it cannot."""
    rt = YAML(typ="rt")
    rt.preserve_quotes = True
    rt.width = 1 << 30  # never fold a long value (an ssh ProxyCommand) onto two lines
    mapping, sequence, offset = _indents(text)
    rt.indent(mapping=mapping, sequence=sequence, offset=offset)
    rt.explicit_start = bool(re.match(r"(?:[ \t]*(?:#.*)?\n|%.*\n)*---", text))
    try:
        data = rt.load(text)
    except RoundTripError:  # e.g. a duplicate key, which PyYAML and Ansible let pass
        return None
    if data is None:
        data = CommentedMap()
    if not isinstance(data, CommentedMap):
        return None
    group = data.get("all")
    if group is None:
        group = data["all"] = CommentedMap()
    if not isinstance(group, CommentedMap):
        return None
    variables = group.get("vars")
    if variables is None:
        variables = CommentedMap()
        if "vars" in group:
            group["vars"] = variables
        else:
            group.insert(0, "vars", variables)  # at the top of `all`, where it is looked for
    if not isinstance(variables, CommentedMap):
        return None
    for key, value in settings.items():
        _set(variables, key, value)
    out = io.StringIO()
    rt.dump(data, out)
    return out.getvalue()


def _comments(text: str, skip: list[tuple[int, int]] | None = None) -> Counter[str]:
    """The comments in a YAML text (``# ...`` to the line's end), but those inside ``skip``.

    A ``#`` starts a comment at the start of a line or after a space, outside any scalar
    (``'a # b'`` is a string), as the scanner's scalar tokens tell.
    """
    scalars = [
        (token.start_mark.index, token.end_mark.index)
        for token in yaml.scan(text, Loader=_AnsibleReader)
        if isinstance(token, yaml.ScalarToken)
    ]
    found: Counter[str] = Counter()
    for match in re.finditer(r"(?:^|(?<=[ \t]))#[^\n]*", text, re.MULTILINE):
        at = match.start()
        if not any(start <= at < end for start, end in (*scalars, *(skip or ()))):
            found[match.group().rstrip()] += 1
    return found


def _replaced_spans(text: str, keys: Collection[str]) -> list[tuple[int, int]]:
    """Where the values of ``all.vars`` that ``keys`` replace are written in ``text``.

    A comment inside a replaced value (``- six  # pinned``) goes with the value; the lines
    after it (a blank line, a comment about what follows) are not part of it.
    """
    node = yaml.compose(text, Loader=_AnsibleReader)
    for name in ("all", "vars"):
        if not isinstance(node, yaml.MappingNode):
            return []
        node = next((v for k, v in node.value if k.value == name), None)
    if not isinstance(node, yaml.MappingNode):
        return []
    spans = []
    for key, value in node.value:
        if key.value in keys:
            start, end = value.start_mark.index, value.end_mark.index
            lines = text[start:end].split("\n")
            while len(lines) > 1 and (not lines[-1].strip() or lines[-1].lstrip().startswith("#")):
                lines.pop()
            spans.append((start, start + len("\n".join(lines))))
    return spans


def _faithful(text: str, edited: str, settings: Mapping[str, object]) -> bool:
    """Whether ``edited`` means ``text`` with ``settings`` and keeps every comment of it.

    ruamel.yaml writes what it read, but it drops comments inside a flow collection that
    spans lines, and reads YAML 1.2 where Ansible reads 1.1: both are checked, not assumed.
    """
    try:
        if _read(edited) != _with_settings(_read(text), settings):
            return False
        kept = _comments(edited)
        return all(
            kept[c] >= n for c, n in _comments(text, _replaced_spans(text, settings)).items()
        )
    except yaml.YAMLError:
        return False


def edit_inventory_text(text: str, settings: Mapping[str, object]) -> tuple[str, bool]:
    """The inventory text with ``settings`` in ``all.vars``, and whether comments were kept.

    The file goes through ruamel.yaml's round trip, which keeps comments and layout. When
    the result would lose a comment or mean something else to Ansible (a layout ruamel.yaml
    does not round-trip, such as comments inside a multi-line flow mapping or a duplicate
    key), the file is re-written through PyYAML instead, which drops the comments.
    """
    edited = _round_trip(text, settings)
    if edited is not None and _faithful(text, edited, settings):
        return edited, True
    data = yaml.safe_load(text) or {}
    group = data.setdefault("all", {}) or {}
    data["all"] = group
    variables = group.get("vars") or {}
    variables.update(settings)
    group["vars"] = variables
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False), False


# --------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class InventoryEdit:
    """An inventory file and its new text, validated and not written yet."""

    path: Path
    text: str
    kept_comments: bool
    inventory: Inventory

    def write(self) -> None:
        """Replace the file's content in one step (a temporary file, then rename)."""
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(self.text)
        with contextlib.suppress(OSError):
            os.chmod(name, self.path.stat().st_mode & 0o7777)
        os.replace(name, self.path)


def prepare_settings(path: Path, settings: Mapping[str, object]) -> InventoryEdit:
    """Validate the inventory as it will be with ``settings``; the file is not touched.

    Raises ``UsageError`` (exit 2) when the result is not a valid inventory, or when a
    host or group variable elsewhere overrides a setting for some worker (``all.vars`` is
    the weakest place, so the setting would not take effect there).
    """
    try:
        original = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the inventory ({exc.strerror})") from None
    text, kept = edit_inventory_text(original, settings)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".yml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        try:
            inventory = load_inventory(name)
        except UsageError as exc:
            raise type(exc)(str(exc).replace(name, f"{path} (with --set)")) from None
    finally:
        os.unlink(name)
    for key, value in settings.items():
        overridden = [w.name for w in inventory.workers if inventory.dask_vars(w).get(key) != value]
        if overridden:
            raise UsageError(
                f"{path}: --set {key} would not take effect on {', '.join(overridden)}: a "
                f"group or host variable sets `{key}` there; edit it there instead"
            )
    # the certificates and group_vars/ are found from the real file's name and directory
    return InventoryEdit(path, text, kept, dataclasses.replace(inventory, path=path))
