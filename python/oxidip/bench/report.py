"""The comparison's report: a markdown table per workload (medians, min-max, ratios to dcmtk
storescp, CPU, memory, latency), the issue's targets checked against those medians, the raw
runs as JSON, and a chart (PNG, matplotlib)."""

import datetime
import functools
import os
import platform
import shutil
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from oxidip.bench.model import MIB, Measurement, Results, Target, Workload
from oxidip.bench.receivers import BASELINE_OXIDIP
from oxidip.bench.tools import cpu_model, versions

__all__ = [
    "check_targets",
    "fmt_value",
    "median_of",
    "rate_of",
    "ratio_of",
    "runs_of",
    "write",
]

BASELINE = "dcmtk storescp"
FORK = "dcmtk storescp --fork"
OXIDIP_VARIANTS = ("oxidip", "oxidip postgresql")


def runs_of(ms: Sequence[Measurement], workload: str, receiver: str) -> list[Measurement]:
    return [m for m in ms if m.workload == workload and m.receiver == receiver]


def median_of(runs: Sequence[Measurement], value: Callable[[Measurement], float]) -> float:
    return statistics.median(value(m) for m in runs)


def rate_of(workload: Workload) -> Callable[[Measurement], float]:
    """What a workload is compared by: MB/s for large instances, instances/s otherwise."""
    if workload.by_bytes:
        return lambda m: m.mb_per_second
    return lambda m: m.per_second


def ratio_of(
    ms: Sequence[Measurement], workload: Workload, receiver: str, baseline: str
) -> float | None:
    ours, theirs = runs_of(ms, workload.key, receiver), runs_of(ms, workload.key, baseline)
    if not ours or not theirs:
        return None
    rate = rate_of(workload)
    return median_of(ours, rate) / median_of(theirs, rate)


def _filesystem(path: str) -> str:
    """The filesystem type of the mount holding ``path`` (Linux)."""
    best, kind = "", "unknown"
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    real = os.path.realpath(path)
    for line in lines:
        fields = line.split()
        if len(fields) < 3 or len(fields[1]) < len(best):
            continue
        if real == fields[1] or real.startswith(fields[1].rstrip("/") + "/"):
            best, kind = fields[1], fields[2]
    return kind


def check_targets(
    ms: Sequence[Measurement], workloads: Sequence[Workload], storage_fs: str
) -> list[Target]:
    """Issue 4's targets, for each oxidip variant measured, on median values."""
    by_key = {w.key: w for w in workloads}
    targets: list[Target] = []
    ratios = (
        ("small", BASELINE, 1.5),
        ("small", "pynetdicom", 10.0),
        ("small", "dicom-rs storescp", 2.0),
        ("small-16", FORK, 1.5),
        ("ct", BASELINE, 1.2),
        ("ct-4", BASELINE, 1.2),
    )
    for ox in OXIDIP_VARIANTS:
        if not any(m.receiver == ox for m in ms):
            continue
        for key, baseline, required in ratios:
            if key in by_key:
                measured = ratio_of(ms, by_key[key], ox, baseline)
                unit = "x MB/s" if by_key[key].by_bytes else "x"
                what = f"{ox} / {baseline}"
                targets.append(Target(key, what, measured, required, "at least", unit))
        for key in ("ct", "ct-4"):
            if storage_fs == "tmpfs" and key in by_key:
                runs = runs_of(ms, key, ox)
                mbs = median_of(runs, lambda m: m.mb_per_second) if runs else None
                targets.append(Target(key, f"{ox} MB/s on tmpfs", mbs, 1000.0, "at least", "MB/s"))
        if "large" in by_key:
            runs = runs_of(ms, "large", ox)
            rss = max(m.peak_rss for m in runs) / MIB if runs else None
            targets.append(Target("large", f"{ox} peak RSS", rss, 100.0, "at most", "MiB"))
        if "idle" in by_key and "small-16" in by_key:
            idle, busy = runs_of(ms, "idle", ox), runs_of(ms, "small-16", ox)
            share = None
            if idle and busy:
                rate = rate_of(by_key["idle"])
                share = median_of(idle, rate) / median_of(busy, rate)
            targets.append(
                Target("idle", f"{ox} idle / small-16 throughput", share, 0.9, "at least", "x")
            )
    return targets


