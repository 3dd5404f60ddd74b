"""tools/predict.py's images/s next to a loop over DefaultPredictor, in one run.

  python tools/benchmark_predict.py                          # EoMT and SAM 3, 32 images
  python tools/benchmark_predict.py --models eomt --num-images 8 --reps 1 --image-size 128
  python tools/benchmark_predict.py --models eomt --eomt-config configs/dinov3_eomt_small.yaml \\
      --image-size 640 --device cuda                      # ViT-S 640 on a GPU

Random weights (the cost does not depend on them; no download): EoMT from --eomt-config (the
tiny configs/quickstart_eomt.yaml by default) in its trained state (masked attention off),
saved once so every process loads the same checkpoint; SAM 3 text prompts on a tiny random
SAM 3 at --sam3-size with --phrases prompts. The images are random RGB at --image-size square.

Rows: "loop" is what users write by hand, ``load_predictor`` then, per file, ``read_image_any``
and ``predictor(image)``, timed from the first image to the last; "loop + writing" also writes
each image's instances as predict.py does (the same JSON line, RLE masks), the loop a user
labelling a folder by hand needs. "predict bB pP" is
``tools/predict.py --batch-size B --num-gpus P``: "steady" is its own count (run.json's
``last_run``: from every process ready to every process done, reading and writing included);
"end to end" adds starting the processes and building the model. Each figure is the median of
--reps runs; runs are interleaved, each round in a new random order.
"""
import argparse
import gc
import json
import os
import random
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from . import run_tool

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_images(folder, count, size, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
            os.path.join(folder, f"{i:05d}.png"))
    return folder


def save_tiny_sam3(directory, image_size, words):
    """A random SAM 3 of a few layers at ``image_size`` with a word tokenizer over ``words``,
    saved as a user's save_pretrained directory."""
    from transformers import Sam3Config, Sam3Model

    from ..modeling.text_prompt import word_tokenizer

    small = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)
    grid = image_size // 14
    config = Sam3Config(
        vision_config=dict(
            backbone_config=dict(model_type="sam3_vit_model", num_hidden_layers=2, patch_size=14,
                                 image_size=image_size, pretrain_image_size=image_size,
                                 window_size=4, global_attn_indexes=[1], **small),
            fpn_hidden_size=32,
            backbone_feature_sizes=[[4 * grid] * 2, [2 * grid] * 2, [grid] * 2]),
        text_config=dict(num_hidden_layers=1, max_position_embeddings=32,
                         vocab_size=len(words) + 4, projection_dim=32, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, **small),
        geometry_encoder_config=dict(num_layers=1, **small),
        detr_encoder_config=dict(num_layers=1, **small),
        detr_decoder_config=dict(num_layers=1, num_queries=10, **small),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2))
    torch.manual_seed(0)
    Sam3Model(config).save_pretrained(directory)
    word_tokenizer(words).save_pretrained(directory)
    return directory


