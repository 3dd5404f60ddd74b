"""tools/plot_metrics.py: PNG curves from a detectron2 metrics.json."""
import json

import matplotlib.image as mpimg


def write_metrics(path, with_ap):
    lines = []
    for it in range(19, 200, 20):
        lines.append(json.dumps({"iteration": it, "total_loss": 2.0 / (it + 1),
                                 "loss_sem_seg": 1.5 / (it + 1), "lr": 0.001}))
        if it % 100 == 99:
            record = {"iteration": it, "sem_seg/mIoU": it / 4, "sem_seg/pACC": it / 3}
            if with_ap:
                record.update({"bbox/AP": it / 5, "segm/AP": it / 6})
            lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + '\n{"iteration": 200, "total_l')  # killed mid-write


def test_plots_every_series_present(tmp_path, load_tool):
    write_metrics(tmp_path / "metrics.json", with_ap=True)
    assert load_tool("plot_metrics").main([str(tmp_path)]) == 0
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["ap.png", "losses.png", "miou.png", "pixel_accuracy.png"]
    for name in names:
        image = mpimg.imread(tmp_path / "plots" / name)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0


def test_absent_series_are_skipped_and_missing_file_reported(tmp_path, capsys, load_tool):
    write_metrics(tmp_path / "metrics.json", with_ap=False)
    plot_metrics = load_tool("plot_metrics")
    assert plot_metrics.main([str(tmp_path), "--plot-dir", str(tmp_path / "p")]) == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "losses.png", "miou.png", "pixel_accuracy.png"]
    assert plot_metrics.main([str(tmp_path / "nowhere")]) == 1
    assert "metrics.json" in capsys.readouterr().err


def test_every_curve_has_its_own_colour(tmp_path, monkeypatch):
    import matplotlib.axes

    from d2ext.utils import metrics_plots

    colours = []
    original = matplotlib.axes.Axes.plot

    def recording_plot(self, *args, **kwargs):
        colours.append(kwargs.get("color"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", recording_plot)
    curves = {f"loss_{i}": [(0, 1.0), (1, 0.5)] for i in range(13)}
    metrics_plots._plot(str(tmp_path / "losses.png"), "losses", "loss", curves)
    assert len(colours) == 13 and len(set(colours)) == 13