def fmt_value(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + suffix


def _ceiling_line(results: Results, workload: Workload) -> list[str]:
    runs = [c for c in results.ceilings if c.workload == workload.key]
    if not runs:
        return []
    if workload.by_bytes:
        rates, unit = [c.bytes / c.seconds / 1e6 for c in runs], "MB/s"
    else:
        rates, unit = [c.instances / c.seconds for c in runs], "files/s"
    line = (
        "Write ceiling (one thread creating, writing, closing and renaming the same files on"
        f" the same storage; no network, no parsing): median {statistics.median(rates):,.0f}"
        f" {unit}, {min(rates):,.0f}-{max(rates):,.0f}."
    )
    return [line, ""]


def _workload_table(
    ms: Sequence[Measurement], workload: Workload, receivers: Sequence[str]
) -> list[str]:
    rate = rate_of(workload)
    unit = "MB/s" if workload.by_bytes else "inst/s"
    per = "ms/GB" if workload.by_bytes else "us/inst"
    lines = [
        f"### {workload.key}: {workload.title}",
        "",
        (
            f"| receiver | median {unit} | min-max {unit} | vs storescp | vs --fork "
            f"| CPU {per} | peak RSS MiB | p50 / p99 ms | registered s |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in receivers:
        runs = runs_of(ms, workload.key, name)
        if not runs:
            continue
        rates = [rate(m) for m in runs]
        if workload.by_bytes:
            cpu = median_of(runs, lambda m: m.cpu_seconds * 1e3 / (m.bytes / 1e9))
        else:
            cpu = median_of(runs, lambda m: m.cpu_seconds * 1e6 / m.instances)
        registered = [m.registered_seconds for m in runs if m.registered_seconds is not None]
        lines.append(
            f"| {name} | {statistics.median(rates):,.0f} | {min(rates):,.0f}-{max(rates):,.0f}"
            f" | {fmt_value(ratio_of(ms, workload, name, BASELINE), '.2f', 'x')}"
            f" | {fmt_value(ratio_of(ms, workload, name, FORK), '.2f', 'x')}"
            f" | {cpu:,.0f} | {max(m.peak_rss for m in runs) / MIB:,.1f}"
            f" | {median_of(runs, lambda m: m.latency_p50_ms):.2f} /"
            f" {median_of(runs, lambda m: m.latency_p99_ms):.2f}"
            f" | {fmt_value(statistics.median(registered) if registered else None, '.2f')} |"
        )
    return [*lines, ""]


def markdown(results: Results) -> str:
    context, when, ms = results.context, results.when, results.measurements
    workloads, failures = results.workloads, results.failures
    storage_fs = _filesystem(context.storage)
    targets = check_targets(ms, workloads, storage_fs)
    cpus = ",".join(map(str, context.cpus or []))
    confined = f", every process confined to CPU {cpus}" if cpus else ""
    lines = [
        f"# oxidip bench compare, {when.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Command: `{context.command}`",
        "",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()}"
        f" {platform.release()}, shared by sender and receiver"
        + confined
        + ". Versions: "
        + ", ".join(f"{k} {v}" for k, v in versions().items())
        + ".",
        "",
        (
            f"Storage: a fresh directory per run under `{context.storage}` ({storage_fs})."
            " Sender:"
            " oxidip's Rust load generator (in-memory instances, fresh UIDs, explicit VR little"
            " endian, fragments to each receiver's announced maximum PDU). Every receiver on its"
            " defaults, a fresh process per run; the order rotates every repetition; "
            f"{context.repeats} repetitions. Medians, with min-max over the repetitions. CPU is"
            " the receiver's (user + system, all its processes), for oxidip until every instance"
            " is registered. Peak RSS: the receiver's largest process, whole lifetime."
            " `dcmtk storescp --ignore` stores nothing: it is a reference for what this sender"
            " and machine allow a receiver that writes no file, not a contender."
        ),
        "",
        "## Targets (issue 4)",
        "",
        "| workload | measure | required | measured | met |",
        "|---|---|---:|---:|---|",
    ]
    for t in targets:
        met = {True: "yes", False: "**no**", None: "n/a"}[t.met]
        lines.append(
            f"| {t.workload} | {t.what} | {t.direction} {t.required:g} {t.unit}"
            f" | {fmt_value(t.measured, '.2f', ' ' + t.unit)} | {met} |"
        )
    lines += _before_after(results)
    lines += ["", "## Results", ""]
    for w in workloads:
        lines += _workload_table(ms, w, results.receivers)
        lines += _ceiling_line(results, w)
    if failures:
        lines += ["## Failed runs", ""]
        lines += [f"- {f.workload} / {f.receiver} #{f.repetition}: {f.error}" for f in failures]
        lines.append("")
    lines.append(
        "Raw runs (seconds): "
        + "; ".join(f"{m.workload}/{m.receiver}#{m.repetition} {m.seconds:.3f}" for m in ms)
    )
    return "\n".join(lines) + "\n"


def _before_after(results: Results) -> list[str]:
    """oxidip against the build ``--baseline`` ran (when it did), per workload: medians and
    their ratio."""
    ms = results.measurements
    if not any(m.receiver == BASELINE_OXIDIP for m in ms):
        return []
    lines = [
        "",
        f"## oxidip against `{BASELINE_OXIDIP}` (the `--baseline` build), same run",
        "",
        "| workload | oxidip | baseline | oxidip / baseline | runs each |",
        "|---|---:|---:|---:|---:|",
    ]
    for w in results.workloads:
        ours, theirs = runs_of(ms, w.key, "oxidip"), runs_of(ms, w.key, BASELINE_OXIDIP)
        if not ours or not theirs:
            continue
        rate, unit = rate_of(w), "MB/s" if w.by_bytes else "inst/s"
        lines.append(
            f"| {w.key} | {median_of(ours, rate):,.0f} {unit} | {median_of(theirs, rate):,.0f} {unit}"
            f" | {fmt_value(ratio_of(ms, w, 'oxidip', BASELINE_OXIDIP), '.2f', 'x')}"
            f" | {len(ours)} / {len(theirs)} |"
        )
    return lines


def chart(path: Path, results: Results) -> None:
    """Three panels per workload group: throughput relative to dcmtk storescp (min-max as
    error bars), receiver CPU per unit of work, and peak RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads, receivers, ms = results.workloads, results.receivers, results.measurements
    fig, axes = plt.subplots(3, 1, figsize=(12, 12), constrained_layout=True)
    width = 0.8 / max(len(receivers), 1)
    keys = [w.key for w in workloads]
    for i, name in enumerate(receivers):
        xs, ratios, low, high, cpu, rss = [], [], [], [], [], []
        for j, w in enumerate(workloads):
            runs = runs_of(ms, w.key, name)
            # The single-process storescp cannot run with idle associations: --fork then.
            base = runs_of(ms, w.key, BASELINE) or runs_of(ms, w.key, FORK)
            if not runs:
                continue
            rate = rate_of(w)
            scale = median_of(base, rate) if base else median_of(runs, rate)
            values = [rate(m) / scale for m in runs]
            median = statistics.median(values)
            xs.append(j + (i - (len(receivers) - 1) / 2) * width)
            ratios.append(median)
            low.append(median - min(values))
            high.append(max(values) - median)
            per_unit = (m.bytes / 1e9 if w.by_bytes else m.instances / 1e3 for m in runs)
            cpu.append(statistics.median(m.cpu_seconds / u for m, u in zip(runs, per_unit)))
            rss.append(max(m.peak_rss for m in runs) / MIB)
        axes[0].bar(xs, ratios, width, yerr=[low, high], label=name, capsize=2)
        axes[1].bar(xs, cpu, width, label=name)
        axes[2].bar(xs, rss, width, label=name)
    axes[0].axhline(1.0, color="grey", linewidth=0.8)
    axes[0].set_ylabel(f"throughput / {BASELINE}\n(inst/s; MB/s for ct, large; idle: / --fork)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("receiver CPU s\nper 1000 inst (per GB: ct, large)")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("peak RSS, MiB")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xticks(range(len(keys)), keys)
        ax.grid(axis="y", which="both", alpha=0.3)
    # Below the panels, where it hides no bar.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize="small")
    axes[0].set_title(f"oxidip bench compare, {results.when.strftime('%Y-%m-%d %H:%M')}")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def chart_unavailable() -> str | None:
    """Why ``chart`` cannot draw (matplotlib is not installed), or None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        return str(error)
    return None


def write_files(
    directory: Path,
    name: str,
    results: msgspec.Struct,
    when: datetime.datetime,
    text: str,
    draw: Callable[[Path], None] | None,
) -> list[Path]:
    """Writes a comparison's ``<name>-<date>-<hhmm>.md`` (``text``), ``.json`` (``results``)
    and, with ``draw``, ``.png`` (``draw(path)``) into ``directory``; returns their paths,
    the markdown first. Date and time in the name: several runs a day each keep their
    report."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"{name}-{when.strftime('%Y-%m-%d-%H%M')}"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_bytes(msgspec.json.format(msgspec.json.encode(results)))
    paths = [stem.with_suffix(".md"), stem.with_suffix(".json")]
    if draw is not None:
        draw(stem.with_suffix(".png"))
        paths.append(stem.with_suffix(".png"))
    return paths


def write(directory: Path, results: Results, *, with_chart: bool = True) -> Path:
    """Writes ``compare-<date>-<hhmm>.md``, ``.json`` (the results) and, ``with_chart``,
    ``.png`` into ``directory``, and copies named ``latest``; returns the markdown's path."""
    draw = functools.partial(chart, results=results) if with_chart else None
    paths = write_files(directory, "compare", results, results.when, markdown(results), draw)
    for path in paths:
        shutil.copyfile(path, (directory / "latest").with_suffix(path.suffix))
    return paths[0]
