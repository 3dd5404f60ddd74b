"""Training, evaluation, resume and multi-process runs through detectron2's trainer."""
import json
import math
import os

import pytest
import torch
from detectron2.data import MetadataCatalog

from d2ext.checkpoint import AtomicCheckpointer
from d2ext.engine import Trainer, setup_cfg

from helpers import CONFIGS, copypaste_rows, is_score, run_tool, tiny_opts

TINY_MASKRCNN = ["MODEL.DINO.WEIGHTS", "", "MODEL.FPN.OUT_CHANNELS", "64",
                 "MODEL.ROI_HEADS.NUM_CLASSES", "4", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
                 "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
                 "SOLVER.AMP.ENABLED", "False", "DATASETS.TRAIN", "('d2ext_synthetic_train',)",
                 "DATASETS.TEST", "('d2ext_synthetic_val',)"]


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
@pytest.mark.parametrize("config, arch", [("dinov3_maskrcnn.yaml", "dinov3_tiny16"),
                                          ("dinov2_maskrcnn.yaml", "dinov2_tiny14")])
def test_maskrcnn_iterations_have_finite_losses(synthetic_root, tmp_path, config, arch):
    cfg = setup_cfg(os.path.join(CONFIGS, config),
                    tiny_opts(synthetic_root, tmp_path, max_iter=3) + TINY_MASKRCNN
                    + ["MODEL.DINO.ARCH", arch])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = [m for m in read_metrics(tmp_path) if "total_loss" in m]
    assert losses and all(math.isfinite(m["total_loss"]) for m in losses)
    assert {"loss_mask", "loss_cls", "loss_rpn_cls"} <= set(losses[-1])
    assert os.path.isfile(tmp_path / "model_final.pth")


@pytest.mark.slow
def test_resume_continues_at_saved_iteration_and_best_checkpoint_is_kept(synthetic_root, tmp_path):
    opts = tiny_opts(synthetic_root, tmp_path, max_iter=4) + [
        "TEST.EVAL_PERIOD", "2", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    trainer = Trainer(setup_cfg(os.path.join(CONFIGS, "quickstart.yaml"), opts))
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert os.path.isfile(tmp_path / "model_best.pth")  # kept by BestCheckpointer (segm/AP)
    aps = [m["segm/AP"] for m in read_metrics(tmp_path) if "segm/AP" in m]
    assert aps and all(is_score(ap) for ap in aps)
    first_run = [m["iteration"] for m in read_metrics(tmp_path) if "total_loss" in m]

    opts[opts.index("SOLVER.MAX_ITER") + 1] = "6"
    resumed = Trainer(setup_cfg(os.path.join(CONFIGS, "quickstart.yaml"), opts))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4  # model_final.pth was saved after iteration 3
    assert resumed.scheduler.last_epoch == 4  # the LR schedule resumes too
    resumed.train()
    iterations = [m["iteration"] for m in read_metrics(tmp_path) if "total_loss" in m]
    # metrics.json is appended, never rewritten; the resumed run logs only iterations 4..5
    assert iterations[:len(first_run)] == first_run and first_run[-1] == 3
    assert iterations[len(first_run):] and all(4 <= i <= 5 for i in iterations[len(first_run):])
    assert resumed.iter == 6  # detectron2 leaves iter at max_iter after training


@pytest.mark.slow
def test_eval_only_on_a_coco_dataset_registered_from_the_command_line(synthetic_root, tmp_path,
                                                                     tiny_cfg):
    meta = MetadataCatalog.get("d2ext_synthetic_val")
    from detectron2.data import DatasetCatalog

    DatasetCatalog.get("d2ext_synthetic_val")  # make sure its files exist
    opts = tiny_opts(synthetic_root, tmp_path) + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                                                  "DATASETS.TEST", "('my_val',)"]
    result = run_tool("tools/train_net.py", "--config-file", "configs/quickstart.yaml",
                      "--eval-only", "--register-coco", "my_val", meta.json_file,
                      meta.image_root, *opts)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "copypaste: Task: segm" in log and "copypaste: AP,AP50,AP75,APs,APm,APl" in log
    segm = copypaste_rows(log, "segm")
    assert all(is_score(segm[k]) for k in ("AP", "AP50", "AP75"))
    assert "No CUDA runtime" not in log  # a known dependency warning, silenced by the tools
    assert os.path.isfile(tmp_path / "inference" / "my_val" / "coco_instances_results.json")


