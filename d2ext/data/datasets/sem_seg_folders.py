"""Semantic segmentation datasets from an image folder and a mask folder, registered without code.

A mask has the image's relative path and name with a mask extension (``a/b.jpg`` ->
``a/b.png``); its pixel values are class ids, and MODEL.SEM_SEG_HEAD.IGNORE_VALUE marks pixels
to ignore. detectron2's ``load_sem_seg`` silently keeps the intersection of the two folders and
needs one image extension; this loader walks subfolders, accepts any image extension and names
every unpaired file, so a wrong folder is reported rather than trained on.
"""
import colorsys
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from .coco_instances import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp")  # lossless only: JPEG would alter class ids
# Single-channel modes detectron2's DatasetMapper reads as class ids (it converts masks to "L",
# which would turn palette indices or RGB colours into luminance).
_MASK_MODES = ("L",)


def _files_by_stem(folder, extensions):
    """{relative path without extension: path} for the files under ``folder``."""
    found, clashes = {}, []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            stem, ext = os.path.splitext(name)
            if name.startswith(".") or ext.lower() not in extensions:
                continue
            key = os.path.normpath(os.path.relpath(os.path.join(root, stem), folder))
            if key in found:
                clashes.append(f"{found[key]} / {os.path.join(root, name)}")
            found[key] = os.path.join(root, name)
    if clashes:
        raise DatasetError(f"{folder}: several files share a name up to the extension, so their "
                           f"masks are ambiguous: {clashes[:3]}. Keep one of each.")
    return found


def _examples(keys, files, limit=5):
    shown = [files[k] for k in sorted(keys)[:limit]]
    return ", ".join(shown) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_sem_seg_folders(name, image_dir, mask_dir):
    """detectron2 dicts ``{"file_name", "sem_seg_file_name"}`` for every image/mask pair.

    Raises DatasetError naming the folder when one is missing or empty, the unpaired files when
    the folders do not match, and the mask when it is not a single-channel image.
    """
    for key, folder in (("image", image_dir), ("mask", mask_dir)):
        if not os.path.isdir(folder):
            raise DatasetError(f"dataset {name!r}: {key} folder {folder} is not a directory "
                               "(DATASETS.SEM_SEG entries are [name, image_dir, mask_dir]).")
    images = _files_by_stem(image_dir, IMAGE_EXTENSIONS)
    masks = _files_by_stem(mask_dir, MASK_EXTENSIONS)
    if not images:
        raise DatasetError(f"dataset {name!r}: no images ({', '.join(IMAGE_EXTENSIONS)}) under "
                           f"{image_dir}.")
    no_mask, no_image = images.keys() - masks.keys(), masks.keys() - images.keys()
    if no_mask or no_image:
        problems = []
        if no_mask:
            problems.append(f"{len(no_mask)} of {len(images)} images have no mask in {mask_dir} "
                            f"({_examples(no_mask, images)})")
        if no_image:
            problems.append(f"{len(no_image)} of {len(masks)} masks have no image in {image_dir} "
                            f"({_examples(no_image, masks)})")
        raise DatasetError(
            f"dataset {name!r}: image and mask folders do not match: {'; '.join(problems)}. "
            f"Each image needs a mask with the same relative path and name "
            f"({'/'.join(MASK_EXTENSIONS)}); check that the mask folder belongs to the images.")
    dicts = [{"file_name": images[k], "sem_seg_file_name": masks[k]} for k in sorted(images)]
    with Image.open(dicts[0]["sem_seg_file_name"]) as mask:  # reads the header only
        if mask.mode not in _MASK_MODES:
            raise DatasetError(
                f"dataset {name!r}: mask {dicts[0]['sem_seg_file_name']} has mode {mask.mode!r}; "
                "masks must be single-channel 8-bit images of class ids (mode 'L'). Convert "
                "palette masks with Image.fromarray(np.asarray(Image.open(p))).save(p).")
    return dicts


def stable_colors(num_classes):
    """One fixed, well-separated RGB colour per class (frames of a video keep their colours)."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.95))
            for i in range(num_classes)]


def register_sem_seg_dataset(name, image_dir, mask_dir, classes, ignore_value=255):
    """Register ``name`` for training and SemSegEvaluator (evaluator_type "sem_seg").

    The folders are read lazily, on first use, by :func:`load_sem_seg_folders`, so configs that
    name datasets absent here still load (e.g. for the demo, which needs only the class names).
    Re-registering the same name with the same folders is a no-op.
    """
    if name in DatasetCatalog:
        meta = MetadataCatalog.get(name)
        if (getattr(meta, "image_root", None), getattr(meta, "sem_seg_root", None)) == \
                (image_dir, mask_dir) and list(getattr(meta, "stuff_classes", [])) == \
                list(classes):
            return
        raise DatasetError(f"dataset name {name!r} is already registered with other folders "
                           f"or classes; choose another name.")
    DatasetCatalog.register(name, lambda: load_sem_seg_folders(name, image_dir, mask_dir))
    MetadataCatalog.get(name).set(
        image_root=image_dir, sem_seg_root=mask_dir, evaluator_type="sem_seg",
        stuff_classes=list(classes), stuff_colors=stable_colors(len(classes)),
        ignore_label=ignore_value)
