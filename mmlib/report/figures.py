"""The figures: Fig. 3 (per-class error) from collected results, Fig. 1-style class sizes, one run's curves.

Every figure reads on its own: a title that could serve as its caption, axes with units, error bars
named with their n, the legend outside the data, one colour per method throughout a figure.
``save_figure`` writes a figure as png and pdf.
"""

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import ticker

from mmlib import files, paper
from mmlib.data import imbalance, sources

MAX_CLASS_TICKS = 25  # beyond this many classes, label every k-th only


def save_figure(fig, out_dir, name: str) -> list[Path]:
    """Write out_dir/<name>.png and .pdf (out_dir None: the repository's figures/), each atomically; returns their
    paths."""
    paths = []
    for kind in ("png", "pdf"):
        path = Path(out_dir or files.FIGURES) / f"{name}.{kind}"
        # no creation date in the pdf: the same figure gives the same file
        metadata = {"CreationDate": None} if kind == "pdf" else {}
        files.atomic_write(path, lambda f, kind=kind, metadata=metadata: fig.savefig(
            f, format=kind, dpi=150, bbox_inches="tight", metadata=metadata))
        paths.append(path)
    return paths


def _legend_below(fig, handles, labels, title: str) -> None:
    """One legend for the whole figure, under its axes (never over the data)."""
    fig.legend(handles, labels, title=title, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(len(labels), 3), frameon=False)


# ---------------------------------------------------------------- Fig. 3

def plot_per_class(per_class) -> plt.Figure:
    """Fig. 3 as the paper draws it, with a many / medium / few summary beside it.

    per_class is ``cells.per_class``'s result. One row of panels per setting: per-class top-1
    error (classes ordered by training images, largest first, methods side by side, bars the mean
    over seeds, error bars ±1 std over them), and the many / medium / few-shot errors likewise.
    Methods asked for without a finished run are named in the legend as missing.
    """
    classes, groups = per_class.classes, per_class.groups
    if classes.empty:
        raise ValueError("nothing to draw: " + "; ".join(per_class.missing))
    settings = list(dict.fromkeys(classes["setting_label"]))
    series = list(dict.fromkeys(classes["row"]))
    colors = dict(zip(series, sns.color_palette(n_colors=len(series))))
    widest = classes.groupby("setting_label")["class"].nunique().max()
    class_width = min(15.0, max(5.0, 0.14 * widest * (len(series) + 1)))
    group_width = 1.2 + 0.25 * 3 * (len(series) + 1)
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(len(settings), 2, squeeze=False, width_ratios=[class_width, group_width],
                                 figsize=(class_width + group_width, 3.8 * len(settings)))
    for (class_ax, group_ax), setting in zip(axes, settings):
        shown = classes[classes["setting_label"] == setting]
        _bars(class_ax, shown, "class", colors)
        _class_ticks(class_ax, shown)
        class_ax.set(title=f"{setting}: per class", ylabel="top-1 error (%)",
                     xlabel="class, ordered by training images (in brackets)")
        grouped = groups[groups["setting_label"] == setting]
        _bars(group_ax, grouped, "group", colors)
        group_ax.set_xticks(range(grouped["group"].nunique()),
                            [f"{g}\n({n} class{'es' if n > 1 else ''})" for g, n in
                             grouped.drop_duplicates("group")[["group", "classes"]].itertuples(index=False)],
                            fontsize=8)
        group_ax.set(title=f"{setting}: by group", ylabel="top-1 error (%)",
                     xlabel=f"training images per class: many > {imbalance.MANY_SHOT_ABOVE},\n"
                            f"medium {imbalance.FEW_SHOT_BELOW}-{imbalance.MANY_SHOT_ABOVE}, "
                            f"few < {imbalance.FEW_SHOT_BELOW}")
        for ax in (class_ax, group_ax):
            ax.set_ylim(0, min(100.0, 1.08 * np.nanmax(shown["error_mean"] + shown["error_std"].fillna(0))) or 1)
    seeds = classes.drop_duplicates("row").set_index("row")["seeds"]
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[s]) for s in series]
    labels = [f"{s} (n = {seeds[s]} seed{'s' if seeds[s] > 1 else ''})" for s in series]
    # asked for but never trained: an empty box in the legend, so the figure says what it lacks
    handles += [plt.Rectangle((0, 0), 1, 1, fill=False, edgecolor="0.5", linestyle="--") for _ in per_class.missing]
    labels += [f"missing (no finished run): {m.split(' (searched')[0]}" for m in per_class.missing]
    _legend_below(fig, handles, labels, "method")
    epoch = classes["epoch"].iloc[0]
    fig.suptitle(f"Per-class top-1 test error at the {epoch} epoch\n"
                 f"bars: mean over seeds; error bars: ±1 std over the n seeds of each method (legend)")
    fig.tight_layout()
    return fig