@pytest.mark.slow
def test_two_process_gloo_training(synthetic_root, tmp_path):
    result = run_tool("tools/train_net.py", "--config-file", "configs/quickstart.yaml",
                      "--num-gpus", "2", "--dist-url", "auto",
                      *tiny_opts(synthetic_root, tmp_path, max_iter=2))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "log.txt") as f:
        assert "World size: 2" in f.read()
    assert os.path.isfile(tmp_path / "model_final.pth")


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    checkpointer = AtomicCheckpointer(model, save_dir=str(tmp_path))
    checkpointer.save("model_final")
    saved = torch.load(tmp_path / "model_final.pth", weights_only=False)["model"]

    def crash(data, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    with torch.no_grad():
        model.weight.add_(1.0)
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_final")
    monkeypatch.undo()
    again = torch.load(tmp_path / "model_final.pth", weights_only=False)["model"]
    assert torch.equal(again["weight"], saved["weight"])
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_final.pth")


_SAVE_AND_HANG = """
import sys, time, torch
from d2ext.checkpoint import AtomicCheckpointer
def hang(data, f):
    f.write(b"half")
    f.flush()
    print("writing", flush=True)
    time.sleep(600)
torch.save = hang
AtomicCheckpointer(torch.nn.Linear(2, 2), save_dir=sys.argv[1]).save("model_0000009")
"""


@pytest.mark.slow
def test_a_save_killed_mid_write_leaves_nothing_once_the_next_save_runs(tmp_path):
    import signal
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", _SAVE_AND_HANG, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".model_0000009.pth")]
    assert len(leftovers) == 1  # the temporary file exists while the save runs
    checkpointer = AtomicCheckpointer(torch.nn.Linear(2, 2), save_dir=str(tmp_path),
                                      tag_last=False)
    checkpointer.save("model_best")
    assert leftovers[0] in os.listdir(tmp_path)  # a live process's save is left alone
    child.send_signal(signal.SIGKILL)  # no clean-up runs
    child.wait()
    checkpointer.save("model_best")
    assert sorted(os.listdir(tmp_path)) == ["model_best.pth"]


def test_pkl_weights_load_numpy_and_refuse_code(tmp_path):
    import pickle

    import numpy as np

    from d2ext.checkpoint import WeightsPickleError, load_pickled_weights

    good = tmp_path / "model.pkl"
    with open(good, "wb") as f:
        pickle.dump({"model": {"w": np.arange(3.0)}, "__author__": "someone"}, f)
    assert load_pickled_weights(str(good))["model"]["w"].tolist() == [0.0, 1.0, 2.0]

    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pkl"
    with open(bad, "wb") as f:
        pickle.dump({"model": Exploit(), "__author__": "x"}, f)
    with pytest.raises(WeightsPickleError, match="evil.pkl.*posix.system|evil.pkl.*os.system"):
        load_pickled_weights(str(bad))
    assert not marker.exists()


def test_resume_restores_the_best_metric(tmp_path):
    import json

    from detectron2.engine import hooks

    from d2ext.engine.trainer import restore_best_metric

    metrics = tmp_path / "metrics.json"
    rows = [{"iteration": 9, "segm/AP": 16.25}, {"iteration": 19, "segm/AP": 15.41},
            {"iteration": 29, "segm/AP": 30.0}]  # iteration 29 comes after the resumed one
    metrics.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"iteration": 3')
    best = hooks.BestCheckpointer(10, None, "segm/AP", mode="max")
    restore_best_metric(best, str(metrics), before_iter=20)
    assert (best.best_metric, best.best_iter) == (16.25, 9)


@pytest.mark.parametrize("config, key", [("quickstart.yaml", "MODEL.ROI_HEADS.NUM_CLASSES"),
                                         ("quickstart_mask2former.yaml",
                                          "MODEL.SEM_SEG_HEAD.NUM_CLASSES"),
                                         ("quickstart_eomt.yaml",
                                          "MODEL.SEM_SEG_HEAD.NUM_CLASSES")])
def test_class_count_below_the_datasets_stops_with_the_key(synthetic_root, tmp_path, config, key):
    from d2ext.engine import num_classes_key

    cfg = setup_cfg(os.path.join(CONFIGS, config),
                    tiny_opts(synthetic_root, tmp_path) + [key, "3", "MODEL.DEVICE", "cpu"])
    assert num_classes_key(cfg) == key
    with pytest.raises(ValueError, match=f"has 4 classes but {key} is 3: set {key} 4"):
        Trainer(cfg)


def test_user_mistakes_get_one_line_errors_naming_the_file_or_key(synthetic_root, tmp_path):
    from d2ext.data.datasets import DatasetError, load_coco_instances

    with pytest.raises(ValueError, match=r"MODEL.META_ARCHITECTURE='MaskRCNN' is not "
                                         r"registered; choose one of \[.*'DinoMask2Former'"):
        setup_cfg(os.path.join(CONFIGS, "quickstart.yaml"),
                  tiny_opts(synthetic_root, tmp_path) + ["MODEL.META_ARCHITECTURE", "MaskRCNN"])
    for text, match in (("{not json", "not valid JSON"), ("[1, 2]", "holds a JSON list")):
        path = tmp_path / "bad.json"
        path.write_text(text)
        with pytest.raises(DatasetError, match=f"bad.json: {match}"):
            load_coco_instances("bad", str(path), str(tmp_path))
    fake = tmp_path / "weights.pth"
    fake.write_text("hello, I am a text file")
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="weights.pth: not a PyTorch checkpoint"):
        AtomicCheckpointer(model).load(str(fake))


