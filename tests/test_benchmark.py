import sys

from conftest import REPO

sys.path.insert(0, REPO + "/tools")
import benchmark  # noqa: E402


def test_benchmark_reports_latency_parts_and_peer_ratios(capsys, synthetic_root):
    code = benchmark.main(["--config-file", f"{REPO}/configs/quickstart_mask2former.yaml",
                           "--size", "96", "--reps", "1", "--batch", "2", "--peers",
                           "DATASETS.SYNTHETIC.ROOT", synthetic_root])
    out = capsys.readouterr().out
    assert code == 0
    assert "d2ext latency:" in out and "images/s at batch 2" in out and "peak memory:" in out
    for part in ("backbone (ViT)", "neck", "pixel decoder", "transformer decoder",
                 "post-processing"):
        assert part in out
    assert "x hf_eomt" in out and "x hf_m2f" in out and "1.00 x floor" in out