def _bars(ax, frame: pd.DataFrame, position: str, colors: dict) -> None:
    """Grouped bars: one group per position value (class or group, in frame order), one bar per series."""
    series = [s for s in colors if s in set(frame["row"])]
    width = 0.8 / len(series)
    for i, label in enumerate(series):
        bars = frame[frame["row"] == label]
        x = np.arange(len(bars)) + (i - (len(series) - 1) / 2) * width
        spread = bars["error_std"].fillna(0) if bars["error_std"].notna().any() else None
        ax.bar(x, bars["error_mean"], width, yerr=spread, capsize=2, color=colors[label],
               error_kw={"elinewidth": 1, "ecolor": "0.25"})


def _class_ticks(ax, classes: pd.DataFrame) -> None:
    """One-line class labels "C<rank> name (count)"; every k-th only where there are many classes."""
    first = classes.drop_duplicates("class")
    step = max(1, math.ceil(len(first) / MAX_CLASS_TICKS))
    positions = list(range(0, len(first), step))
    rows = first.iloc[positions]
    many = len(first) > MAX_CLASS_TICKS
    labels = [f"C{p + 1} ({count})" if many else f"C{p + 1} {name} ({count})"
              for p, name, count in zip(positions, rows["name"], rows["train_count"])]
    ax.set_xticks(positions, labels, rotation=90 if many else 35, ha="center" if many else "right",
                  fontsize=7 if many else 8)
    ax.set_xlim(-0.6, len(first) - 0.4)


# ---------------------------------------------------------------- class sizes (Fig. 1)

KNOWN_SETTINGS = {**paper.SETTINGS, **{s.name: s for s in paper.QUICK_SETTINGS}}


def setting_class_counts(setting: str) -> list[int]:
    """Training images per class of a paper setting (or a quick one), by LDAM-DRW's rule; no images needed."""
    if setting not in KNOWN_SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; valid: {', '.join(KNOWN_SETTINGS)}")
    chosen = KNOWN_SETTINGS[setting]
    return imbalance.class_counts(*sources.dataset_size(chosen.dataset), chosen.imb_type, chosen.ratio)


def plot_class_counts(settings, ax=None, log: bool = True):
    """Fig. 1-style curves: training images per class, largest class first, one line per setting.

    settings: a setting name or a list of them. The many / medium / few-shot boundaries (100, 20)
    are drawn as dashed lines. Returns the figure.
    """
    names = [settings] if isinstance(settings, str) else list(settings)
    if not names:
        raise ValueError("give at least one setting")
    counts = {name: sorted(setting_class_counts(name), reverse=True) for name in names}
    if ax is None:
        with sns.axes_style("whitegrid"):
            _, ax = plt.subplots(figsize=(8.0, 4.0))
    for name, color in zip(names, sns.color_palette(n_colors=len(names))):
        ax.plot(np.arange(1, len(counts[name]) + 1), counts[name], marker="o", markersize=3, color=color,
                drawstyle="steps-mid", label=KNOWN_SETTINGS[name].label)
    for bound, text, side in ((imbalance.MANY_SHOT_ABOVE, f"many-shot: > {imbalance.MANY_SHOT_ABOVE}", "bottom"),
                              (imbalance.FEW_SHOT_BELOW, f"few-shot: < {imbalance.FEW_SHOT_BELOW}", "top")):
        ax.axhline(bound, color="grey", linestyle="--", linewidth=1)
        ax.text(0.99, bound, text, transform=ax.get_yaxis_transform(), ha="right", va=side, fontsize=8, color="grey")
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlabel("class rank (1 = most training images)")
    ax.set_ylabel("training images per class" + (" (log scale)" if log else ""))
    ax.set_title("Training images per class of the imbalanced training sets")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), title="setting")
    ax.figure.tight_layout()
    return ax.figure


