"""Training curves from detectron2's metrics.json (one JSON object per line, written by
JSONWriter): losses, pixel accuracy, mIoU and AP over iterations, as PNG files."""
import json
import logging
import os

logger = logging.getLogger(__name__)

# plot file name -> (title, y label, keys); losses are every key containing "loss".
METRIC_PLOTS = {
    "pixel_accuracy": ("Pixel accuracy", "pACC (%)", ["sem_seg/pACC"]),
    "miou": ("Mean IoU", "mIoU (%)", ["sem_seg/mIoU"]),
    "ap": ("Average precision", "AP", ["bbox/AP", "segm/AP"]),
}


def read_metrics(path):
    """{key: [(iteration, value), ...]} from a metrics.json; lines that are not complete JSON
    objects (a run killed mid-write) are skipped."""
    series = {}
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict) or "iteration" not in record:
                continue
            for key, value in record.items():
                if key != "iteration" and isinstance(value, (int, float)):
                    series.setdefault(key, []).append((record["iteration"], value))
    return series


# A PNG text chunk on every plot: a --plot-dir file at a plot's path is replaced only if it
# carries it, so a user's own losses.png there is never lost.
PLOT_MARK = ("Software", "d2ext tools/plot_metrics.py")


def is_metrics_plot(path):
    """Whether ``path`` is a PNG that :func:`plot_metrics` wrote (it carries PLOT_MARK)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get(PLOT_MARK[0]) == PLOT_MARK[1]
    except (OSError, ValueError):  # a folder, not an image
        return False


def _plot(path, title, ylabel, curves):
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    # One colour per curve: the default cycle repeats after 10 (the Mask2Former-style losses
    # have 13 series), tab20 after 20.
    colors = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20").colors
    for (key, points), color in zip(curves.items(), colors * (1 + len(curves) // 20)):
        points = sorted(dict(points).items())  # a resumed run rewrites iterations: keep the last
        ax.plot([p[0] for p in points], [p[1] for p in points], label=key, color=color,
                marker="o" if len(points) < 30 else None)
    ax.set(title=title, xlabel="iteration", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=dict([PLOT_MARK]))
    plt.close(fig)


def plot_metrics(output_dir, plot_dir=None):
    """Write ``losses.png``, ``pixel_accuracy.png``, ``miou.png`` and ``ap.png`` into
    ``plot_dir`` (default ``output_dir/plots``) from ``output_dir/metrics.json``; series absent
    from the file are skipped. Returns the paths written.

    ``output_dir/plots`` is this function's own folder: its plots are replaced. In another
    ``plot_dir`` an existing file is replaced only if it is such a plot (PLOT_MARK); any other
    raises FileExistsError before anything is written."""
    metrics_file = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(metrics_file):
        raise FileNotFoundError(f"{metrics_file} does not exist: give the OUTPUT_DIR of a "
                                "training run (detectron2 writes metrics.json there).")
    series = read_metrics(metrics_file)
    own = os.path.join(output_dir, "plots")
    plot_dir = plot_dir or own
    os.makedirs(plot_dir, exist_ok=True)
    plots = {"losses": ("Losses", "loss", sorted(k for k in series if "loss" in k))}
    plots.update(METRIC_PLOTS)
    todo = {}
    for name, (title, ylabel, keys) in plots.items():
        curves = {k: series[k] for k in keys if k in series}
        if curves:
            todo[os.path.join(plot_dir, name + ".png")] = (title, ylabel, curves)
    if os.path.realpath(plot_dir) != os.path.realpath(own):
        in_the_way = [p for p in todo if os.path.lexists(p) and not is_metrics_plot(p)]
        if in_the_way:
            raise FileExistsError(f"{', '.join(in_the_way)}: not written by "
                                  "tools/plot_metrics.py, so not replaced; choose another "
                                  "--plot-dir")
    written = []
    for path, (title, ylabel, curves) in todo.items():
        written.append(path)
        _plot(path, title, ylabel, curves)
    logger.info(f"Training curves written: {written}" if written else
                f"{metrics_file}: no losses or metrics to plot")
    return written