def test_checkpoints_get_the_users_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        AtomicCheckpointer(torch.nn.Linear(2, 2), save_dir=str(tmp_path)).save("model_x")
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "model_x.pth").st_mode & 0o777) == 0o644


def test_train_net_logs_d2ext_messages(synthetic_root, tmp_path):
    import logging

    from d2ext.cli import train_net

    d2ext_logger = logging.getLogger("d2ext")
    # Whatever earlier tests set up is put aside, and put back afterwards.
    saved = d2ext_logger.handlers[:], d2ext_logger.level, d2ext_logger.propagate
    d2ext_logger.handlers.clear()
    try:
        args = train_net.argument_parser().parse_args(
            ["--config-file", os.path.join(CONFIGS, "quickstart.yaml"),
             *tiny_opts(synthetic_root, tmp_path)])
        train_net.setup(args)
        # e.g. where demo.png was written is shown, and kept in OUTPUT_DIR/log.txt
        logging.getLogger("d2ext.engine").info("a d2ext message for log.txt")
        for handler in d2ext_logger.handlers:
            handler.flush()
        files = [getattr(h.stream, "name", None) for h in d2ext_logger.handlers
                 if isinstance(h, logging.StreamHandler)]
    finally:
        d2ext_logger.handlers[:] = saved[0]
        d2ext_logger.setLevel(saved[1])
        d2ext_logger.propagate = saved[2]
    assert str(tmp_path / "log.txt") in files  # beside the console's handler
    assert "a d2ext message for log.txt" in (tmp_path / "log.txt").read_text()


@pytest.mark.slow
def test_tools_start_without_known_dependency_warnings():
    import subprocess
    import sys

    from helpers import REPO

    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    result = subprocess.run([sys.executable, "tools/demo.py", "--help"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "--config-file" in result.stdout
    assert "torch.jit.script" not in result.stderr and "Warning" not in result.stderr


@pytest.mark.slow
def test_import_d2ext_leaves_the_heavy_libraries_to_the_commands_that_use_them():
    import subprocess
    import sys

    heavy = ["transformers", "scipy", "fiftyone", "segment_anything", "matplotlib"]
    code = f"import sys, d2ext; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
