"""Configuration values: sizes, durations, host:port, leafnode URLs, masking.

The converters shared by the TOML loader (``edge.config_load``) and the command
line, and the helpers that show a value in an error message. Import them from
``edge.config``, which re-exports the public names.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

KIB = 1024
MIB = 1024 * 1024

DEFAULT_LEAF_PORT = 7422  # nats-server's leafnode port

# URL schemes of a leafnode remote; "nats" is a synonym of "nats-leaf", "tls"
# asks for TLS.
LEAF_URL_SCHEMES = ("nats-leaf", "nats", "tls")


class _Invalid(ValueError):
    """A value does not convert; the caller knows the key and adds it."""


def _show(value: object) -> str:
    """A value as it would appear in TOML, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _quote(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------------------
# Value conversion (shared by the TOML loader and the command line)
# ---------------------------------------------------------------------------

# Size suffixes, as nats-server's config parser reads them: "KB"/"MB"/"GB"/"TB"
# (and "KiB"/"Ki" ...) are powers of 1024, so "1MB" == 1048576 == "1MiB"; a bare
# "K"/"M"/"G"/"T" is a power of 1000. Case does not matter.
_SIZE_UNITS: dict[str, int] = {"": 1, "b": 1}
for _i, _letter in enumerate("kmgt", start=1):
    _SIZE_UNITS[_letter] = 1000**_i
    for _suffix in ("b", "i", "ib"):
        _SIZE_UNITS[_letter + _suffix] = 1024**_i
del _i, _letter, _suffix

_SIZE_RE = re.compile(r"\s*(\d+)\s*([A-Za-z]*)\s*")
_SIZE_EXPECTED = 'expected a size like 1048576 or "1MB"'


def parse_size(value: object) -> int:
    """A byte count from an int or a string such as ``"1MB"``, ``"4KB"``, ``"1MiB"``."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _Invalid(f"{_SIZE_EXPECTED}, got {_show(value)}")
    if isinstance(value, int):
        if value < 0:
            raise _Invalid(f"must not be negative, got {value}")
        return value
    if value.strip().startswith("-"):
        raise _Invalid(f"must not be negative, got {_show(value)}")
    match = _SIZE_RE.fullmatch(value)
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        raise _Invalid(f"{_SIZE_EXPECTED}, got {_show(value)}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


# Go's time.ParseDuration syntax, which nats-server uses: "500ms", "10s", "2m",
# "1h", "1m30s", "1.5h". A bare number (TOML int or float) is seconds.
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_EXPECTED = 'expected a duration like 10, "10s", "500ms" or "1m30s"'


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string such as ``"2m"`` or ``"1m30s"``."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Invalid(f"{_DURATION_EXPECTED}, got {_show(value)}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise _Invalid(f"{_DURATION_EXPECTED}, got {_show(value)}")
        if value < 0:
            raise _Invalid(f"must not be negative, got {_show(value)}")
        return float(value)
    text = value.strip()
    if text.startswith("-"):
        raise _Invalid(f"must not be negative, got {_show(value)}")
    if text == "0":
        return 0.0
    total = 0.0
    pos = 0
    while pos < len(text) or pos == 0:
        match = _DURATION_PART_RE.match(text, pos)
        if match is None:
            raise _Invalid(f"{_DURATION_EXPECTED}, got {_show(value)}")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return total


def parse_hostport(value: object) -> tuple[str | None, int]:
    """``"host:port"``, ``":port"``, ``"[::1]:port"`` or a bare port number.

    The host is None when the value names only a port (the configured or
    default host stays in place).
    """
    expected = 'expected "host:port", ":port" or a port number'
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _Invalid(f"{expected}, got {_show(value)}")
    host: str | None = None
    if isinstance(value, int):
        port = value
    else:
        host_text, sep, port_text = value.strip().rpartition(":")
        if not sep:
            raise _Invalid(f"{expected}, got {_show(value)}")
        if host_text.startswith("[") and host_text.endswith("]"):
            host_text = host_text[1:-1]
        elif ":" in host_text:
            raise _Invalid(f'an IPv6 address needs brackets, like "[::1]:4222"; got {_show(value)}')
        host = host_text or None
        try:
            port = int(port_text)
        except ValueError:
            raise _Invalid(f"{expected}, got {_show(value)}") from None
    try:
        _check_port_value(port)
    except _Invalid as exc:
        raise _Invalid(f"port {exc}") from None
    return host, port


def _check_port_value(port: int) -> None:
    if port != -1 and not 0 <= port <= 65535:
        raise _Invalid(f"must be 0..65535 (or -1 for a random port), got {port}")


@dataclass(frozen=True)
class LeafURL:
    """A parsed leafnode URL (see ``parse_leaf_url``)."""

    scheme: str  # lower case, one of LEAF_URL_SCHEMES
    host: str  # IPv6 addresses without brackets
    port: int
    user: str | None  # percent-decoded; set together with password
    password: str | None
    tls: bool  # the scheme is tls://


_LEAF_URL_EXAMPLE = '"nats-leaf://hub.example:7422"'


def parse_leaf_url(url: object) -> LeafURL:
    """Read ``nats-leaf://[user:password@]host[:port]`` (also ``nats://``, ``tls://``).

    The port defaults to 7422; the user and password are percent-decoded (a
    password holding ``@``, ``:`` or ``/`` is written ``%40``, ``%3A``, ``%2F``).
    Raises ValueError saying what is wrong; the message never contains the
    password.
    """
    if not isinstance(url, str):
        raise _Invalid(f"expected a URL like {_LEAF_URL_EXAMPLE}, got {_show(url)}")
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise _Invalid(f"expected a URL like {_LEAF_URL_EXAMPLE}, got {_show_url(url)}")
    scheme = scheme.lower()
    if scheme in ("ws", "wss"):
        raise _Invalid(f"{scheme}:// (websocket) leafnode links are not supported yet")
    if scheme not in LEAF_URL_SCHEMES:
        raise _Invalid(
            f'scheme "{scheme}" is not supported; use nats-leaf://, nats:// or tls://, '
            f"like {_LEAF_URL_EXAMPLE}"
        )
    if any(c.isspace() for c in url):
        raise _Invalid(f"must not contain spaces, got {_show_url(url)}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _Invalid(f"{exc}, got {_show_url(url)}") from None
    if parts.path not in ("", "/") or "?" in rest or "#" in rest:
        if "@" in parts.path + parts.query + parts.fragment:
            raise _Invalid(
                "a / ? or # in the user or password must be percent-encoded "
                f"(%2F, %3F, %23), got {_show_url(url)}"
            )
        raise _Invalid(f"must be only scheme://host:port, got {_show_url(url)}")

    user: str | None = None
    password: str | None = None
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        try:
            user = unquote(user_text, errors="strict")
            password = unquote(password_text, errors="strict")
        except UnicodeDecodeError:
            raise _Invalid("user:password is not valid percent-encoded UTF-8") from None
        if not user:
            raise _Invalid(f"has an empty user name, got {_show_url(url)}")
        if not colon or not password:
            raise _Invalid(
                f"has a user but no password (write user:password@host), got {_show_url(url)}"
            )

    host, port = _split_leaf_hostport(hostport, url)
    return LeafURL(scheme, host, port, user, password, tls=scheme == "tls")


def _split_leaf_hostport(hostport: str, url: str) -> tuple[str, int]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise _Invalid(f"unclosed [ in the host, got {_show_url(url)}")
        host, after = hostport[1:end], hostport[end + 1 :]
        if after and not after.startswith(":"):
            raise _Invalid(f"unexpected text after the host, got {_show_url(url)}")
        has_port, port_text = bool(after), after[1:]
    else:
        if hostport.count(":") > 1:
            raise _Invalid(
                f'an IPv6 address needs brackets, like "nats-leaf://[::1]:7422"; '
                f"got {_show_url(url)}"
            )
        host, colon, port_text = hostport.partition(":")
        has_port = bool(colon)
    if not host:
        raise _Invalid(f"has no host, got {_show_url(url)}")
    if not has_port:
        return host.lower(), DEFAULT_LEAF_PORT
    if not port_text:
        raise _Invalid(f"has an empty port, got {_show_url(url)}")
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise _Invalid(f"port must be 1..65535, got {_show_url(url)}")
    return host.lower(), int(port_text)


def mask_url(url: str) -> str:
    """*url* with the password of a ``user:password@`` replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    end = len(rest)
    for stop in "/?#":
        found = rest.find(stop)
        if found >= 0:
            end = min(end, found)
    userinfo, at, hostport = rest[:end].rpartition("@")
    if not sep or not at:
        return url
    user, colon, _ = userinfo.partition(":")
    masked = f"{user}:***" if colon else "***"
    return f"{scheme}://{masked}@{hostport}{rest[end:]}"


def _quote(text: str) -> str:
    """*text* as a TOML string, in full (file paths must not be shortened)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _show_url(url: str) -> str:
    """*url* for an error message: everything before the last ``@`` is hidden,
    as a malformed URL may hold a password where ``mask_url`` does not look."""
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    if "@" in rest:
        url = f"{head}{sep}***@{rest.rpartition('@')[2]}"
    return _show(url)


def _to_str(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_show(value)}")
    return value


def _to_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_show(value)}")
    return value


def _to_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"expected an integer, got {_show(value)}")
    return value


def format_size(size: int) -> str:
    """``1048576`` -> ``"1MB"`` (1024-based, as nats-server writes sizes)."""
    for unit, factor in (("GB", 1024**3), ("MB", MIB), ("KB", KIB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"
