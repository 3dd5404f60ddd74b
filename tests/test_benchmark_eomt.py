"""tools/benchmark.py runs and reports every row (format only: timings are never asserted)."""
import argparse
import json
import os
from unittest import mock

import onnxruntime
import pytest
import torch

from d2ext.cli import benchmark as bench
from d2ext.errors import UserError

from helpers import CONFIGS


def test_benchmark_smoke(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    bench.main(["--config-file", os.path.join(CONFIGS, "quickstart_eomt.yaml"), "--peers",
                "--size", "48", "--reps", "1", "--batch", "2", "--json", str(out_json),
                "MODEL.DEVICE", "cpu", "DATASETS.TEST", "()"])
    printed = capsys.readouterr().out
    result = json.loads(out_json.read_text())
    rows = {"d2ext", "d2ext_b2", "d2ext_e2e", "floor", "hf_eomt", "hf_eomt_e2e", "hf_m2f"}
    assert set(result["ms"]) == rows and all(v > 0 for v in result["ms"].values())
    assert "post-processing" in result["parts_ms"]
    # The printed ratios and throughput are those of the timed rows.
    ms = result["ms"]
    assert result["images_per_s"] == pytest.approx(2000 / ms["d2ext_b2"])
    assert f"{ms['d2ext'] / ms['floor']:.2f} x floor" in printed
    assert f"{ms['d2ext'] / ms['hf_eomt']:.2f} x hf_eomt" in printed
    assert f"{ms['d2ext_e2e'] / ms['hf_eomt_e2e']:.2f} x hf_eomt_e2e" in printed
    assert f"{result['images_per_s']:.2f} images/s" in printed


@pytest.mark.slow
def test_benchmark_bf16_and_compiled_rows(tmp_path, capsys):
    """--precision applies to the model rows; --compile adds the compiled model (MODEL.COMPILE's
    path) next to the eager one, its compilation timed apart (a CPU compiles the tiny EoMT in
    about half a minute)."""
    out_json = tmp_path / "bench.json"
    bench.main(["--config-file", os.path.join(CONFIGS, "quickstart_eomt.yaml"), "--size", "48",
                "--reps", "1", "--batch", "1", "--precision", "bf16", "--compile", "--json",
                str(out_json), "MODEL.DEVICE", "cpu", "DATASETS.TEST", "()"])
    result = json.loads(out_json.read_text())
    assert result["precision"] == "bf16" and result["compiled"] is True
    ms = result["ms"]
    assert set(ms) == {"d2ext", "d2ext_e2e", "d2ext_compiled"} and all(v > 0 for v in ms.values())
    assert set(result["compile_s"]) == {"d2ext_compiled"}
    printed = capsys.readouterr().out
    assert "precision bf16, compiled" in printed
    assert f"{ms['d2ext_compiled'] / ms['d2ext']:.2f} x d2ext" in printed
    assert "compilation (first call, not in the times above): d2ext_compiled" in printed


def test_peak_allocated_counts_the_tensors_pytorch_allocates():
    """--memory's measure: the peak of the live tensors within the call (8 MiB here, never the
    16 MiB allocated in all), whatever was allocated before it."""
    from d2ext.utils.timing import peak_allocated_mb

    before = torch.ones(1024, 1024)

    def fn():
        a, b = torch.ones(1024, 1024), torch.ones(1024, 1024)  # 4 MiB each
        del a, b
        return torch.ones(2048, 1024), before.add_(1)  # in place: no allocation

    assert peak_allocated_mb(fn, "cpu") == pytest.approx(8.0, abs=0.01)


def test_benchmark_training_step_and_equal_work_rows(tmp_path, capsys):
    """--train times a real training step of d2ext and of transformers' Mask2Former head fed the
    same pyramid maps; both update their weights."""
    out_json = tmp_path / "bench.json"
    bench.main(["--config-file", os.path.join(CONFIGS, "quickstart_mask2former.yaml"), "--peers",
                "--train", "--size", "64", "--reps", "1", "--batch", "1", "--json",
                str(out_json), "MODEL.DEVICE", "cpu", "DATASETS.TEST", "()"])
    result = json.loads(out_json.read_text())
    ms = result["ms"]
    assert {"hf_m2f_head", "d2ext_train", "hf_m2f_head_train"} <= set(ms)
    printed = capsys.readouterr().out
    assert f"{ms['d2ext'] / ms['hf_m2f_head']:.2f} x hf_m2f_head" in printed
    assert f"{ms['d2ext_train'] / ms['hf_m2f_head_train']:.2f} x hf_m2f_head_train" in printed

    from detectron2.modeling import build_model

    from d2ext.engine import setup_cfg

    cfg = setup_cfg(os.path.join(CONFIGS, "quickstart_mask2former.yaml"),
                    ["MODEL.DEVICE", "cpu", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "64"])
    model = build_model(cfg).eval()
    head = bench.hf_mask2former_head(cfg, "cpu")
    steps = bench.training_steps(cfg, model, head, bench.synthetic_batch(1, 64, 4, "cpu"), "cpu")
    ours = model.transformer_decoder.class_embed.weight.detach().clone()
    theirs = head[0]["classes"].weight.detach().clone()
    backbone = next(model.backbone.parameters()).detach().clone()
    steps["d2ext_train"]()
    assert not torch.equal(ours, model.transformer_decoder.class_embed.weight)
    steps["hf_m2f_head_train"]()
    assert not torch.equal(theirs, head[0]["classes"].weight)
    assert not torch.equal(backbone, next(model.backbone.parameters()))
    assert not model.training  # left in eval mode for the inference rows


def test_benchmark_times_an_onnx_export_next_to_eager(tmp_path, capsys):
    """--exported adds ONNX Runtime's rows, model only and end to end, each with its ratio to
    the eager row of the same run; the export's EoMT masked-attention state is the eager one's."""
    from detectron2.modeling import build_model

    from d2ext.engine import setup_cfg
    from d2ext.export import export_model

    cfg = setup_cfg(os.path.join(CONFIGS, "quickstart_eomt.yaml"), ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    model.attn_mask_probs.copy_(torch.tensor([0.0, 1.0]))
    export_model(model, cfg, str(tmp_path / "onnx"), "onnx")
    out_json = tmp_path / "bench.json"
    bench.main(["--config-file", os.path.join(CONFIGS, "quickstart_eomt.yaml"), "--size", "48",
                "--reps", "1", "--batch", "1", "--exported", str(tmp_path / "onnx"),
                "--json", str(out_json), "MODEL.DEVICE", "cpu", "DATASETS.TEST", "()"])
    ms = json.loads(out_json.read_text())["ms"]
    assert set(ms) == {"d2ext", "d2ext_e2e", "onnxruntime", "onnxruntime_e2e"}
    printed = capsys.readouterr().out
    assert f"{ms['onnxruntime'] / ms['d2ext']:.2f} x d2ext" in printed
    assert f"{ms['onnxruntime_e2e'] / ms['d2ext_e2e']:.2f} x d2ext_e2e" in printed
    eager = build_model(cfg).eval()
    eager.attn_mask_probs.zero_()  # the benchmark's default: the trained state
    sessions = []
    real_session = onnxruntime.InferenceSession
    with mock.patch.object(onnxruntime, "InferenceSession",
                           lambda *a, **k: sessions.append(real_session(*a, **k)) or sessions[-1]):
        bench.load_export(argparse.Namespace(exported=str(tmp_path / "onnx"), size=48), cfg, eager)
    assert eager.attn_mask_probs.tolist() == [0.0, 1.0]
    # Its idle threads must not spin on the cores the eager rows are timed on.
    options = sessions[0].get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(UserError, match="no export.json there"):
        bench.load_export(argparse.Namespace(exported=str(tmp_path), size=48), cfg, eager)
