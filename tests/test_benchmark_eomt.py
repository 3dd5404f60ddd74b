"""tools/benchmark.py runs and reports every row (format only: timings are never asserted)."""
import importlib.util
import json
import os

from conftest import CONFIGS, REPO


def test_benchmark_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "benchmark", os.path.join(REPO, "tools", "benchmark.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out_json = tmp_path / "bench.json"
    bench.main(["--config-file", os.path.join(CONFIGS, "quickstart_eomt.yaml"), "--peers",
                "--size", "48", "--reps", "1", "--batch", "2", "--json", str(out_json),
                "MODEL.DEVICE", "cpu", "DATASETS.TEST", "()"])
    printed = capsys.readouterr().out
    result = json.loads(out_json.read_text())
    rows = {"d2ext", "d2ext_b2", "d2ext_e2e", "floor", "hf_eomt", "hf_eomt_e2e", "hf_m2f"}
    assert set(result["ms"]) == rows and all(v > 0 for v in result["ms"].values())
    assert result["images_per_s"] > 0 and "post-processing" in result["parts_ms"]
    assert "x hf_eomt" in printed and "x floor" in printed and "images/s" in printed


def test_benchmark_bf16_and_compiled_rows(tmp_path, capsys):
    """--precision and --compile apply to the model rows and are reported (a CPU compiles the
    tiny EoMT in about half a minute)."""
    spec = importlib.util.spec_from_file_location(
        "benchmark", os.path.join(REPO, "tools", "benchmark.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out_json = tmp_path / "bench.json"
    bench.main(["--config-file", os.path.join(CONFIGS, "quickstart_eomt.yaml"), "--size", "48",
                "--reps", "1", "--batch", "1", "--precision", "bf16", "--compile", "--json",
                str(out_json), "MODEL.DEVICE", "cpu", "DATASETS.TEST", "()"])
    result = json.loads(out_json.read_text())
    assert result["precision"] == "bf16" and result["compiled"] is True
    assert set(result["ms"]) == {"d2ext", "d2ext_e2e"} and all(v > 0 for v in result["ms"].values())
    assert "precision bf16, compiled" in capsys.readouterr().out
