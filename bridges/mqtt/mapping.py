"""MQTT topics <-> NATS subjects: level/token translation, escaping, wildcards.

Theory: an MQTT topic is ``/``-separated levels, a NATS subject is
``.``-separated tokens; level i becomes token i. What cannot be carried
literally is percent-escaped (``%XX``, upper-case hex of each UTF-8 byte), so
the translation MQTT -> NATS -> MQTT gives back the original topic:

* MQTT -> NATS escapes ``%`` itself, ``.``, ``*``, ``>``, space and every ASCII
  control character (NATS forbids whitespace and uses the others as syntax);
  an empty level becomes the token ``%`` (a literal ``%`` is always ``%25``,
  so this is unambiguous); a ``$`` that starts the first level becomes
  ``%24`` (``$`` subjects are NATS system space: ``$SYS/x`` -> ``%24SYS.x``).
* NATS -> MQTT undoes exactly those escapes and escapes what MQTT cannot carry
  in a topic name: ``/`` (``%2F``), ``+`` (``%2B``), ``#`` (``%23``) and NUL;
  a ``%`` that does not start one of our escapes stays as it is.

Wildcards translate one to one: ``+`` <-> ``*`` and a final ``#`` <-> ``>``.
(MQTT's ``a/#`` also matches ``a`` itself; NATS's ``a.>`` does not.)

Prefixes: a mapping may prepend literal levels/tokens on the target side
(``prefix``) and remove literal ones from the source (``strip``), both
counted in whole levels/tokens.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

_HEX = "0123456789ABCDEF"
# Characters MQTT->NATS escapes inside a level (besides control characters).
_TO_NATS_ESCAPED = frozenset("%.*> ")
# Characters NATS->MQTT escapes inside a token.
_TO_MQTT_ESCAPED = frozenset("/+#\x00")
# Escapes NATS->MQTT decodes (the ones MQTT->NATS makes): %XX -> char.
_DECODABLE = {f"%{ord(c):02X}": c for c in "%.*> $"} | {
    f"%{i:02X}": chr(i) for i in [*range(0x20), 0x7F]
}
EMPTY_LEVEL_TOKEN = "%"


class MappingError(ValueError):
    """A topic, filter or subject that cannot be translated."""


def _escape(char: str) -> str:
    return "".join(f"%{_HEX[b >> 4]}{_HEX[b & 15]}" for b in char.encode())


def _level_to_token(level: str, first: bool) -> str:
    if not level:
        return EMPTY_LEVEL_TOKEN
    out = []
    for i, char in enumerate(level):
        if char in _TO_NATS_ESCAPED or ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(_escape(char))
        elif char == "$" and first and i == 0:
            out.append("%24")
        else:
            out.append(char)
    return "".join(out)


def _token_to_level(token: str) -> str:
    if token == EMPTY_LEVEL_TOKEN:
        return ""
    out = []
    i = 0
    while i < len(token):
        char = token[i]
        if char == "%":
            decoded = _DECODABLE.get(token[i : i + 3].upper())
            if decoded is not None:
                out.append(decoded)
                i += 3
                continue
            out.append("%")
        elif char in _TO_MQTT_ESCAPED:
            out.append(_escape(char))
        else:
            out.append(char)
        i += 1
    return "".join(out)


def check_topic(topic: str) -> None:
    """Raise MappingError unless ``topic`` is a valid MQTT topic name (no wildcards)."""
    if not topic:
        raise MappingError("empty topic")
    if "+" in topic or "#" in topic or "\x00" in topic:
        raise MappingError(f"topic {topic!r} holds a wildcard or NUL")
    try:
        size = len(topic.encode())
    except UnicodeEncodeError:
        raise MappingError(f"topic {topic!r} is not valid UTF-8 text") from None
    if size > 65535:
        raise MappingError("topic over 65535 bytes")


def check_topic_filter(topic_filter: str) -> None:
    """Raise MappingError unless ``topic_filter`` is a valid MQTT topic filter."""
    if not topic_filter or "\x00" in topic_filter:
        raise MappingError("empty filter or NUL in it")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if level in ("+", "#"):
            if level == "#" and i != len(levels) - 1:
                raise MappingError(f"'#' must be the last level in {topic_filter!r}")
        elif "+" in level or "#" in level:
            raise MappingError(f"a wildcard must be a whole level in {topic_filter!r}")


def topic_to_subject(topic: str, *, strip: int = 0, prefix: str = "") -> str:
    """The NATS subject for MQTT topic name ``topic`` (always a valid literal subject)."""
    check_topic(topic)
    levels = topic.split("/")
    if strip:
        if len(levels) <= strip:
            raise MappingError(f"topic {topic!r} has no level left after stripping {strip}")
        levels = levels[strip:]
    tokens = [_level_to_token(level, i == 0) for i, level in enumerate(levels)]
    subject = ".".join(tokens)
    return f"{prefix}.{subject}" if prefix else subject


def subject_to_topic(subject: str, *, strip: int = 0, prefix: str = "") -> str:
    """The MQTT topic name for literal NATS subject ``subject`` (always a valid topic)."""
    tokens = subject.split(".")
    if not subject or any(not t for t in tokens) or "*" in tokens or ">" in tokens:
        raise MappingError(f"{subject!r} is not a literal subject")
    if strip:
        if len(tokens) <= strip:
            raise MappingError(f"subject {subject!r} has no token left after stripping {strip}")
        tokens = tokens[strip:]
    topic = "/".join(_token_to_level(t) for t in tokens)
    if prefix:
        return f"{prefix}/{topic}"
    if not topic:  # the lone token "%": one empty level is no topic
        raise MappingError(f"{subject!r} maps to an empty topic")
    return topic


def filter_to_subject(topic_filter: str) -> str:
    """The NATS filter matching what MQTT ``topic_filter`` matches (``+``->``*``, ``#``->``>``)."""
    check_topic_filter(topic_filter)
    out = []
    for i, level in enumerate(topic_filter.split("/")):
        if level == "+":
            out.append("*")
        elif level == "#":
            out.append(">")
        else:
            out.append(_level_to_token(level, i == 0))
    return ".".join(out)


def subject_filter_to_topic(subject_filter: str) -> str:
    """The MQTT filter matching NATS ``subject_filter`` (``*``->``+``, ``>``->``#``)."""
    tokens = subject_filter.split(".")
    if any(not t for t in tokens) or (">" in tokens[:-1]):
        raise MappingError(f"{subject_filter!r} is not a valid subject filter")
    out = []
    for token in tokens:
        if token == "*":
            out.append("+")
        elif token == ">":
            out.append("#")
        else:
            out.append(_token_to_level(token))
    return "/".join(out)


def literal_levels(topic_filter: str) -> int:
    """How many leading levels of ``topic_filter`` are literal (what ``strip`` may remove)."""
    count = 0
    for level in topic_filter.split("/"):
        if level in ("+", "#"):
            break
        count += 1
    return count


@dataclass(frozen=True, slots=True)
class Route:
    """How one mapping renames: strip source levels/tokens, then prepend ``prefix``."""

    strip: int = 0
    prefix: str = ""  # dotted (NATS target) or slashed (MQTT target); may be empty

    def to_subject(self, topic: str) -> str:
        return topic_to_subject(topic, strip=self.strip, prefix=self.prefix)

    def to_topic(self, subject: str) -> str:
        return subject_to_topic(subject, strip=self.strip, prefix=self.prefix)
