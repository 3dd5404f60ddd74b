"""A built-in synthetic panoptic dataset: the synthetic shapes (things) over a sky and a ground
(stuff), in COCO panoptic format, for the panoptic quickstart and tests.

Generated deterministically (seeded per split) on first use under
``root/d2ext_synthetic_panoptic/``, at the sizes of DATASETS.SYNTHETIC, as images, RGB-encoded
segment PNGs and a panoptic json, and registered as ``d2ext_synthetic_panoptic_train`` /
``_val`` through the loader user datasets use, so COCOPanopticEvaluator scores it like COCO.
Shape pixels left with fewer than 20 visible pixels are void (segment id 0), as unlabelled
pixels are in COCO.
"""
import json
import os

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from .coco_panoptic import load_coco_panoptic, panoptic_class_metadata
from .synthetic_shapes import SYNTHETIC_CLASSES, default_root, draw_shapes, ensure_synthetic_split

SYNTHETIC_STUFF_CLASSES = ["sky", "ground"]
SYNTHETIC_PANOPTIC_CATEGORIES = (
    [dict(id=i + 1, name=n, isthing=1) for i, n in enumerate(SYNTHETIC_CLASSES)]
    + [dict(id=len(SYNTHETIC_CLASSES) + i + 1, name=n, isthing=0)
       for i, n in enumerate(SYNTHETIC_STUFF_CLASSES)])
_VERSION = 1  # bump when the generator changes, so stale caches are not reused
_SKY_ID, _GROUND_ID = 1000, 1001  # segment ids of the two stuff regions (things count from 1)


def _sky_and_ground(rng, size):
    """A textured sky over a textured ground split by a wavy horizon: (image, sky mask)."""
    rows = np.arange(size)[:, None]
    phase, waves = rng.uniform(0, 2 * np.pi), rng.uniform(1, 3)
    horizon = size * (rng.uniform(0.35, 0.65) + 0.06 * np.sin(
        phase + waves * 2 * np.pi * np.arange(size) / size))
    sky = rows < horizon[None, :]
    sky_colour = rng.integers([90, 140, 190], [150, 200, 255])
    ground_colour = rng.integers([70, 50, 20], [140, 110, 70])
    noise = rng.normal(0, 12, size=(size, size, 3))
    image = np.where(sky[..., None], sky_colour, ground_colour) + noise
    return np.clip(image, 0, 255).astype(np.uint8), sky


def _ids_to_rgb(ids):
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)


def _generate(directory, num_images, image_size, seed):
    rng = np.random.default_rng(seed)
    for sub in ("images", "panoptic"):
        os.makedirs(os.path.join(directory, sub))
    images, annotations = [], []
    stuff_ids = {"sky": len(SYNTHETIC_CLASSES) + 1, "ground": len(SYNTHETIC_CLASSES) + 2}
    for image_id in range(1, num_images + 1):
        background, sky = _sky_and_ground(rng, image_size)
        pixels, instances = draw_shapes(rng, background)
        drawn = np.any(pixels != background, axis=-1)  # every shape pixel, kept or not
        ids = np.where(sky, _SKY_ID, _GROUND_ID)
        ids[drawn] = 0  # void unless a kept shape claims it below
        segments = []
        for k, (class_index, mask) in enumerate(instances):
            ids[mask] = k + 1
            segments.append(dict(id=k + 1, category_id=class_index + 1, iscrowd=0))
        for name, segment_id in (("sky", _SKY_ID), ("ground", _GROUND_ID)):
            if (ids == segment_id).any():
                segments.append(dict(id=segment_id, category_id=stuff_ids[name], iscrowd=0))
        for segment in segments:
            ys, xs = np.nonzero(ids == segment["id"])
            segment.update(area=int(len(ys)), bbox=[int(xs.min()), int(ys.min()),
                                                     int(xs.max() - xs.min() + 1),
                                                     int(ys.max() - ys.min() + 1)])
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(os.path.join(directory, "images", file_name))
        Image.fromarray(_ids_to_rgb(ids)).save(os.path.join(directory, "panoptic", file_name))
        images.append(dict(id=image_id, file_name=file_name, height=image_size,
                           width=image_size))
        annotations.append(dict(image_id=image_id, file_name=file_name, segments_info=segments))
    with open(os.path.join(directory, "panoptic.json"), "w") as f:
        json.dump(dict(images=images, annotations=annotations,
                       categories=SYNTHETIC_PANOPTIC_CATEGORIES), f)


def register_synthetic_panoptic(root=None, num_train=200, num_val=50, image_size=192):
    """(Re-)register ``d2ext_synthetic_panoptic_train`` and ``_val`` (generated on first use,
    in a folder named by the parameters, so different sizes never share a cache)."""
    root = root or default_root()
    classes = panoptic_class_metadata(SYNTHETIC_PANOPTIC_CATEGORIES)
    for split, num, seed in (("train", num_train, 2), ("val", num_val, 3)):
        name = f"d2ext_synthetic_panoptic_{split}"
        directory = os.path.join(root, "d2ext_synthetic_panoptic",
                                 f"v{_VERSION}_{split}_{num}x{image_size}px")
        json_file = os.path.join(directory, "panoptic.json")
        png_dir, image_dir = (os.path.join(directory, d) for d in ("panoptic", "images"))

        def load(directory=directory, num=num, seed=seed, name=name, json_file=json_file,
                 png_dir=png_dir, image_dir=image_dir):
            ensure_synthetic_split(directory, num, image_size, seed, generate=_generate,
                                   marker="panoptic.json")
            return load_coco_panoptic(name, json_file, png_dir, image_dir, classes)

        if name in DatasetCatalog:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, load)
        # generated_on_load: its files are made on first use, so none need exist before.
        MetadataCatalog.get(name).set(
            panoptic_json=json_file, panoptic_root=png_dir, image_root=image_dir,
            evaluator_type="coco_panoptic_seg", ignore_label=255, label_divisor=1000,
            generated_on_load=True, **classes)
