"""A built-in synthetic instance dataset: coloured shapes on textured backgrounds.

Generated deterministically (seeded per split), written once as PNG images plus a COCO json, and
registered as ``d2ext_synthetic_train`` / ``d2ext_synthetic_val`` so every detectron2 tool
(COCOEvaluator included) treats it like any COCO dataset. Used by the quickstart and the tests.
"""
import json
import logging
import os
import shutil
import tempfile

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

SYNTHETIC_CLASSES = ["circle", "square", "triangle", "star"]
_VERSION = 1  # bump when the generator changes, so stale caches are not reused


def default_root():
    return os.environ.get("D2EXT_DATASETS", os.environ.get("DETECTRON2_DATASETS", "datasets"))


def _shape_polygon(kind, cx, cy, r, angle):
    if kind == "square":
        n, radii = 4, [r]
    elif kind == "triangle":
        n, radii = 3, [r]
    else:  # star
        n, radii = 10, [r, 0.45 * r]
    t = angle + np.arange(n) * 2 * np.pi / n
    rad = np.array([radii[i % len(radii)] for i in range(n)])
    return list(zip(cx + rad * np.cos(t), cy + rad * np.sin(t)))


def _draw_scene(rng, size):
    """One image (H, W, 3 uint8) and its instances as (class index, visible mask)."""
    base = rng.integers(40, 215, size=3)
    noise = rng.normal(0, 18, size=(size, size, 3))
    image = np.clip(base + noise, 0, 255).astype(np.uint8)
    return draw_shapes(rng, image)


def draw_shapes(rng, image):
    """1-4 random shapes drawn over ``image`` (size x size x 3 uint8); returns the drawing and
    its instances as (class index, visible mask) for those with at least 20 visible pixels."""
    size = image.shape[0]
    canvas = Image.fromarray(image)
    occupancy = np.zeros((size, size), dtype=np.int32)  # later shapes occlude earlier ones
    classes = []
    for i in range(int(rng.integers(1, 5))):
        kind = int(rng.integers(len(SYNTHETIC_CLASSES)))
        r = rng.uniform(0.08, 0.2) * size
        cx, cy = rng.uniform(r, size - r, size=2)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        layer = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(layer)
        if SYNTHETIC_CLASSES[kind] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        else:
            draw.polygon(_shape_polygon(SYNTHETIC_CLASSES[kind], cx, cy, r,
                                        rng.uniform(0, 2 * np.pi)), fill=255)
        canvas.paste(Image.new("RGB", (size, size), colour), mask=layer)
        occupancy[np.asarray(layer) > 0] = i + 1
        classes.append(kind)
    masks = [(c, occupancy == i + 1) for i, c in enumerate(classes)]
    return np.asarray(canvas), [(c, m) for c, m in masks if m.sum() >= 20]


def _generate(directory, num_images, image_size, seed):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(directory, "images"))
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        pixels, instances = _draw_scene(rng, image_size)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(os.path.join(directory, "images", file_name))
        images.append(dict(id=image_id, file_name=file_name, height=image_size, width=image_size))
        for class_index, mask in instances:
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id, category_id=class_index + 1,
                segmentation=rle, area=float(mask_util.area(rle)),
                bbox=[float(v) for v in mask_util.toBbox(rle)], iscrowd=0))
    categories = [dict(id=i + 1, name=n) for i, n in enumerate(SYNTHETIC_CLASSES)]
    with open(os.path.join(directory, "annotations.json"), "w") as f:
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)


def ensure_synthetic_split(directory, num_images, image_size, seed, generate=None,
                           marker="annotations.json"):
    """Generate the split into ``directory`` unless a complete copy is already there (its
    ``marker`` file exists), with ``generate(directory, num_images, image_size, seed)`` (the
    shapes dataset's generator by default).

    Written to a temporary sibling and renamed into place, so concurrent processes (multi-GPU
    launch) and interrupted runs never leave a half-written dataset behind.
    """
    generate = generate or _generate
    if os.path.isfile(os.path.join(directory, marker)):
        return
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        logger.info(f"Generating {num_images} synthetic images into {directory} ...")
        generate(os.path.join(tmp, "split"), num_images, image_size, seed)
        os.replace(os.path.join(tmp, "split"), directory)
    except OSError:
        if not os.path.isfile(os.path.join(directory, marker)):
            raise  # not merely another process finishing first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def register_synthetic_shapes(root=None, num_train=200, num_val=50, image_size=192):
    """(Re-)register ``d2ext_synthetic_train`` and ``d2ext_synthetic_val``.

    Images are generated lazily on first use under ``root/d2ext_synthetic/`` in a folder named
    by the parameters, so different sizes never share a cache.
    """
    root = root or default_root()
    for split, num, seed in (("train", num_train, 0), ("val", num_val, 1)):
        name = f"d2ext_synthetic_{split}"
        directory = os.path.join(root, "d2ext_synthetic",
                                 f"v{_VERSION}_{split}_{num}x{image_size}px")
        json_file = os.path.join(directory, "annotations.json")
        image_root = os.path.join(directory, "images")

        def load(directory=directory, num=num, seed=seed, name=name):
            ensure_synthetic_split(directory, num, image_size, seed)
            return load_coco_json(os.path.join(directory, "annotations.json"),
                                  os.path.join(directory, "images"), name)

        if name in DatasetCatalog:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, load)
        # generated_on_load: its files are made on first use, so none need exist before.
        MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root,
                                      evaluator_type="coco", thing_classes=SYNTHETIC_CLASSES,
                                      generated_on_load=True)
