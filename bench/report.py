"""Turn benchmark results into a page a person can read (Markdown table) and a plot (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LABELS = {
    "per-event": "one event at a time (Faust agent)",
    "take": "fixed batches (Faust take(256, 10 ms))",
    "quix": "one event at a time (Quix Streams app)",
    "quix-sink": "Quix BatchingSink batches (commit every 256 or 10 ms)",
    "adaptive": "sluice adaptive batcher",
    "minimal": "minimal pipeline by hand (bench.minimal: no commits, dead letters, budget, headers, metrics)",
}


def _strategies(results: dict[str, Any]) -> list[str]:
    """The run's strategies in the order they ran; runs from before the Quix peers did not list theirs."""
    return list(results.get("strategies", ["adaptive", "take", "per-event"]))


def write_latency_report(results: dict[str, Any], out: Path) -> None:
    rule = results["drain_rule"]
    lines = [
        "# Live scoring: sluice's adaptive batcher vs Faust agents and Quix Streams",
        "",
        f"Run {results['started']} on {results['cpus']} CPUs, real Apache Kafka broker on the same machine, "
        f"{results['partitions']} partitions, latency budget {results['budget_ms']} ms, every worker with 1 torch "
        "thread. Reproduce: `docker/kafka-local start && .venv/bin/python -m bench.latency`.",
        "",
        "Latency is end to end by the broker's clocks: input CreateTime to the output's LogAppendTime. Loads are "
        "open loop, at fractions of the adaptive worker's saturation rate (the same absolute rates for every "
        "strategy); a point is SATURATED when the achieved rate fell under 95% of the offered rate or events were "
        "not all scored in time. The load generator, the broker and the worker share the machine's cores, so "
        "saturation is measured two ways: draining a backlog produced beforehand (the worker has the cores with the "
        "broker: its outputs are read back only once all are in), and "
        "the output rate under an open-loop overload (1.5x the drain rate; the generator competes for the cores, "
        "as in the load points). Load fractions are of the second.",
        "",
        f"Each drain is sized by time: it lasts at least {rule['min_seconds']:g} s at that strategy's own rate, "
        "timed from its first output to its last, and its rate is outputs / (time of the last output - time of the "
        "first), so worker start-up is not in it. A first, small drain gives the rate (and is the "
        f"measurement if it already lasts that long); the next is sized to rate x {rule['min_seconds']:g} s x "
        f"{rule['margin']:g}, by a fresh worker, until one lasts long enough or holds {rule['max_backlog']:,} events "
        "(the cap, which bounds a run's disk, memory and time; a drain under it says so below). The ceilings that "
        "read a topic (transport alone, `getmany` alone, `getmany` + orjson) read it again until each lasts as "
        "long, a fresh consumer per pass, its start-up not timed.",
        "",
        "The peers score the same model into the same outputs (`bench/peers.py`): Faust agents "
        "(`bench/faust_peers.py`) and a Quix Streams application (`bench/quix_peers.py`), one event at a time as "
        "its API gives, and batched through its Sink API's `BatchingSink`, the only batching Quix documents (it "
        "has none for transformations).",
        "",
    ]
    if results.get("drain_only"):
        lines += [
            "This run measured the drains only (`--drain-only`): no overload and no load points.",
            "",
        ]
    strategies = _strategies(results)
    for model, entry in results["models"].items():
        ceiling = entry["model_alone"]
        transport = entry["transport_alone_per_s"]
        sat = entry["saturation_per_s"]
        lines += [f"## {model}", ""]
        if entry.get("note"):
            lines += [str(entry["note"]), ""]
        lines += [
            "| ceiling / strategy | events/s | vs model alone | vs transport alone | vs one at a time (Faust) "
            "| sluice is |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            f"| model alone (best batch {ceiling['best_batch']}) | {ceiling['best_per_s']:,.0f} | 1.00 | | | |",
            f"| transport alone (fetch+decode+encode+produce) | {transport:,.0f} | | 1.00 | | |",
        ]
        reads = entry.get("read_ceilings_per_s")
        if reads:
            lines += [
                f"| getmany alone (aiokafka, nothing decoded) | {reads['getmany']:,.0f} | | | | |",
                f"| getmany + orjson + np.array (a hand-written consumer) | {reads['getmany_orjson']:,.0f} | | | | |",
            ]
        drain = entry.get("drain_per_s", {})
        for kind, rates in (("draining a backlog", drain), ("under open-loop overload", sat)):
            for strategy in (s for s in strategies if s in rates):
                rate = rates[strategy]
                what = _drained(entry, strategy, rule["min_seconds"]) if rates is drain else kind
                per_event = f"{rate / rates['per-event']:.1f}x" if rates.get("per-event") else ""
                sluice = f"{rates['adaptive'] / rate:.1f}x this" if rates.get("adaptive") and rate else ""
                lines.append(
                    f"| {LABELS[strategy]}, {what} | {rate:,.0f} | {rate / ceiling['best_per_s']:.2f} | "
                    f"{rate / transport:.2f} | {per_event} | {sluice} |"
                )
        if reads and drain.get("adaptive"):
            lines += [
                "",
                f"sluice's drain is {drain['adaptive'] / reads['getmany_orjson']:.2f} of getmany + orjson + np.array "
                f"and {drain['adaptive'] / reads['getmany']:.2f} of getmany alone, "
                "on the same backlog in the same run.",
            ]
        if drain.get("adaptive") and drain.get("minimal"):
            lines += [
                "",
                f"sluice's drain is **{drain['adaptive'] / drain['minimal']:.2f}** of the minimal pipeline's "
                "(the same job by hand, without sluice's guarantees), in the same run.",
            ]
        if not entry["points"]:
            lines.append("")
            continue
        lines += [
            "",
            "| strategy | load | offered/s | achieved/s | scored | p50 ms | p99 ms | p99.9 ms "
            "| worker CPU µs/event | generator CPU µs/event |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for p in entry["points"]:
            flag = " SATURATED" if p["saturated"] else ""
            lines.append(
                f"| {LABELS[p['strategy']]} | {p['fraction']:.0%}{flag} | {p['offered_per_s']:,.0f} | "
                f"{p['achieved_per_s']:,.0f} | {p['completed']:.1%} | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} | "
                f"{p['p999_ms']:.1f} | {p.get('worker_cpu_us', 0.0):.1f} | {p.get('generator_cpu_us', 0.0):.1f} |"
            )
        lines.append("")
    if any(entry["points"] for entry in results["models"].values()):
        lines.append("![p99 latency by offered load](latency.png)")
        _plot(results, out / "latency.png")
    (out / "latency.md").write_text("\n".join(lines) + "\n")


def _drained(entry: dict[str, Any], strategy: str, min_seconds: float) -> str:
    """A drain row's label: its backlog and how long it lasted (first output to last)."""
    seconds = entry["drain_seconds"][strategy]
    short = f", under {min_seconds:g} s" if seconds < min_seconds else ""
    cpu = entry.get("drain_cpu_us_per_event", {}).get(strategy)
    cpu_text = f", {cpu:.1f} CPU µs/event" if cpu else ""
    return f"draining {entry['drain_backlog'][strategy]:,} events in {seconds:.1f} s{short}{cpu_text}"


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        points = results["models"][model]["points"]
        for strategy in _strategies(results):
            mine = [p for p in points if p["strategy"] == strategy]
            if not mine:  # not run for this model (e.g. Faust take() for a stateful one)
                continue
            xs = [p["offered_per_s"] for p in mine]
            ys = [p["p99_ms"] for p in mine]
            ax.plot(xs, ys, marker="o", label=LABELS[strategy])
            for p in mine:
                if p["saturated"]:
                    ax.annotate("saturated", (p["offered_per_s"], p["p99_ms"]), fontsize=7)
        ax.axhline(results["budget_ms"], color="grey", linestyle="--", linewidth=1, label="budget")
        ax.set_yscale("log")
        ax.set_xlabel("offered load (events/s)")
        ax.set_ylabel("p99 end-to-end latency (ms)")
        ax.set_title(model)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
