"""bench_lab.py's report: each figure over the best peer's in the same situation and run,
the tunnel's added RTT over the bare path it runs on, the text tables, and PNG charts
(matplotlib with the Agg backend, from the `bench` extra).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from bench_lab_measure import Cell
from bench_lab_tunnels import PEERS

__all__ = ["FIGURES", "draw_charts", "markdown_tables", "ratios", "tables"]

FIGURES = {  # figure -> True if higher is better
    "mbit_s": True,
    "idle_avg_ms": False,
    "idle_p99_ms": False,
    "loaded_avg_ms": False,
    "loaded_p99_ms": False,
}


def _best(cells: Sequence[Cell], key: str) -> tuple[float, str] | None:
    """The best peer's value of `key` among `cells` and that peer's name."""
    values = [(getattr(c, key), c.tunnel) for c in cells if c.tunnel in PEERS and c.available]
    values = [(v, t) for v, t in values if v is not None]
    if not values:
        return None
    return max(values) if FIGURES[key] else min(values)


def ratios(cells: Sequence[Cell]) -> dict[str, dict[str, dict[str, float | str | None]]]:
    """{situation: {tunnel: {figure_vs_best: ratio, ..., best_<figure>: peer,
    added_idle_ms: ms over the bare path}}}.

    A ratio above 1 is more Mbit/s, or more milliseconds, than the best peer's. The added
    RTT compares a relayed tunnel with the bare relay path (a -> relay -> b), every other
    tunnel with the bare path a -> b.
    """
    out: dict[str, dict[str, dict[str, float | str | None]]] = {}
    for situation in dict.fromkeys(c.situation for c in cells):
        group = [c for c in cells if c.situation == situation]
        bare = next((c for c in group if c.tunnel == "bare" and c.available), None)
        bests = {key: _best(group, key) for key in FIGURES}
        rows: dict[str, dict[str, float | str | None]] = {}
        for cell in group:
            if not cell.available:
                continue
            row: dict[str, float | str | None] = {}
            for key, best in bests.items():
                value = getattr(cell, key)
                row[f"{key}_vs_best"] = value / best[0] if best and value and best[0] else None
                row[f"best_{key}"] = best[1] if best else None
            reference = None
            if bare is not None:
                relayed = cell.went == "relay"
                reference = bare.relay_path_idle_avg_ms if relayed else bare.idle_avg_ms
            added = None
            if reference is not None and cell.idle_avg_ms is not None:
                added = cell.idle_avg_ms - reference
            row["added_idle_ms"] = added
            rows[cell.tunnel] = row
        out[situation] = rows
    return out


def _x(value: float | str | None) -> str:
    if not isinstance(value, float):
        return "-"
    return f"{value:.2f}x" if value < 100 else f"{value:.0f}x"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def tables(
    cells: Sequence[Cell],
    rel: dict[str, dict[str, dict[str, float | str | None]]],
    descriptions: dict[str, str],
) -> str:
    """One text table per situation: every figure and its ratio to the best peer."""
    head = (
        f"{'tunnel':<16}{'went':<7}{'Mbit/s':>8}{'/best':>8}"
        f"{'idle avg':>10}{'/best':>8}{'p99':>8}{'/best':>8}"
        f"{'loaded avg':>11}{'/best':>8}{'p99':>8}{'/best':>8}{'+ms':>8}"
    )
    blocks = []
    for situation, rows in rel.items():
        lines = [f"== {situation}: {descriptions.get(situation, '')}", head, "-" * len(head)]
        bare = next((c for c in cells if c.situation == situation and c.tunnel == "bare"), None)
        if bare and bare.relay_path_idle_avg_ms is not None:
            lines.append(
                f"   (bare relay path a -> relay -> b: {_ms(bare.relay_path_idle_avg_ms)} ms avg, "
                f"{_ms(bare.relay_path_idle_p99_ms)} ms p99)"
            )
        for cell in (c for c in cells if c.situation == situation):
            if not cell.available:
                lines.append(f"{cell.tunnel:<16}not measured: {cell.note}")
                continue
            r = rows[cell.tunnel]
            added = r["added_idle_ms"]
            lines.append(
                f"{cell.tunnel:<16}{cell.went or '-':<7}{cell.mbit_s or 0:>8.0f}"
                f"{_x(r['mbit_s_vs_best']):>8}"
                f"{_ms(cell.idle_avg_ms):>10}{_x(r['idle_avg_ms_vs_best']):>8}"
                f"{_ms(cell.idle_p99_ms):>8}{_x(r['idle_p99_ms_vs_best']):>8}"
                f"{_ms(cell.loaded_avg_ms):>11}{_x(r['loaded_avg_ms_vs_best']):>8}"
                f"{_ms(cell.loaded_p99_ms):>8}{_x(r['loaded_p99_ms_vs_best']):>8}"
                f"{'-' if not isinstance(added, float) else f'{added:+.2f}':>8}"
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def markdown_tables(
    cells: Sequence[Cell],
    rel: dict[str, dict[str, dict[str, float | str | None]]],
    descriptions: dict[str, str],
) -> str:
    """The same figures as `tables`, as Markdown (for docs/performance.md)."""

    def fig(value: float | None, ratio: float | str | None, ms: bool = True) -> str:
        if value is None:
            return "-"
        text = _ms(value) if ms else f"{value:.0f}"
        return f"{text} ({_x(ratio)})"

    blocks = []
    for situation, rows in rel.items():
        bare = next((c for c in cells if c.situation == situation and c.tunnel == "bare"), None)
        lines = [f"**{situation}**: {descriptions.get(situation, '')}"]
        if bare and bare.relay_path_idle_avg_ms is not None:
            lines[0] += (
                f"; bare relay path a -> relay -> b {_ms(bare.relay_path_idle_avg_ms)} ms avg, "
                f"{_ms(bare.relay_path_idle_p99_ms)} ms p99"
            )
        lines += [
            "",
            "| tunnel | went | Mbit/s | idle avg ms | idle p99 ms | loaded avg ms | "
            "loaded p99 ms | +ms idle |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for cell in (c for c in cells if c.situation == situation):
            if not cell.available:
                lines.append(f"| {cell.tunnel} | not measured: {cell.note} | | | | | | |")
                continue
            r = rows[cell.tunnel]
            added = r["added_idle_ms"]
            lines.append(
                f"| {cell.tunnel} | {cell.went} "
                f"| {fig(cell.mbit_s, r['mbit_s_vs_best'], ms=False)} "
                f"| {fig(cell.idle_avg_ms, r['idle_avg_ms_vs_best'])} "
                f"| {fig(cell.idle_p99_ms, r['idle_p99_ms_vs_best'])} "
                f"| {fig(cell.loaded_avg_ms, r['loaded_avg_ms_vs_best'])} "
                f"| {fig(cell.loaded_p99_ms, r['loaded_p99_ms_vs_best'])} "
                f"| {'-' if not isinstance(added, float) else f'{added:+.2f}'} |"
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


_COLOURS = {
    "bare": "#9e9e9e",
    "meshcore-direct": "#1565c0",
    "meshcore-direct-tcp": "#0d47a1",
    "meshcore-relay": "#64b5f6",
    "n2n": "#ef6c00",
    "tinc": "#2e7d32",
    "wireguard-go": "#6a1b9a",
    "nebula": "#c62828",
}


def draw_charts(cells: Sequence[Cell], outdir: Path, copy_to: Path | None) -> list[Path]:
    """Throughput and RTT charts as PNGs in `outdir` (and copies in `copy_to`); returns the
    files written, none if matplotlib is missing (pip install -e '.[bench]')."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: render to files only
        import matplotlib.pyplot as plt
    except ImportError:
        print("charts skipped: matplotlib is missing (pip install -e '.[bench]')")
        return []
    measured = [c for c in cells if c.available]
    situations = list(dict.fromkeys(c.situation for c in cells))
    tunnels = list(dict.fromkeys(c.tunnel for c in cells))
    found = {(c.situation, c.tunnel): c for c in measured}
    written = []

    fig, ax = plt.subplots(figsize=(11, 4.8))
    width = 0.8 / max(1, len(tunnels))
    for i, tunnel in enumerate(tunnels):
        xs, ys = [], []
        for j, situation in enumerate(situations):
            cell = found.get((situation, tunnel))
            if cell and cell.mbit_s:
                xs.append(j + (i - (len(tunnels) - 1) / 2) * width)
                ys.append(cell.mbit_s)
        ax.bar(xs, ys, width, label=tunnel, color=_COLOURS.get(tunnel))
    ax.set_axisbelow(True)
    ax.set_yscale("log")
    ax.set_xticks(range(len(situations)), situations)
    ax.set_ylabel("iperf3 TCP, one stream (Mbit/s, log scale)")
    ax.set_title("Throughput a -> b per tunnel and situation (median of the runs)")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(ncol=4, fontsize="small")
    fig.tight_layout()
    written.append(outdir / "lab-throughput.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    width_in = max(8.0, 3.3 * len(situations))
    fig, axes = plt.subplots(1, len(situations), figsize=(width_in, 5.2), sharey=True)
    axes = [axes] if len(situations) == 1 else list(axes)
    for ax, situation in zip(axes, situations, strict=True):
        names = [t for t in tunnels if (situation, t) in found]
        for k, (kind, shade) in enumerate((("idle", 0.45), ("loaded", 1.0))):
            for i, tunnel in enumerate(names):
                cell = found[(situation, tunnel)]
                avg = getattr(cell, f"{kind}_avg_ms")
                p99 = getattr(cell, f"{kind}_p99_ms")
                x = i + (k - 0.5) * 0.4
                ax.bar(x, avg, 0.4, color=_COLOURS.get(tunnel), alpha=shade)
                ax.plot([x - 0.15, x + 0.15], [p99, p99], color="black", linewidth=1.2)
        ax.set_axisbelow(True)
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize="small")
        ax.set_title(situation)
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].set_ylabel("ping RTT through the tunnel (ms, log scale)")
    fig.suptitle(
        "Ping RTT a -> b through each tunnel, idle (pale) and while one iperf3 stream runs "
        "(solid)\nbar: average; black line: 99th percentile"
    )
    fig.tight_layout()
    written.append(outdir / "lab-rtt.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    if copy_to is not None:
        copy_to.mkdir(parents=True, exist_ok=True)
        for path in list(written):
            shutil.copy(path, copy_to / path.name)
            written.append(copy_to / path.name)
    return written
