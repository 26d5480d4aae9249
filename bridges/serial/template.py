"""Subject templates for serial frames: ``sensors.{port}.{field:id}``.

Pure: a template is parsed once (at config time, where an unknown placeholder
is a config error) and rendered per frame. Values that come from the device
are untrusted: a value that is not a valid subject token (empty, holding
``.``, ``*``, ``>``, whitespace or control characters, or too long) makes the
frame rejected, never published under a subject the device chose.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from edge.subjects import is_valid_publish_subject

MAX_TOKEN = 128  # longest field value used as a subject token
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_FIELD_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
_BAD_TOKEN = re.compile(r"[\x00-\x20\x7f.*>{}]")


class TemplateError(ValueError):
    """A template that can never render a valid subject."""


class RenderError(ValueError):
    """A frame whose fields cannot fill the template (``reason`` is the counter)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SubjectTemplate:
    """Literal text and placeholders, in order: ``("port", "")`` or ``("field", name)``."""

    text: str
    parts: tuple[tuple[str, str], ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(arg for kind, arg in self.parts if kind == "field")

    def render(self, port: str, fields: Mapping[str, str]) -> str:
        out: list[str] = []
        for kind, arg in self.parts:
            if kind == "text":
                out.append(arg)
                continue
            value = port if kind == "port" else fields.get(arg)
            if value is None:
                raise RenderError("missing_field", f"the frame has no field {arg!r}")
            if not is_valid_token(value):
                raise RenderError("bad_subject", f"{value[:40]!r} is not a valid subject token")
            out.append(value)
        subject = "".join(out)
        if not is_valid_publish_subject(subject.encode()):
            raise RenderError("bad_subject", f"{subject[:80]!r} is not a valid subject")
        return subject


def is_valid_token(value: str) -> bool:
    return 0 < len(value) <= MAX_TOKEN and _BAD_TOKEN.search(value) is None


def parse_template(text: str) -> SubjectTemplate:
    """Parse ``text``; TemplateError says what is wrong."""
    parts: list[tuple[str, str]] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(text):
        if match.start() > pos:
            parts.append(("text", text[pos : match.start()]))
        parts.append(_placeholder(match.group(1)))
        pos = match.end()
    if pos < len(text):
        parts.append(("text", text[pos:]))
    for kind, arg in parts:
        if kind == "text" and ("{" in arg or "}" in arg):
            raise TemplateError(f"unbalanced brace in {text!r}")
    # Every placeholder filled with a plain token must give a literal subject.
    sample = "".join(arg if kind == "text" else "x" for kind, arg in parts)
    if not is_valid_publish_subject(sample.encode()):
        raise TemplateError(f"{text!r} is not a valid subject (wildcard or empty token)")
    return SubjectTemplate(text, tuple(parts))


def _placeholder(body: str) -> tuple[str, str]:
    if body == "port":
        return ("port", "")
    kind, sep, name = body.partition(":")
    if kind == "field" and sep and _FIELD_NAME.match(name):
        return ("field", name)
    raise TemplateError(f"unknown placeholder {{{body}}}; expected {{port}} or {{field:NAME}}")