# ---------------------------------------------------------------- one run (train.ipynb)

def plot_history(result: dict):
    """Learning curves of one run: training loss, learning rate, training and test error per epoch."""
    history = pd.DataFrame(result["history"])
    with sns.axes_style("whitegrid"):
        fig, (loss_ax, lr_ax, error_ax) = plt.subplots(1, 3, figsize=(13.0, 3.8))
    loss_ax.plot(history["epoch"], history["train_loss"])
    loss_ax.set(xlabel="epoch", title="training loss")
    loss_ax.set_ylabel("training loss (mean per image"
                       + (", log scale)" if _log_axis(loss_ax, history["train_loss"]) else ")"))
    lr_ax.plot(history["epoch"], history["lr"])
    lr_ax.set(xlabel="epoch", title="learning rate")
    lr_ax.set_ylabel("learning rate" + (" (log scale)" if _log_axis(lr_ax, history["lr"]) else ""))
    error_ax.plot(history["epoch"], history["train_error"], label="training (augmented, as sampled)")
    evaluated = history.dropna(subset=["test_error"]) if "test_error" in history else history.iloc[:0]
    error_ax.plot(evaluated["epoch"], evaluated["test_error"], marker=".", label="test")
    error_ax.set(xlabel="epoch", ylabel="top-1 error (%)", title="top-1 error")
    error_ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    fig.suptitle(f"Learning curves of {_run_title(result)}")
    fig.tight_layout()
    return fig


def _log_axis(ax, values: pd.Series) -> bool:
    """A log y axis with plain tick labels (0.001, not 10^-3) where the values span more than a decade."""
    positive = values[values > 0]
    if positive.empty or positive.max() < 10 * positive.min():
        return False
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    return True


def plot_run_per_class(result: dict):
    """Per-class test error of one run at the final and the best epoch, classes by training count."""
    counts = result["class_counts"]
    order = np.argsort(-np.asarray(counts["cls_num_list"]), kind="stable")
    frame = pd.DataFrame([
        {"class": f"{counts['classes'][c]} ({counts['cls_num_list'][c]})", "epoch": epoch,
         "error": result[epoch]["per_class_error"][c]}
        for epoch in ("final", "best") for c in order
    ])
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(order)), 4.0))
    sns.barplot(frame, x="class", y="error", hue="epoch", ax=ax)
    ax.set(xlabel="class (training images), most training images first", ylabel="top-1 error (%)")
    ax.tick_params(axis="x", rotation=90)
    ax.legend(title="epoch (best: chosen on the test set)", loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(f"Per-class test error of {_run_title(result)}")
    fig.tight_layout()
    return fig


def plot_confusion(result: dict, epoch: str = "final"):
    """Confusion matrix of one run (rows: true class, columns: predicted), normalised per true class."""
    confusion = np.asarray(result[epoch]["confusion"], dtype=float)
    confusion /= np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    classes = result["class_counts"]["classes"]
    size = min(12.0, 2.0 + 0.45 * len(classes))
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    sns.heatmap(confusion, ax=ax, cmap="viridis", vmin=0, vmax=1, square=True,
                xticklabels=classes if len(classes) <= 20 else False,
                yticklabels=classes if len(classes) <= 20 else False,
                cbar_kws={"label": "share of the true class's test images"})
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"Test confusion at the {epoch} epoch, rows normalised\n{_run_title(result)}")
    fig.tight_layout()
    return fig


def _run_title(result: dict) -> str:
    config = result["config"]["config"]
    variant = " (released code)" if config["method"].startswith("mm") and config["mm_variant"] == "released" else ""
    variant += f" + SAM rho={config['sam_rho']:g}" if config.get("sam_rho") else ""  # results before SAM lack it
    return (f"{config['method']}{variant}, seed {config['seed']}, {config['arch']}, {config['epochs']} epochs: "
            f"{result['class_counts']['description'].split(':')[0]}")
