"""Plain functions shared by the tests: tiny configs, the tools, tiny models and data.

conftest.py exposes the common ones as fixtures (``tiny_cfg``, ``tiny_config``, ``load_tool``,
``sam3_dir``); import the rest from here (``from helpers import ...``). Libraries that only
some tests need are imported inside the functions that use them, so that every test module
(and conftest.py) can import this one cheaply."""
import csv
import importlib
import math
import numbers
import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


# -- configs ----------------------------------------------------------------------------------

def config_file(name):
    """The path of configs/<name> (``.yaml`` may be left out)."""
    return os.path.join(CONFIGS, name if name.endswith(".yaml") else name + ".yaml")


def make_cfg(name, *opts, **setup_kwargs):
    """configs/<name> through d2ext's setup_cfg with the overrides ``opts`` (KEY, VALUE, ...);
    ``setup_kwargs`` go to setup_cfg (e.g. ``sem_seg_datasets``)."""
    from d2ext.engine import setup_cfg

    return setup_cfg(config_file(name), list(opts), **setup_kwargs)


# On the CPU, with no test dataset (so nothing is registered, generated or downloaded).
CPU_NO_TEST = ["MODEL.DEVICE", "cpu", "DATASETS.TEST", "()"]


def cpu_config(name, *opts, **setup_kwargs):
    """configs/<name> on the CPU with no test dataset (CPU_NO_TEST), then ``opts``."""
    return make_cfg(name, *CPU_NO_TEST, *opts, **setup_kwargs)


def tiny_opts(synthetic_root, output_dir, max_iter=4):
    """Overrides that make configs/quickstart.yaml train in seconds."""
    return ["DATASETS.SYNTHETIC.ROOT", synthetic_root, "DATASETS.SYNTHETIC.NUM_TRAIN", "12",
            "DATASETS.SYNTHETIC.NUM_VAL", "6", "DATASETS.SYNTHETIC.IMAGE_SIZE", "128",
            "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "160",
            "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(max_iter),
            "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "1000",
            "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS", "0", "D2EXT.SAVE_DEMO_IMAGE",
            "False", "OUTPUT_DIR", str(output_dir), "SEED", "1"]


def tiny_config(name, synthetic_root, output_dir, *opts, max_iter=4):
    """configs/<name> on a few 128-px synthetic images for ``max_iter`` iterations (tiny_opts),
    then ``opts``."""
    return make_cfg(name, *tiny_opts(synthetic_root, output_dir, max_iter), *opts)


def tiny_semseg_opts(data_root):
    """Overrides that shrink configs/quickstart_semseg.yaml to a few 64-px images on the CPU."""
    return ["DATASETS.SYNTHETIC.ROOT", str(data_root), "DATASETS.SYNTHETIC.NUM_TRAIN", "16",
            "DATASETS.SYNTHETIC.NUM_VAL", "4", "DATASETS.SYNTHETIC.IMAGE_SIZE", "64",
            "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64",
            "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu"]


def tiny_semseg_config(data_root, *opts, **setup_kwargs):
    """configs/quickstart_semseg.yaml with tiny_semseg_opts(data_root), then ``opts``."""
    return make_cfg("quickstart_semseg.yaml", *tiny_semseg_opts(data_root), *opts,
                    **setup_kwargs)


# -- the tools ---------------------------------------------------------------------------------

def load_tool(name):
    """The package module behind tools/<name>.py (d2ext.cli.<name>)."""
    return importlib.import_module(f"d2ext.cli.{name}")


