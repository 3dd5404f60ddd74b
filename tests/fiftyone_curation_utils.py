"""A tiny Open Images V7 directory, in the layout FiftyOne's OpenImagesV7 importer reads."""
import csv
import os

import numpy as np
from PIL import Image

CLASS_IDS = {"Panda": "/m/03bk1", "Dice": "/m/029b3", "Duck": "/m/09ddx", "Dog": "/m/0bt9lr"}
SEGMENTATION_CLASSES = ("Panda", "Dice", "Duck")  # "Dog" has class descriptions only
SIZE = 128  # a power of two: box fractions are exact floats, so FiftyOne's crop is exact
COLORS = {"Panda": (240, 240, 240), "Dice": (200, 30, 30), "Duck": (230, 200, 20)}


def _instance_mask(rng, kind):
    """(SIZE, SIZE) bool: a disc for Panda, a square for Dice, an ellipse for Duck."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx = rng.integers(32, SIZE - 32, size=2)
    r = int(rng.integers(12, 24))
    if kind == "Dice":
        return (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
    if kind == "Duck":
        return ((yy - cy) / (r * 0.6)) ** 2 + ((xx - cx) / r) ** 2 <= 1
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def write_tiny_open_images(root, num_images=12, missing_ids=("f0000000000missing",), seed=0):
    """Write ``root`` (data/, metadata/, labels/) and return {image_id: [(class, mask)]}, the
    source masks. ``missing_ids`` are annotated in the CSV but have no image in data/."""
    rng = np.random.default_rng(seed)
    for sub in ("data", "metadata", "labels/masks"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    with open(os.path.join(root, "metadata", "classes.csv"), "w", newline="") as f:
        csv.writer(f).writerows((i, n) for n, i in CLASS_IDS.items())
    with open(os.path.join(root, "metadata", "segmentation_classes.csv"), "w") as f:
        f.write("".join(CLASS_IDS[n] + "\n" for n in SEGMENTATION_CLASSES))
    rows, truth = [], {}
    image_ids = [f"{i:016x}" for i in range(num_images)] + list(missing_ids)
    for n, image_id in enumerate(image_ids):
        image = rng.integers(0, 90, size=(SIZE, SIZE, 3), dtype=np.uint8)
        kinds = [SEGMENTATION_CLASSES[n % 3]] + ([SEGMENTATION_CLASSES[(n + 1) % 3]] if n % 2
                                                 else [])
        truth[image_id] = []
        for k, kind in enumerate(kinds):
            mask = _instance_mask(rng, kind)
            if k and (mask & truth[image_id][0][1]).any():
                continue  # keep instances apart so each source mask is whole
            image[mask] = COLORS[kind]
            ys, xs = np.nonzero(mask)
            mask_name = f"{image_id}_{CLASS_IDS[kind][3:]}_{k}.png"
            mask_dir = os.path.join(root, "labels", "masks", image_id[0].upper())
            os.makedirs(mask_dir, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(mask_dir, mask_name))
            rows.append([mask_name, image_id, CLASS_IDS[kind], f"b{k}", xs.min() / SIZE,
                         (xs.max() + 1) / SIZE, ys.min() / SIZE, (ys.max() + 1) / SIZE, 0.9, ""])
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
