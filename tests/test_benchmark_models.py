"""tools/benchmark_models.py runs and prints its table (format only: timings are never
asserted)."""
import json

import pytest

from d2ext.cli import benchmark_models


@pytest.mark.slow  # builds two R50-sized models (detectron2's Mask R-CNN, transformers' DETR)
def test_table_has_the_chosen_rows(tmp_path, capsys, monkeypatch):
    outputs, build_row = {}, benchmark_models.build_row

    def recording_build_row(name, *args):
        run, params = build_row(name, *args)

        def recorded():
            outputs[name] = run()
            return outputs[name]
        return recorded, params

    monkeypatch.setattr(benchmark_models, "build_row", recording_build_row)
    out_json = tmp_path / "models.json"
    assert benchmark_models.main(["--models", "maskrcnn_r50", "detr", "--size", "64", "--reps",
                                  "1", "--json", str(out_json)]) == 0
    rows = json.loads(out_json.read_text())["rows"]
    assert list(rows) == ["maskrcnn_r50", "detr"]
    assert all(r["ms"] > 0 and r["params"] > 0 for r in rows.values())
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(table) == 3  # header and the two rows
    for name, line in zip(rows, table[1:]):
        assert line.startswith(f"| {rows[name]['model']} |")
        assert benchmark_models.PUBLISHED[name]["source"] in line
    assert "| 1.00 |" in table[1]  # the Mask R-CNN row is the ratios' unit
    # Batch norms calibrated and threshold 0: the random Mask R-CNN does the trained model's
    # work (all 100 detections with masks), not an early exit.
    instances = outputs["maskrcnn_r50"]["instances"]
    assert len(instances) == 100 and instances.pred_masks.shape == (100, 64, 64)
    assert outputs["detr"]["segmentation"].shape == (64, 64)


def test_every_row_names_its_published_source():
    assert set(benchmark_models.PUBLISHED) == set(benchmark_models.ROWS)
    for entry in benchmark_models.PUBLISHED.values():
        assert entry["figure"] and entry["metric"] and entry["source"] and entry["speed"]


def test_rtdetr_needs_enough_positions_for_its_queries(capsys):
    assert benchmark_models.main(["--models", "rtdetr", "--size", "64"]) == 1
    assert "--size 64" in capsys.readouterr().err
