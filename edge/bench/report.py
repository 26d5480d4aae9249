"""Per-run progress lines, medians, the comparison table and its JSON form."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .common import CASES, SIDES, Case, Measurement


def fmt(case: Case, value: float) -> str:
    if case.unit in ("msgs/s", "replies/s"):
        return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value / 1e3:.0f} k"
    if case.unit == "MiB":
        return f"{value:.1f}"
    if case.unit == "ms":
        return f"{value:.1f}"
    return f"{value:.0f}"


def run_summary(case: Case, m: Measurement) -> str:
    """One run's figure and its side figures (CPU, reconnect times), for the progress line."""
    msg = fmt(case, m.value)
    if "p99" in m.extra:
        msg += f" / p99 {m.extra['p99']:.0f}"
    if "server_cpu" in m.extra:
        msg += f"  [server {m.extra['server_cpu']:.2f} CPU"
        if "hub_cpu" in m.extra:
            msg += f", hub {m.extra['hub_cpu']:.2f} CPU"
        msg += f", other processes {m.extra['other_cpu']:.2f} CPU]"
    if "server_us" in m.extra:
        msg += f"  [server {m.extra['server_us']:.0f} us CPU per setup]"
    if "outage_ms" in m.extra:
        msg += f"  [kill -> hub back {m.extra['restart_ms']:.0f} ms"
        msg += f", kill -> message through {m.extra['outage_ms']:.0f} ms]"
    return msg


@dataclass
class SideResult:
    runs: list[Measurement] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.runs) and not self.errors

    def median(self, key: str | None = None) -> float:
        vals = [m.value if key is None else m.extra[key] for m in self.runs]
        return statistics.median(vals)


def _side(case: Case, res: SideResult) -> tuple[str, dict[str, Any]]:
    """One side of one case: its table cell and its JSON entry."""
    side_data: dict[str, Any] = {
        "runs": [{"value": m.value, **m.extra} for m in res.runs],
        "errors": res.errors,
    }
    if not res.ok:
        side_data["value"] = None
        return f"FAILED {len(res.errors)}/{len(res.runs) + len(res.errors)}", side_data
    side_data["value"] = res.median()
    if case.unit == "p50/p99 us":
        side_data["p99"] = res.median("p99")
        return f"{res.median():.0f} / {res.median('p99'):.0f}", side_data
    return fmt(case, res.median()), side_data


def _case(
    case: Case, results: dict[str, SideResult], sides: Sequence[str]
) -> tuple[list[str], dict[str, Any]]:
    """One case: its table row and its JSON entry."""
    cells: dict[str, str] = {}
    entry: dict[str, Any] = {"unit": case.unit, "higher_is_better": case.higher_is_better}
    for side in SIDES:
        if side not in sides:
            cells[side] = "-"
            continue
        cells[side], entry[side] = _side(case, results[side])
    ratio = None
    if all(s in sides and results[s].ok for s in SIDES):
        base = results["nats"].median()
        ratio = results["leafgate"].median() / base if base else None
    entry["ratio"] = ratio
    row = [
        case.name,
        case.unit,
        cells["nats"],
        cells["leafgate"],
        "-" if ratio is None else f"{ratio:.2f}",
        "higher" if case.higher_is_better else "lower",
    ]
    return row, entry


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for j, row in enumerate([header, *rows]):
        lines.append(
            "  ".join(
                c.ljust(widths[i]) if i < 2 or i == 5 else c.rjust(widths[i])
                for i, c in enumerate(row)
            ).rstrip()
        )
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def report(
    names: Sequence[str], results: dict[str, dict[str, SideResult]], sides: Sequence[str]
) -> tuple[list[str], dict[str, Any]]:
    """The comparison table's lines and the per-case JSON data."""
    header = ["case", "unit", "nats-server", "leafgate", "leafgate/nats", "better"]
    rows: list[list[str]] = []
    data: dict[str, Any] = {}
    for name in names:
        row, data[name] = _case(CASES[name], results[name], sides)
        rows.append(row)
    return _table(header, rows), data
