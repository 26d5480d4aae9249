"""The protocol core and other pure modules do no I/O: no trio, sockets or logging.

Checked two ways: statically (every import statement in their source) and
dynamically (importing them in a fresh interpreter must not load trio & co.,
also not through a package ``__init__``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = frozenset({"trio", "socket", "asyncio", "structlog", "logging"})

_CANDIDATES = [
    *sorted((ROOT / "edge" / "proto").glob("*.py")),
    *sorted((ROOT / "edge" / "auth").glob("*.py")),
    ROOT / "edge" / "accounts.py",
    ROOT / "edge" / "subjects.py",
    ROOT / "edge" / "sublist.py",
    ROOT / "edge" / "config.py",
    ROOT / "edge" / "config_values.py",
    ROOT / "edge" / "config_load.py",
    ROOT / "edge" / "status_view.py",
    ROOT / "store" / "paths.py",
    ROOT / "store" / "errors.py",
    ROOT / "store" / "groups.py",
    ROOT / "store" / "window.py",
    ROOT / "store" / "dedup.py",
    ROOT / "store" / "acks.py",
    # Synchronous SQLite, run in the writer's thread: no trio, no logging either.
    ROOT / "store" / "buffer.py",
    ROOT / "store" / "db.py",
    ROOT / "bridges" / "mapping.py",
    ROOT / "bridges" / "framing.py",
    # The power-cut fixture's page model (its FUSE shell is tests/powerfs/fs.py).
    ROOT / "tests" / "powerfs" / "overlay.py",
    ROOT / "bridges" / "serial" / "config.py",
    ROOT / "bridges" / "serial" / "framing.py",
    ROOT / "bridges" / "serial" / "template.py",
    ROOT / "bridges" / "mqtt" / "mapping.py",
    ROOT / "bridges" / "mqtt" / "headers.py",
    ROOT / "bridges" / "mqtt" / "recent.py",
    ROOT / "bridges" / "mqtt" / "config.py",
]
PURE_FILES = [path for path in _CANDIDATES if path.exists()]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


PURE_MODULES = [_module_name(path) for path in PURE_FILES]


def _imported_roots(source: str) -> list[tuple[int, str]]:
    """(line, top-level package) for every absolute import in ``source``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def test_the_core_is_covered() -> None:
    for name in ("edge.proto.parser", "edge.proto.session", "edge.proto.encoder"):
        assert name in PURE_MODULES


def test_static_check_catches_forbidden_imports() -> None:
    sample = "import trio\nimport socket as s\nfrom logging import getLogger\nimport os.path\n"
    assert [root for _, root in _imported_roots(sample)] == ["trio", "socket", "logging", "os"]
    nested = "def f():\n    from structlog import get_logger\n"
    assert _imported_roots(nested) == [(2, "structlog")]


@pytest.mark.parametrize("path", PURE_FILES, ids=PURE_MODULES)
def test_no_forbidden_imports(path: Path) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line}: imports {root}"
        for line, root in _imported_roots(path.read_text())
        if root in FORBIDDEN
    ]
    assert not bad, "\n".join(bad)


def test_importing_pure_modules_loads_nothing_forbidden() -> None:
    code = (
        "import sys\n"
        f"for name in {PURE_MODULES!r}:\n"
        "    __import__(name)\n"
        f"print(' '.join(sorted(m for m in {sorted(FORBIDDEN)!r} if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"loaded transitively: {result.stdout.strip()}"
