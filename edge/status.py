"""``leafgate status --http URL``: read a running server's monitoring endpoints
and print the view of ``edge.status_view``. Synchronous (a CLI command)."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from edge.status_view import Bodies, render

DEFAULT_URL = "http://127.0.0.1:8222"
TIMEOUT = 5.0


class StatusError(Exception):
    pass


def fetch_json(base: str, path: str, *, optional: bool = False) -> dict[str, Any] | None:
    """The JSON body at ``base + path``; None for a 404 when ``optional``."""
    url = base.rstrip("/") + path
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        exc.close()
        if optional and exc.code == 404:
            return None
        raise StatusError(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StatusError(f"cannot reach {url}: {reason}") from None
    except ValueError as exc:
        raise StatusError(f"{url}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise StatusError(f"{url}: not a JSON object")
    return data


def collect(base: str) -> Bodies:
    def need(path: str) -> dict[str, Any]:
        body = fetch_json(base, path)
        assert body is not None
        return body

    return Bodies(
        varz=need("/varz"),
        leafz=need("/leafz"),
        storez=need("/storez"),
        subsz=need("/subsz?subs=1&limit=1024"),
        bridgez=fetch_json(base, "/bridgez", optional=True),
    )


def main(argv: Sequence[str], prog: str = "leafgate status") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Show a running leafgate's hub links, backlog, bridges and top subjects, "
        "read from its HTTP monitoring port (http_port / -m).",
    )
    parser.add_argument(
        "--http", default=DEFAULT_URL, metavar="URL", help=f"monitoring URL (default {DEFAULT_URL})"
    )
    parser.add_argument("--top", type=int, default=10, help="subjects to list (default 10)")
    parser.add_argument("--json", action="store_true", help="print the raw bodies as JSON")
    args = parser.parse_args(list(argv))
    try:
        bodies = collect(args.http)
    except StatusError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(bodies.__dict__, indent=2))
    else:
        print("\n".join(render(bodies, args.top)))
    return 0
