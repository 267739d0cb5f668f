"""Edit an inventory's ``all.vars`` the way ``upgrade --set KEY=VALUE`` records a change.

The edit is validated as a whole inventory before the file is written, and it is written in
one step (a temporary file, then rename), so a bad value never lands.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from pydask_deploy.errors import UsageError
from pydask_deploy.inventory.load import VAR_TYPES, Inventory, known_variables, load_inventory


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


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _set_in_text(text: str, key: str, value: object) -> str | None:
    """Set ``all.vars.KEY`` by editing the block-style text; None for any other layout."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    top = next((i for i, line in enumerate(lines) if re.match(r"^all:\s*(#.*)?$", line)), None)
    if top is None:
        return None
    end = next(
        (i for i in range(top + 1, len(lines)) if _content(lines[i]) and _indent(lines[i]) == 0),
        len(lines),
    )
    children = [i for i in range(top + 1, end) if _content(lines[i])]
    child_indent = _indent(lines[children[0]]) if children else 2
    found = next(
        (
            i
            for i in children
            if _indent(lines[i]) == child_indent and re.match(r"^\s*vars:\s*(#.*)?$", lines[i])
        ),
        None,
    )
    line = f"{key}: {flow(value)}\n"
    if found is None:
        pad = " " * child_indent
        lines[top + 1 : top + 1] = [f"{pad}vars:\n", f"{pad}{pad}{line}"]
        return "".join(lines)
    block_end = next(
        (
            i
            for i in range(found + 1, end)
            if _content(lines[i]) and _indent(lines[i]) <= child_indent
        ),
        end,
    )
    body = [i for i in range(found + 1, block_end) if _content(lines[i])]
    var_indent = _indent(lines[body[0]]) if body else child_indent * 2
    pad = " " * var_indent
    start = next((i for i in body if re.match(rf"^{pad}{re.escape(key)}\s*:", lines[i])), None)
    if start is None:
        at = body[-1] + 1 if body else found + 1
        lines[at:at] = [pad + line]
        return "".join(lines)
    stop = start + 1  # the value's continuation: deeper lines, or a sequence at key level
    while stop < block_end and (
        not _content(lines[stop])
        or _indent(lines[stop]) > var_indent
        or lines[stop].startswith(f"{pad}- ")
    ):
        stop += 1
    while stop > start + 1 and not _content(lines[stop - 1]):
        stop -= 1  # keep blank lines and comments that follow the value
    lines[start:stop] = [pad + line]
    return "".join(lines)


def edit_inventory_text(text: str, settings: Mapping[str, object]) -> tuple[str, bool]:
    """The inventory text with ``settings`` in ``all.vars``, and whether comments were kept.

    The ``all: vars:`` block is edited in place, which keeps every comment; a layout that
    edit does not understand (flow style, anchors ...) is re-written through PyYAML instead,
    which drops the comments.
    """
    edited: str | None = text
    for key, value in settings.items():
        edited = _set_in_text(edited, key, value) if edited is not None else None
    if edited is not None:
        with contextlib.suppress(yaml.YAMLError, AttributeError, TypeError):
            loaded = (yaml.safe_load(edited) or {})["all"]["vars"]
            if all(loaded.get(k) == v for k, v in settings.items()):
                return edited, True
    data = yaml.safe_load(text) or {}
    group = data.setdefault("all", {}) or {}
    data["all"] = group
    variables = group.get("vars") or {}
    variables.update(settings)
    group["vars"] = variables
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False), False


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