def run_tool(*args, timeout=600):
    """Run a tools/ script as a user would; returns the CompletedProcess (text output)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


# -- metrics ----------------------------------------------------------------------------------

def is_score(value, high=100.0):
    """Whether ``value`` is a real, finite number in [0, high] (detectron2's AP, mIoU and PQ are
    percentages; a NaN, e.g. COCOEvaluator's answer to no predictions, is not a score)."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value) and 0.0 <= value <= high)


def copypaste_rows(log, task):
    """{metric: value} of detectron2's ``copypaste:`` lines for ``task`` (e.g. "segm") in a log;
    a value that is no number (e.g. "nan") comes back as a float NaN."""
    lines = [line.split("copypaste: ", 1)[1].strip() for line in log.splitlines()
             if "copypaste: " in line]
    start = lines.index(f"Task: {task}")
    names, values = lines[start + 1].split(","), lines[start + 2].split(",")
    return dict(zip(names, map(float, values)))


# -- SAM-prompt models and scenes ------------------------------------------------------------

SCENE_SIZE = 128  # the two-texture scenes and the tiny SAM's input size


def _texture(kind, height, width):
    """'warm': flat orange with faint noise; 'cool': blue/white stripes 4 px wide."""
    rng = np.random.default_rng(0)
    if kind == "warm":
        image = (np.broadcast_to([230, 120, 30], (height, width, 3))
                 + rng.normal(0, 6, (height, width, 3)))
    else:
        stripes = (np.arange(width) // 4) % 2
        image = (np.where(stripes[None, :, None], [240, 240, 255], [20, 40, 200])
                 * np.ones((height, 1, 1)))
    return np.clip(image, 0, 255).astype(np.uint8)


def two_texture_scene(vertical):
    """(image (SCENE_SIZE, SCENE_SIZE, 3) uint8 RGB, warm mask): warm texture on the left half
    (``vertical``) or the top half, cool texture elsewhere."""
    warm = np.zeros((SCENE_SIZE, SCENE_SIZE), dtype=bool)
    if vertical:
        warm[:, :SCENE_SIZE // 2] = True
    else:
        warm[:SCENE_SIZE // 2] = True
    image = np.where(warm[..., None], _texture("warm", SCENE_SIZE, SCENE_SIZE),
                     _texture("cool", SCENE_SIZE, SCENE_SIZE))
    return image, warm


def tiny_dino_sam(seed=0):
    """(a tiny random DINOv3 backbone, a tiny random SAM at SCENE_SIZE)."""
    from d2ext.modeling.backbone import DinoViTBackbone
    from d2ext.modeling.sam_prompt import build_tiny_sam

    torch.manual_seed(seed)
    return DinoViTBackbone("dinov3_tiny16"), build_tiny_sam(img_size=SCENE_SIZE)


def tiny_sam_prompt_model(backbone, sam, **kwargs):
    """DinoSamPrompt on the given modules; references resized to SCENE_SIZE by default."""
    from d2ext.modeling.meta_arch import DinoSamPrompt

    kwargs.setdefault("reference_resize", (SCENE_SIZE, SCENE_SIZE))
    return DinoSamPrompt(backbone=backbone, sam=sam, **kwargs)


def write_sam_references(tmp_path):
    """A reference image (warm top, cool bottom) and its two masks as files; returns
    References for classes 0 = warm and 1 = cool."""
    from d2ext.modeling.sam_prompt.prototypes import Reference

    image, warm = two_texture_scene(vertical=False)
    Image.fromarray(image).save(tmp_path / "reference.png")
    references = []
    for index, mask in enumerate([warm, ~warm]):
        path = tmp_path / f"mask{index}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
        references.append(Reference(str(tmp_path / "reference.png"), index, mask_file=str(path)))
    return references


def as_input(image_rgb):
    """A model input dict of an (H, W, 3) uint8 image."""
    return {"image": torch.as_tensor(image_rgb).permute(2, 0, 1).float(),
            "height": image_rgb.shape[0], "width": image_rgb.shape[1]}


# -- a tiny SAM 3 (text prompts) ------------------------------------------------------------

SAM3_WORDS = ["circle", "square", "triangle", "star", "duck", "panda", "dice", "rubber", "a"]
SAM3_SIZE = 112  # the tiny SAM 3's input size


def sam3_opts(directory):
    """Overrides that run configs/sam3_text.yaml on the tiny SAM 3 saved in ``directory``."""
    return ["MODEL.TEXT_PROMPT.WEIGHTS", str(directory), "MODEL.TEXT_PROMPT.IMAGE_SIZE",
            str(SAM3_SIZE)]


def tiny_sam3_config(image_size=SAM3_SIZE, vocab_size=len(SAM3_WORDS) + 4):
    from transformers import Sam3Config

    small = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)
    return Sam3Config(
        vision_config=dict(
            backbone_config=dict(model_type="sam3_vit_model", num_hidden_layers=2, patch_size=14,
                                 image_size=image_size, pretrain_image_size=image_size,
                                 window_size=4, global_attn_indexes=[1], **small),
            fpn_hidden_size=32,
            backbone_feature_sizes=[[4 * image_size // 14] * 2, [2 * image_size // 14] * 2,
                                    [image_size // 14] * 2]),
        text_config=dict(num_hidden_layers=1, max_position_embeddings=32, vocab_size=vocab_size,
                         projection_dim=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         **small),
        geometry_encoder_config=dict(num_layers=1, **small),
        detr_encoder_config=dict(num_layers=1, **small),
        detr_decoder_config=dict(num_layers=1, num_queries=10, **small),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2))


def save_tiny_sam3(directory, seed=0):
    """Write a random tiny SAM 3 and its tokenizer to ``directory`` (as a user's
    save_pretrained directory); returns the directory."""
    from transformers import Sam3Model

    from d2ext.modeling.text_prompt import word_tokenizer

    torch.manual_seed(seed)
    Sam3Model(tiny_sam3_config()).save_pretrained(directory)
    word_tokenizer(SAM3_WORDS).save_pretrained(directory)
    return str(directory)


# -- videos -----------------------------------------------------------------------------------

def write_video(path, num_frames, size=(80, 64), fps=7.0):
    """A small moving-disc video; MJPG for .avi, mp4v otherwise."""
    import cv2

    fourcc = "MJPG" if path.endswith(".avi") else "mp4v"
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened()
    for i in range(num_frames):
        frame = np.full((size[1], size[0], 3), 20 * i, np.uint8)
        cv2.circle(frame, (8 + 5 * i, size[1] // 2), 8, (0, 0, 255), -1)
        writer.write(frame)
    writer.release()


def video_info(path):
    """(decodable frames, fps, width, height) of a video file."""
    import cv2

    capture = cv2.VideoCapture(path)
    frames = 0
    while capture.read()[0]:
        frames += 1
    info = (frames, capture.get(cv2.CAP_PROP_FPS), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    capture.release()
    return info


# -- a tiny Open Images V7 directory (FiftyOne curation) --------------------------------------

OPEN_IMAGES_CLASS_IDS = {"Panda": "/m/03bk1", "Dice": "/m/029b3", "Duck": "/m/09ddx",
                         "Dog": "/m/0bt9lr"}
OPEN_IMAGES_CLASSES = ("Panda", "Dice", "Duck")  # with masks; "Dog" has class descriptions only
# A power of two: box fractions are exact floats, so FiftyOne's crop is exact.
OPEN_IMAGES_SIZE = 128
OPEN_IMAGES_COLORS = {"Panda": (240, 240, 240), "Dice": (200, 30, 30), "Duck": (230, 200, 20)}


def _instance_mask(rng, kind):
    """(OPEN_IMAGES_SIZE,) * 2 bool: a disc for Panda, a square for Dice, an ellipse for Duck."""
    size = OPEN_IMAGES_SIZE
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(32, size - 32, size=2)
    r = int(rng.integers(12, 24))
    if kind == "Dice":
        return (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
    if kind == "Duck":
        return ((yy - cy) / (r * 0.6)) ** 2 + ((xx - cx) / r) ** 2 <= 1
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def write_tiny_open_images(root, num_images=12, missing_ids=("f0000000000missing",), seed=0):
    """Write ``root`` (data/, metadata/, labels/) in the layout FiftyOne's OpenImagesV7 importer
    reads and return {image_id: [(class, mask)]}, the source masks. ``missing_ids`` are
    annotated in the CSV but have no image in data/."""
    size, class_ids, classes = OPEN_IMAGES_SIZE, OPEN_IMAGES_CLASS_IDS, OPEN_IMAGES_CLASSES
    rng = np.random.default_rng(seed)
    for sub in ("data", "metadata", "labels/masks"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    with open(os.path.join(root, "metadata", "classes.csv"), "w", newline="") as f:
        csv.writer(f).writerows((i, n) for n, i in class_ids.items())
    with open(os.path.join(root, "metadata", "segmentation_classes.csv"), "w") as f:
        f.write("".join(class_ids[n] + "\n" for n in classes))
    rows, truth = [], {}
    image_ids = [f"{i:016x}" for i in range(num_images)] + list(missing_ids)
    for n, image_id in enumerate(image_ids):
        image = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
        kinds = [classes[n % 3]] + ([classes[(n + 1) % 3]] if n % 2 else [])
        truth[image_id] = []
        for k, kind in enumerate(kinds):
            mask = _instance_mask(rng, kind)
            if k and (mask & truth[image_id][0][1]).any():
                continue  # keep instances apart so each source mask is whole
            image[mask] = OPEN_IMAGES_COLORS[kind]
            ys, xs = np.nonzero(mask)
            mask_name = f"{image_id}_{class_ids[kind][3:]}_{k}.png"
            mask_dir = os.path.join(root, "labels", "masks", image_id[0].upper())
            os.makedirs(mask_dir, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(mask_dir, mask_name))
            rows.append([mask_name, image_id, class_ids[kind], f"b{k}", xs.min() / size,
                         (xs.max() + 1) / size, ys.min() / size, (ys.max() + 1) / size, 0.9, ""])
            truth[image_id].append((kind, mask))
        if image_id not in missing_ids:
            Image.fromarray(image).save(os.path.join(root, "data", image_id + ".jpg"),
                                        quality=95)
    with open(os.path.join(root, "labels", "segmentations.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax",
                         "BoxYMin", "BoxYMax", "PredictedIoU", "Clicks"])
        writer.writerows(rows)
    return {i: t for i, t in truth.items() if i not in missing_ids}
