"""The pull comparison's report (``oxidip bench pull``): a markdown table per workload
(medians, min-max, ratios to the dcmtk tool doing the same and to Orthanc's own push, the
client's CPU and peak memory), issue 12's targets checked against those medians, the raw runs
as JSON, and a chart (PNG, matplotlib), in the shape of ``oxidip bench forward``'s."""

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
    from oxidip.bench.pull import PullResults

__all__ = ["chart_unavailable", "check_targets", "markdown", "write"]

OXIDIP_MOVE = "oxidip pull move"
OXIDIP_GET = "oxidip pull get"
MOVESCU = "dcmtk movescu"
GETSCU = "dcmtk getscu"
ORTHANC_PUSH = "Orthanc push"
#: Who each is compared with: the dcmtk tool retrieving the same way.
REFERENCE = {OXIDIP_MOVE: MOVESCU, OXIDIP_GET: GETSCU}


def overhead(ms: Sequence[Measurement], workload: Workload, who: str) -> float | None:
    """How much longer ``who`` takes than Orthanc pushing the same series (median times):
    0.25 is 25 % more."""
    ours, push = runs_of(ms, workload.key, who), runs_of(ms, workload.key, ORTHANC_PUSH)
    if not ours or not push:
        return None
    return (
        statistics.median(m.seconds for m in ours) / statistics.median(m.seconds for m in push) - 1
    )


def check_targets(ms: Sequence[Measurement], workloads: Sequence[Workload]) -> list[Target]:
    """Issue 12's target, on median values: oxidip at least as fast as dcmtk, each way."""
    targets = []
    for workload in workloads:
        unit = "x MB/s" if workload.by_bytes else "x"
        for ours, theirs in REFERENCE.items():
            measured = ratio_of(ms, workload, ours, theirs)
            what = f"{ours} / {theirs}"
            targets.append(Target(workload.key, what, measured, 1.0, "at least", unit))
    return targets


def _table(ms: Sequence[Measurement], workload: Workload, who: Sequence[str]) -> list[str]:
    rate = rate_of(workload)
    unit = "MB/s" if workload.by_bytes else "inst/s"
    per = "ms/GB" if workload.by_bytes else "us/inst"
    lines = [
        (
            f"### {workload.key}: {workload.title.split(', ')[0]},"
            f" {workload.associations} series per study"
        ),
        "",
        (
            f"| method | median {unit} | min-max {unit} | vs dcmtk | over Orthanc push"
            f" | median s | client CPU {per} | client peak RSS MiB |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
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
        reference = REFERENCE.get(name)
        versus = ratio_of(ms, workload, name, reference) if reference else None
        over = overhead(ms, workload, name) if name != ORTHANC_PUSH else None
        measured_client = name != ORTHANC_PUSH
        lines.append(
            f"| {name} | {statistics.median(rates):,.1f} | {min(rates):,.1f}-{max(rates):,.1f}"
            f" | {fmt_value(versus, '.2f', 'x')} | {fmt_value(None if over is None else over * 100, '+.0f', ' %')}"
            f" | {statistics.median(m.seconds for m in runs):.3f}"
            f" | {f'{cpu:,.0f}' if measured_client else 'n/a'}"
            f" | {f'{max(m.peak_rss for m in runs) / MIB:,.1f}' if measured_client else 'n/a'} |"
        )
    return [*lines, ""]


def markdown(results: "PullResults") -> str:
    context, ms = results.context, results.measurements
    lines = [
        f"# oxidip bench pull, {results.when.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Command: `{context.command}`",
        "",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()}"
        f" {platform.release()}, shared by Orthanc, the client and the receiver. Versions: "
        + ", ".join(f"{k} {v}" for k, v in versions().items())
        + f", Orthanc {results.orthanc_version}.",
        "",
        (
            "The same series, held by Orthanc (storage under"
            f" `{context.storage}`), retrieved into a fresh directory each run by `oxidip pull"
            " --serve` (its own receiver in the same process; study-level queries, C-FIND walk"
            " down to the series, then one C-MOVE or C-GET per series, the registry's"
            " completeness check at the end), dcmtk `movescu` (one C-MOVE per series on one"
            " association, to dcmtk `storescp`) and `getscu` (one C-GET per series, one"
            " process and association each: dcmtk 3.6.7's getscu dies of SIGSEGV on the second"
            " query file of an association), both given the series (no C-FIND; `-td`/`-ta` 60 s; TCP_NODELAY=1)."
            " `Orthanc push`: Orthanc sending the same studies to `storescp` itself (REST"
            " `/modalities/.../store`): the PACS's own send rate as a user starts it. It is no floor:"
            " Orthanc runs it as a job, and its C-MOVE to the same `storescp` (movescu) is faster;"
            " the ratio to movescu is the tighter measure of oxidip's overhead."
            " oxidip's and dcmtk's times are their processes', start to exit; Orthanc push's the"
            " REST call's. Methods alternate, the order rotating each repetition;"
            f" {context.repeats} repetitions; medians with min-max. CPU (summed) and peak RSS are the"
            " client processes' (for oxidip, the interpreter and its in-process receiver)."
        ),
        "",
        "## Targets (issue 12)",
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
        lines += _table(ms, w, results.methods)
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


def chart(path: Path, results: "PullResults") -> None:
    """Throughput relative to Orthanc's own push, min-max as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms, workloads, who = results.measurements, results.workloads, results.methods
    fig, ax = plt.subplots(figsize=(10, 5), constrained_layout=True)
    width = 0.8 / max(len(who), 1)
    for i, name in enumerate(who):
        xs, ratios, low, high = [], [], [], []
        for j, w in enumerate(workloads):
            runs, pushes = runs_of(ms, w.key, name), runs_of(ms, w.key, ORTHANC_PUSH)
            if not runs or not pushes:
                continue
            rate = rate_of(w)
            base = median_of(pushes, rate)
            values = [rate(m) / base for m in runs]
            median = statistics.median(values)
            xs.append(j + (i - (len(who) - 1) / 2) * width)
            ratios.append(median)
            low.append(median - min(values))
            high.append(max(values) - median)
        if xs:
            ax.bar(xs, ratios, width, yerr=[low, high], label=name, capsize=2)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_ylabel("throughput / Orthanc push\n(inst/s; MB/s for ct)")
    ax.set_xticks(range(len(workloads)), [w.key for w in workloads])
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(f"oxidip bench pull, {results.when.strftime('%Y-%m-%d %H:%M')}")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(directory: Path, results: "PullResults", *, with_chart: bool = True) -> Path:
    """Writes ``pull-<date>-<hhmm>.md``, ``.json`` and, ``with_chart``, ``.png`` into
    ``directory``; returns the markdown's path."""
    draw = functools.partial(chart, results=results) if with_chart else None
    return write_files(directory, "pull", results, results.when, markdown(results), draw)[0]
