"""The forwarding comparison's report (``oxidip bench forward``): a markdown table per
workload (medians, min-max, ratios to dcmsend, the sender's CPU and peak memory), issue 11's
targets checked against those medians, the raw runs as JSON, and a chart (PNG, matplotlib),
in the shape of ``oxidip bench compare``'s (``oxidip.bench.report``)."""

import functools
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from oxidip.bench.model import MIB, Measurement, Target, Workload
from oxidip.bench.report import (
    chart_unavailable,
    fmt_value,
    median_of,
    rate_of,
    ratio_of,
    runs_of,
    write_files,
)
from oxidip.bench.tools import cpu_model, versions

if TYPE_CHECKING:
    from oxidip.bench.forward import ForwardResults

__all__ = ["chart_unavailable", "check_targets", "markdown", "write"]

OXIDIP = "oxidip"
DCMSEND = "dcmtk dcmsend"
ALONE = "receiving alone"
WHILE_FORWARDING = "receiving while forwarding"


def _median_rate(ms: Sequence[Measurement], workload: Workload, who: str) -> float | None:
    runs = runs_of(ms, workload.key, who)
    return median_of(runs, rate_of(workload)) if runs else None


def check_targets(ms: Sequence[Measurement], workloads: Sequence[Workload]) -> list[Target]:
    """Issue 11's targets, on median values."""
    by_key = {w.key: w for w in workloads}
    targets = []
    if "small" in by_key:
        measured = ratio_of(ms, by_key["small"], OXIDIP, DCMSEND)
        targets.append(Target("small", "oxidip / dcmsend", measured, 1.5, "at least", "x"))
    if "ct" in by_key:
        measured = ratio_of(ms, by_key["ct"], OXIDIP, DCMSEND)
        targets.append(Target("ct", "oxidip / dcmsend", measured, 1.2, "at least", "x MB/s"))
    if "large" in by_key:
        runs = runs_of(ms, "large", OXIDIP)
        rss = max(m.peak_rss for m in runs) / MIB if runs else None
        what = "oxidip forwarding process peak RSS"
        targets.append(Target("large", what, rss, 100.0, "at most", "MiB"))
    if "receive" in by_key:
        measured = ratio_of(ms, by_key["receive"], WHILE_FORWARDING, ALONE)
        what = "receive rate while forwarding / alone"
        targets.append(Target("receive", what, measured, 0.9, "at least", "x"))
    return targets


