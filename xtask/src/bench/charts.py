"""Charts for docs/benchmarks.md, from the summary `cargo xtask bench` writes.

python3 - SUMMARY.json OUT_DIR (the harness passes this script on stdin).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

summary_path, out_dir = sys.argv[1], sys.argv[2]
with open(summary_path) as f:
    summary = json.load(f)
metrics = summary["metrics"]

COLOURS = {
    "postern": "#2a7ab0",
    "postern plaintext": "#2a7ab0",
    "eBPF sk_lookup": "#2a7ab0",
    "haproxy": "#d9822b",
    "haproxy plaintext": "#d9822b",
    "nginx": "#3d9a50",
    "stunnel": "#a05195",
    "direct": "#888888",
    "nftables REDIRECT": "#888888",
}


def bars(ax, metric, field, title, unit, lower_is_better):
    rows = metrics.get(metric, {}).get("contestants", {})
    names = [n for n, r in rows.items() if r.get(field) is not None and not r.get("failed")]
    values = [rows[n][field] for n in names]
    ax.bar(names, values, color=[COLOURS.get(n, "#444444") for n in names])
    ax.set_title(title, fontsize=9)
    better = "lower is better" if lower_is_better else "higher is better"
    ax.set_ylabel(f"{unit} ({better})", fontsize=8)
    ax.tick_params(axis="x", labelsize=7, rotation=15)
    ax.tick_params(axis="y", labelsize=7)
    for i, v in enumerate(values):
        ax.annotate(f"{v:,.0f}" if v >= 10 else f"{v:.2f}", (i, v), ha="center", va="bottom", fontsize=7)


def figure(panels, path, title):
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(13, 3.6 * rows))
    axes = list(axes.flat) if hasattr(axes, "flat") else [axes]
    for ax, panel in zip(axes, panels):
        panel(ax)
    for ax in axes[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(f"{out_dir}/{path}", dpi=90)
    plt.close(fig)


def metric_panel(metric, field, lower_is_better):
    info = metrics.get(metric, {})
    unit = info.get("cpu_unit" if field == "cpu_us" else "unit", "")
    title = info.get("title", metric)
    return lambda ax: bars(ax, metric, field, title, unit, lower_is_better)


figure(
    [metric_panel(m, "cpu_us", True) for m in
     ["connections-rsa", "connections-ecdsa", "connections-rsa-resumed", "requests-saturation",
      "bulk-up", "bulk-down", "steering"]],
    "benchmarks-cpu.png",
    "Proxy CPU time per operation, one core (the fair figure: the client saturates first)",
)
figure(
    [metric_panel(m, "rate", False) for m in
     ["connections-rsa", "connections-ecdsa", "requests-saturation", "bulk-down",
      "plain-requests", "plain-bulk-down"]],
    "benchmarks-rates.png",
    "Rates measured (load generator on the other core)",
)


def latency(ax, metric):
    rows = metrics.get(metric, {}).get("contestants", {})
    names = [n for n, r in rows.items() if r.get("p50_us") is not None and not r.get("failed")]
    width = 0.27
    for k, (field, label) in enumerate([("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")]):
        xs = [i + (k - 1) * width for i in range(len(names))]
        ax.bar(xs, [rows[n][field] for n in names], width, label=label)
    ax.set_xticks(range(len(names)), names, fontsize=7, rotation=15)
    ax.set_yscale("log")
    ax.set_ylabel("µs (lower is better)", fontsize=8)
    ax.set_title(metrics.get(metric, {}).get("title", metric), fontsize=9)
    ax.legend(fontsize=7)


def memory(ax, key, title, unit):
    mem = summary["memory"]
    names = list(mem)
    if key == "idle":
        values = [mem[n]["idle_kib"] / 1024 for n in names]
    else:
        values = [mem[n]["per_connection_kib"].get(key) or 0 for n in names]
    ax.bar(names, values, color=[COLOURS.get(n, "#444444") for n in names])
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(f"{unit} (lower is better)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    for i, v in enumerate(values):
        ax.annotate(f"{v:.1f}", (i, v), ha="center", va="bottom", fontsize=7)


counts = sorted({c for m in summary["memory"].values() for c in m["per_connection_kib"]}, key=int)
panels = [
    lambda ax: latency(ax, "requests-fixed-rate"),
    lambda ax: latency(ax, "requests-saturation"),
    lambda ax: memory(ax, "idle", "Resident size, idle", "MiB"),
]
panels += [
    (lambda c: lambda ax: memory(ax, c, f"Memory per idle mTLS connection, {int(c):,} held", "KiB"))(c)
    for c in counts
]
figure(panels, "benchmarks-latency-memory.png", "Latency (keep-alive) and memory")
