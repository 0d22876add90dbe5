"""The results page's PNG plots (matplotlib, no display needed). Each figure names its machine,
versions and date in its foot (``_machine.footer``); a benchmark that failed or did not run gets
no plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from _machine import footer  # noqa: E402
from _results_page import nbytes, nparams  # noqa: E402

OURS, PEFT, FLOOR = "#1f77b4", "#ff7f0e", "#7f7f7f"
TOOLS = {"adapterctl": ("adapterctl merge", OURS, "-"),
         "peft": ("PEFT (load + merge_and_unload + save)", PEFT, "-"),
         "cp": ("cp -r + sync (the floor)", FLOOR, "--")}


def _finish(fig, meta: dict, path: Path) -> None:
    fig.text(0.01, 0.01, footer(meta), fontsize=6.5, color="#444444", va="bottom")
    fig.subplots_adjust(bottom=0.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge_scaling(doc: dict, meta: dict, path: Path) -> None:
    sizes = doc["sizes"]
    xs = [s["params"] / 1e9 for s in sizes]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.8))
    for tool, (label, color, style) in TOOLS.items():
        pts = [(x, s["tools"][tool]) for x, s in zip(xs, sizes) if tool in s["tools"]]
        if not pts:
            continue
        ax_t.plot([x for x, _ in pts], [v["seconds"] for _, v in pts], style, marker="o",
                  color=color, label=label)
        ax_m.plot([x for x, _ in pts], [v["peak_rss_mb"] / 1e3 for _, v in pts], style,
                  marker="o", color=color, label=label)
        if tool == "adapterctl":
            ax_m.plot([x for x, _ in pts], [v["peak_anon_mb"] / 1e3 for _, v in pts], ":",
                      marker=".", color=color, label="adapterctl, anonymous part")
    ticks = [f"{nparams(s['params'])}\n{nbytes(s['base_bytes'])}" for s in sizes]
    for ax, ylabel in ((ax_t, "wall seconds (command + sync)"), (ax_m, "peak RSS, GB")):
        ax.set_xticks(xs, ticks, fontsize=8)
        ax.set_xlabel("base model (bf16 parameters, size on disk)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    ax_t.set_title("merge time vs model size")
    ax_m.set_title("merge peak memory vs model size")
    ax_m.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Merging an r=16 all-linear LoRA into a random bf16 Llama: median of "
                 f"{doc['rounds']} interleaved round(s), each tool its own process", fontsize=10)
    _finish(fig, meta, path)


GEN_GROUPS = (("base alone", "base (ours)", "base (transformers generate)"),
              ("1 adapter", "ours, 1 adapter (folded)", "PEFT unmerged"),
              ("mixed batch, 4 adapters", "ours, mixed 4 adapters", "PEFT mixed 4 adapters"))


def generate(doc: dict, meta: dict, path: Path) -> None:
    a = doc["args"]
    rows = {r["case"]: r for r in doc["rows"]}
    tokens = a["batch"] * a["new_tokens"]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.38
    for i, (group, ours, peft) in enumerate(GEN_GROUPS):
        for dx, case, color, who in ((-width / 2, ours, OURS, "adapterctl"),
                                     (width / 2, peft, PEFT, "PEFT / transformers")):
            r = rows[case]
            tps = tokens / r["total_s"]
            ax.bar(i + dx, tps, width, color=color, label=who if i == 0 else None)
            ax.text(i + dx, tps, f"{tps:.0f}\n{r['vs_base_total']:.2f}x base", ha="center",
                    va="bottom", fontsize=7)
    ax.set_xticks(range(len(GEN_GROUPS)), [g[0] for g in GEN_GROUPS])
    ax.set_ylabel(f"tokens/s ({a['clock']} time, {a['threads']} thread(s))")
    ax.margins(y=0.2)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"generate: {nparams(doc['params'])} random bf16 Llama, batch {a['batch']}, "
                 f"{a['prompt_len']}-token prompts, {a['new_tokens']} new tokens, r={a['r']} "
                 f"all-linear; whole call, best of {a['reps']}", fontsize=9)
    _finish(fig, meta, path)


def attach(doc: dict, meta: dict, path: Path) -> None:
    modes = (("end_to_end", "process start to adapter ready"), ("warm", "load + attach, imports warm"))
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.8))
    width = 0.38
    for ax, key, scale, ylabel in ((ax_t, "seconds", 1, "wall seconds"),
                                   (ax_m, "peak_rss_mib", 1, "peak RSS, MiB")):
        for i, (mode, _) in enumerate(modes):
            for dx, who, color, label in ((-width / 2, "adapterctl", OURS, "adapterctl"),
                                          (width / 2, "peft", PEFT, "PEFT")):
                v = doc[mode][who][key] * scale
                ax.bar(i + dx, v, width, color=color, label=label if i == 0 else None)
                ax.text(i + dx, v, f"{v:.2f}" if key == "seconds" else f"{v:.0f}", ha="center",
                        va="bottom", fontsize=7)
        ax.set_xticks(range(len(modes)), [m[1] for m in modes], fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.15)
    ax_t.legend(fontsize=8)
    fig.suptitle(f"attach: {doc['model']}; median of {doc['runs']}", fontsize=9)
    _finish(fig, meta, path)


def startup(doc: dict, meta: dict, path: Path) -> None:
    rows = doc["rows"]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    names = [r["case"] for r in rows][::-1]
    ms = [r["seconds"] * 1e3 for r in rows][::-1]
    colors = [OURS if n.startswith("adapterctl") else PEFT if "PEFT" in n else FLOOR for n in names]
    ax.barh(names, ms, color=colors)
    for y, v in enumerate(ms):
        ax.text(v, y, f" {v:.0f} ms", va="center", fontsize=8)
    ax.set_xlabel("wall milliseconds, process start to exit")
    ax.margins(x=0.15)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"start-up: median of {doc['repeat']} fresh processes", fontsize=9)
    fig.subplots_adjust(left=0.32)
    _finish(fig, meta, path)


PLOTS = {"merge_scaling": merge_scaling, "generate": generate, "attach": attach,
         "startup": startup}


def make_plots(results: dict, meta: dict, folder: Path) -> dict[str, str]:
    """One PNG per benchmark that produced figures: {step: path relative to the page}."""
    made = {}
    for name, fn in PLOTS.items():
        doc = results.get(name)
        if not doc or "error" in doc:
            continue
        fn(doc, meta, folder / f"{name}.png")
        made[name] = f"{folder.name}/{name}.png"
    return made