def _table(ms: Sequence[Measurement], workload: Workload, who: Sequence[str]) -> list[str]:
    rate = rate_of(workload)
    unit = "MB/s" if workload.by_bytes else "inst/s"
    baseline = ALONE if workload.key == "receive" else DCMSEND
    per = "ms/GB" if workload.by_bytes else "us/inst"
    lines = [
        f"### {workload.key}: {workload.title}",
        "",
        (
            f"| sender | median {unit} | min-max {unit} | vs {baseline} | median s"
            f" | CPU {per} | peak RSS MiB |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in who:
        runs = runs_of(ms, workload.key, name)
        if not runs:
            continue
        rates = [rate(m) for m in runs]
        if workload.by_bytes:
            cpu = statistics.median(m.cpu_seconds * 1e3 / (m.bytes / 1e9) for m in runs)
        else:
            cpu = statistics.median(m.cpu_seconds * 1e6 / m.instances for m in runs)
        lines.append(
            f"| {name} | {statistics.median(rates):,.1f} | {min(rates):,.1f}-{max(rates):,.1f}"
            f" | {fmt_value(ratio_of(ms, workload, name, baseline), '.2f', 'x')}"
            f" | {statistics.median(m.seconds for m in runs):.3f} | {cpu:,.0f}"
            f" | {max(m.peak_rss for m in runs) / MIB:,.1f} |"
        )
    return [*lines, ""]


def markdown(results: "ForwardResults") -> str:
    context, ms = results.context, results.measurements
    lines = [
        f"# oxidip bench forward, {results.when.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Command: `{context.command}`",
        "",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()}"
        f" {platform.release()}, shared by sender and storescp. Versions: "
        + ", ".join(f"{k} {v}" for k, v in versions().items())
        + ".",
        "",
        (
            "The same files, stored by oxidip (received from the load generator), forwarded to"
            " dcmtk `storescp` (single process, writing into a fresh directory under"
            f" `{context.storage}` each run) by oxidip's engine (`_core.Forwarder`, one job on one"
            " association, in a process that only forwards), `dcmsend` and `storescu` (every file"
            " on one command line: one association; TCP_NODELAY=1). Senders alternate, the order"
            f" rotating each repetition; {context.repeats} repetitions; medians with min-max."
            " oxidip's time runs from submitting the job to its end (the engine lives in"
            " `oxidip serve`); dcmtk's from its process's start to its exit. CPU and peak RSS"
            " (`VmHWM`, from `wait4`) are the sender process's, for oxidip the Python interpreter"
            " included. `receive`: `oxidip serve` (SQLite registry) receiving from the load"
            " generator, alone and while the same process forwards the `small` files to storescp"
            " again and again (storescp niced: it stands for a destination on another machine;"
            " oxidip's forwarding threads run niced too, see `rust/forward/mod.rs`); its CPU"
            " and RSS are that process's."
        ),
        "",
        "## Targets (issue 11)",
        "",
        "| workload | measure | required | measured | met |",
        "|---|---|---:|---:|---|",
    ]
    for t in check_targets(ms, results.workloads):
        met = {True: "yes", False: "**no**", None: "n/a"}[t.met]
        lines.append(
            f"| {t.workload} | {t.what} | {t.direction} {t.required:g} {t.unit}"
            f" | {fmt_value(t.measured, '.2f', ' ' + t.unit)} | {met} |"
        )
    lines += ["", "## Results", ""]
    for w in results.workloads:
        lines += _table(ms, w, results.senders)
        if w.key == "receive" and results.forwarded_while_receiving:
            runs = results.forwarded_while_receiving
            lines += [
                "Forwarded meanwhile by the receiving process: "
                + ", ".join(f"{r.delivered:,} in {r.seconds:.1f} s" for r in runs)
                + ".",
                "",
            ]
    if results.failures:
        lines += ["## Failed runs", ""]
        lines += [
            f"- {f.workload} / {f.receiver} #{f.repetition}: {f.error}" for f in results.failures
        ]
        lines.append("")
    lines.append(
        "Raw runs (seconds): "
        + "; ".join(f"{m.workload}/{m.receiver}#{m.repetition} {m.seconds:.3f}" for m in ms)
    )
    return "\n".join(lines) + "\n"


def chart(path: Path, results: "ForwardResults") -> None:
    """Two panels: throughput relative to dcmsend (receive: to receiving alone), min-max as
    error bars; and the sender's peak RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms, workloads, who = results.measurements, results.workloads, results.senders
    fig, axes = plt.subplots(2, 1, figsize=(10, 8), constrained_layout=True)
    width = 0.8 / max(len(who), 1)
    for i, name in enumerate(who):
        xs, ratios, low, high, rss = [], [], [], [], []
        for j, w in enumerate(workloads):
            runs = runs_of(ms, w.key, name)
            base = _median_rate(ms, w, ALONE if w.key == "receive" else DCMSEND)
            if not runs or base is None:
                continue
            values = [rate_of(w)(m) / base for m in runs]
            median = statistics.median(values)
            xs.append(j + (i - (len(who) - 1) / 2) * width)
            ratios.append(median)
            low.append(median - min(values))
            high.append(max(values) - median)
            rss.append(max(m.peak_rss for m in runs) / MIB)
        if xs:
            axes[0].bar(xs, ratios, width, yerr=[low, high], label=name, capsize=2)
            axes[1].bar(xs, rss, width, label=name)
    axes[0].axhline(1.0, color="grey", linewidth=0.8)
    axes[0].set_ylabel("throughput / dcmsend\n(inst/s; MB/s for ct, large;\nreceive: / alone)")
    axes[1].set_ylabel("peak RSS, MiB")
    axes[1].axhline(100.0, color="grey", linewidth=0.8, linestyle="--")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xticks(range(len(workloads)), [w.key for w in workloads])
        ax.grid(axis="y", which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize="small")
    axes[0].set_title(f"oxidip bench forward, {results.when.strftime('%Y-%m-%d %H:%M')}")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(directory: Path, results: "ForwardResults", *, with_chart: bool = True) -> Path:
    """Writes ``forward-<date>-<hhmm>.md``, ``.json`` and, ``with_chart``, ``.png`` into
    ``directory``; returns the markdown's path."""
    draw = functools.partial(chart, results=results) if with_chart else None
    return write_files(directory, "forward", results, results.when, markdown(results), draw)[0]