def model_setups(args, tmp):
    """{name: (config file, overrides)} of the benchmarked models."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from ..engine import setup_cfg
    from ..modeling.meta_arch import capabilities

    common = ["MODEL.DEVICE", args.device]
    setups = {}
    if "eomt" in args.models:
        opts = common + ["MODEL.DINO.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", str(args.image_size),
                         "INPUT.MAX_SIZE_TEST", str(args.image_size), "INPUT.IMAGE_SIZE",
                         str(args.image_size)]
        cfg = setup_cfg(args.eomt_config, opts)
        torch.manual_seed(0)
        model = build_model(cfg)
        capabilities(model).trained_state(model)  # masked attention off, as once trained
        DetectionCheckpointer(model, save_dir=tmp).save("eomt_random")
        setups["eomt"] = (args.eomt_config,
                          opts + ["MODEL.WEIGHTS", os.path.join(tmp, "eomt_random.pth")])
    if "sam3" in args.models:
        words = ["object", "thing", "duck", "panda", "dice", "cup", "dog", "cat"]
        directory = save_tiny_sam3(os.path.join(tmp, "sam3"), args.sam3_size, words)
        classes = (words * args.phrases)[:args.phrases]
        setups["sam3"] = (os.path.join(REPO, "configs", "sam3_text.yaml"), common + [
            "MODEL.TEXT_PROMPT.WEIGHTS", directory, "MODEL.TEXT_PROMPT.IMAGE_SIZE",
            str(args.sam3_size), "MODEL.TEXT_PROMPT.CLASSES", str(classes),
            "DATASETS.TEST", "()"])
    return setups


def loop_rate(config_file, opts, images, out_file=None):
    """Images/s of a loop over DefaultPredictor (d2ext's load_predictor); with ``out_file``,
    each image's instances are also written there as predict.py writes them (one JSON line,
    RLE masks scoring at least 0.3), as a labelling loop written by hand must."""
    from ..data.image_io import read_image_any
    from ..engine import load_predictor, setup_cfg
    from ..engine.batch_predict import instances_record

    predictor = load_predictor(setup_cfg(config_file, opts))
    files = sorted(os.path.join(images, f) for f in os.listdir(images))
    sink = open(out_file, "w") if out_file else None
    start = time.perf_counter()
    for path in files:
        image = read_image_any(path, "BGR")
        outputs = predictor(image)
        if sink is not None:
            sink.write(json.dumps(instances_record(os.path.basename(path), outputs["instances"],
                                                   *image.shape[:2], 0.3)) + "\n")
            sink.flush()
    seconds = time.perf_counter() - start
    if sink is not None:
        sink.close()
    return len(files) / seconds


def predict_rates(config_file, opts, images, out, batch_size, processes, num_workers=None):
    """(steady images/s, end-to-end images/s) of one tools/predict.py run."""
    from . import predict

    workers = [] if num_workers is None else ["--num-workers", str(num_workers)]
    start = time.perf_counter()
    code = predict.main(["--config-file", config_file, "--input", images, "--output", out,
                         "--batch-size", str(batch_size), "--num-gpus", str(processes),
                         "--min-score", "0.3", *workers, *opts])
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"predict exited with {code}")
    with open(os.path.join(out, "run.json")) as f:
        last = json.load(f)["last_run"]
    return last["images_per_second"], last["images"] / seconds


def _main(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["eomt", "sam3"],
                        choices=["eomt", "sam3"])
    parser.add_argument("--eomt-config", default=os.path.join(REPO, "configs",
                                                              "quickstart_eomt.yaml"))
    parser.add_argument("--image-size", type=int, default=192,
                        help="image side, and EoMT's test size")
    parser.add_argument("--sam3-size", type=int, default=112,
                        help="the tiny SAM 3's input size (a multiple of 14)")
    parser.add_argument("--phrases", type=int, default=3, help="SAM 3 text prompts per image")
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--num-workers", type=int, default=None,
                        help="predict.py's --num-workers (default: its own, 0 on the CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a mistake instead of its one-line message")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="d2ext-bench-predict-") as tmp:
        images = write_images(os.path.join(tmp, "images"), args.num_images, args.image_size)
        for name, (config_file, opts) in model_setups(args, tmp).items():
            runs = {"loop": lambda rep: (loop_rate(config_file, opts, images), None),
                    "loop + writing": lambda rep: (loop_rate(
                        config_file, opts, images, os.path.join(tmp, f"{name}_loop.jsonl")),
                        None)}
            for p in args.processes:
                for b in args.batch_sizes:
                    runs[f"predict b{b} p{p}"] = (
                        lambda rep, b=b, p=p: predict_rates(
                            config_file, opts, images,
                            os.path.join(tmp, f"{name}_b{b}_p{p}_r{rep}"), b, p,
                            args.num_workers))
            rows = {row: [] for row in runs}
            order = list(runs)
            for rep in range(args.reps):
                random.Random(rep).shuffle(order)  # no row always runs first or last
                for row in order:
                    gc.collect()  # the models of earlier rows are gone before each row
                    rows[row].append(runs[row](rep))
            loop = statistics.median(r for r, _ in rows["loop"])
            print(f"\n{name}: {args.num_images} images, {args.device}, median of {args.reps}")
            written = statistics.median(r for r, _ in rows["loop + writing"])
            print(f"  {'':16s} {'steady img/s':>13s} {'x loop':>7s} {'x loop+w':>9s} "
                  f"{'end to end':>11s}")
            results[name] = {}
            for row, values in rows.items():
                steady = statistics.median(v for v, _ in values)
                whole = None if values[0][1] is None else statistics.median(
                    v for _, v in values)
                results[name][row] = {"images_per_second": steady, "ratio_to_loop":
                                      steady / loop, "ratio_to_loop_writing": steady / written,
                                      "end_to_end_images_per_second": whole}
                print(f"  {row:16s} {steady:13.2f} {steady / loop:7.2f} {steady / written:9.2f} "
                      f"{'' if whole is None else f'{whole:11.2f}'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def main(argv=None):
    """benchmark_predict: a user mistake ends in one line (``d2ext.cli.run_tool``)."""
    return run_tool("benchmark_predict", _main, argv)
