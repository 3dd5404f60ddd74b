"""Batch prediction over many images: split across processes, resumable, merged into COCO json.

The run's output folder holds:

- ``run.json``: what this tool wrote there (``tool``), the fingerprint of the run (hashes of the
  merged config dump and of the sorted input list) and the input root;
- ``shards/part-RRRRR.jsonl``: one file per process rank, append-only JSON lines, one image's
  result per line, flushed as each image finishes (a rerun reads them to skip finished images;
  a last line cut short by a kill has no newline and is dropped before anything is appended);
- ``predictions.json``: the merged COCO instances json (``images`` with file names relative to
  the input root, ``categories``, ``annotations`` with RLE masks, xywh boxes and ``score``),
  every input image that was predicted exactly once, ids in the sorted input order.

``tools/train_net.py --register-coco NAME OUT/predictions.json ROOT`` trains on it.
"""
import glob
import hashlib
import json
import logging
import os
import sys
import time

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.utils import comm

from ..config import config_value
from ..data.image_io import read_image_any
from ..errors import UserError
from ..modeling.meta_arch import capabilities
from .predictor import load_predictor

logger = logging.getLogger(__name__)

TOOL = "d2ext predict"
RUN_FILE, MERGED_FILE, SHARD_DIR = "run.json", "predictions.json", "shards"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def _is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _common_root(paths):
    return os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""


def list_inputs(spec, image_root=None):
    """(root, names) of the images ``spec`` names: a folder (searched recursively), a glob
    pattern, a text file listing one path a line, or a COCO json (its ``images``; file names
    under ``image_root``, default the json's folder). ``names`` are sorted and relative to
    ``root`` (forward slashes); raises ``UserError`` when none is found."""
    if os.path.isdir(spec):
        root = os.path.abspath(spec)
        paths = [os.path.join(d, f) for d, _, files in os.walk(root, followlinks=True)
                 for f in files if _is_image(f)]
    elif spec.endswith(".json") and os.path.isfile(spec):
        try:
            with open(spec) as f:
                images = json.load(f)["images"]
            base = os.path.abspath(image_root or os.path.dirname(spec))
            paths = [os.path.join(base, image["file_name"]) for image in images]
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"--input {spec}: not a COCO json with an 'images' list of "
                            f"file_name entries ({type(err).__name__}: {err}).") from None
        root = base
    elif spec.endswith(".txt") and os.path.isfile(spec):
        base = os.path.dirname(os.path.abspath(spec))
        with open(spec) as f:
            paths = [os.path.join(base, line.strip()) for line in f if line.strip()]
        root = None
    else:
        paths = [p for p in glob.glob(spec, recursive=True) if os.path.isfile(p) and _is_image(p)]
        root = None
    paths = sorted({os.path.abspath(p) for p in paths})
    if not paths:
        raise UserError(f"--input {spec}: no images found; give a folder, a glob pattern "
                        "(quoted), a .txt list of paths or a COCO .json.")
    root = root or _common_root(paths)
    names = sorted(os.path.relpath(p, root).replace(os.sep, "/") for p in paths)
    return root, names


def fingerprint(cfg, names, min_score):
    """{"config_sha256", "inputs_sha256"}: what makes a rerun the same run. The minimum score
    is part of the config's hash: it decides what the shards hold."""
    config = cfg.dump() + f"\n# --min-score {min_score!r}\n"
    return {"config_sha256": hashlib.sha256(config.encode()).hexdigest(),
            "inputs_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest()}


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def prepare_output(out_dir, run_info, restart=False):
    """Check ``out_dir`` for this run, then write its run.json. A folder holding files this
    tool did not write (no run.json of it) is refused; one of a run with another fingerprint
    is refused by name unless ``restart`` (which removes only this tool's files)."""
    out_dir = os.path.abspath(out_dir)
    run_file = os.path.join(out_dir, RUN_FILE)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--output {out_dir} is a file; name a folder for the run.")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        previous = _read_json(run_file)
        if not isinstance(previous, dict) or previous.get("tool") != TOOL:
            raise UserError(f"--output {out_dir} is not empty and holds no {RUN_FILE} of this "
                            "tool; choose a new or empty folder (nothing there is overwritten).")
        changed = [what for key, what in (("config_sha256", "the config"),
                                          ("inputs_sha256", "the input list"))
                   if previous.get(key) != run_info[key]]
        if changed and not restart:
            raise UserError(f"--output {out_dir} holds a run whose {' and '.join(changed)} "
                            f"differ{'s' if len(changed) == 1 else ''} from this one "
                            "(config file, KEY VALUE overrides, --min-score or --input); "
                            "rerun the same command to resume, or pass --restart to start "
                            "over.")
        if restart:
            for name in (MERGED_FILE, RUN_FILE, "config.yaml"):
                if os.path.isfile(os.path.join(out_dir, name)):
                    os.remove(os.path.join(out_dir, name))
            for shard in _shard_files(out_dir):
                os.remove(shard)
    os.makedirs(os.path.join(out_dir, SHARD_DIR), exist_ok=True)
    previous = _read_json(run_file) or {}
    _write_json_atomic(run_file, {**previous, **run_info, "tool": TOOL})


def _write_json_atomic(path, data):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _shard_files(out_dir):
    return sorted(glob.glob(os.path.join(out_dir, SHARD_DIR, "part-*.jsonl")))


def repair_shards(out_dir):
    """Cut each shard after its last complete line: a process killed mid-write leaves a line
    without its newline, which a later append would run into."""
    for path in _shard_files(out_dir):
        with open(path, "rb+") as f:
            data = f.read()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                logger.warning(f"{path}: dropping an unfinished last line ({len(data) - end} "
                               "bytes) left by an interrupted run")
                f.truncate(end)


def read_shards(out_dir):
    """({name: result} of the finished images, {name: error} of those that failed and never
    succeeded) in the shards; lines without their newline are not read."""
    done, errors = {}, {}
    for path in _shard_files(out_dir):
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    logger.warning(f"{path}: skipping a line that is not JSON")
                    continue
                name = record["file_name"]
                if "error" in record:
                    errors[name] = record["error"]
                else:
                    done.setdefault(name, record)
    return done, {n: e for n, e in errors.items() if n not in done}


def predictor_categories(predictor):
    """COCO ``categories`` of the predictor's classes, in model order: the checkpoint's (or a
    zero-training model's) names, ids from the dataset's ``thing_dataset_id_to_contiguous_id``
    where it names these classes, else 1..N."""
    metadata = predictor.metadata
    names = list(predictor.class_names or getattr(metadata, "thing_classes", None) or [])
    key = capabilities(predictor.cfg).num_classes_key
    if not names and key:  # no dataset names the classes: numbered, as many as the model has
        names = [f"class_{i}" for i in range(config_value(predictor.cfg, key))]
    to_contiguous = getattr(metadata, "thing_dataset_id_to_contiguous_id", None) or {}
    ids = {c: d for d, c in to_contiguous.items()}
    same = list(getattr(metadata, "thing_classes", None) or []) == names
    if not (same and len(ids) == len(names) and set(ids) == set(range(len(names)))):
        ids = {i: i + 1 for i in range(len(names))}
    return [{"id": int(ids[i]), "name": n} for i, n in enumerate(names)]


class _ImageFiles(torch.utils.data.Dataset):
    """Image i read (d2ext's reader) and resized as the predictor does, in a DataLoader
    worker or the predicting process; a file that cannot be read becomes a record with its
    error. The image stays uint8 (from a worker, a quarter of float32's bytes through shared
    memory) and becomes float32 in the predicting process, the values ``DefaultPredictor``
    feeds."""

    def __init__(self, root, names, aug, input_format):
        self.root, self.names, self.aug, self.input_format = root, names, aug, input_format

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        name = self.names[i]
        try:
            image = read_image_any(os.path.join(self.root, name), self.input_format)
            h, w = image.shape[:2]
            resized = self.aug.get_transform(image).apply_image(image)
            tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        except Exception as err:  # one file never ends a run over many
            return {"file_name": name, "error": _one_line(err)}
        return {"file_name": name, "image": tensor, "height": h, "width": w}


def _one_line(err):
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"


def _collate(batch):
    return batch


def instances_record(name, instances, height, width, min_score):
    """One image's shard line: its instances scoring at least ``min_score`` with RLE masks
    (pycocotools), xywh boxes, scores and model class indices."""
    instances = instances.to("cpu")
    if instances.has("scores"):
        instances = instances[instances.scores >= min_score]
    boxes = instances.pred_boxes.tensor.tolist() if instances.has("pred_boxes") else []
    masks = instances.pred_masks if instances.has("pred_masks") else None
    rles, areas, mask_boxes = [], [], []
    if masks is not None and len(masks):
        # pycocotools wants (H, W, N) in column order; a bool array's bytes are already 0/1
        masks = masks.numpy()
        masks = masks.view(np.uint8) if masks.dtype == bool else masks.astype(np.uint8)
        rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
        areas = mask_util.area(rles).tolist()
        mask_boxes = [] if boxes else mask_util.toBbox(rles).tolist()
    found = []
    for i, (cls, score) in enumerate(zip(instances.pred_classes.tolist(),
                                         instances.scores.tolist())):
        item = {"category": int(cls), "score": float(score)}
        if boxes:
            x0, y0, x1, y1 = boxes[i]
            item["bbox"] = [x0, y0, x1 - x0, y1 - y0]
        if rles:
            rle = rles[i]
            item["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            item["area"] = float(areas[i])
            if not boxes:
                item["bbox"] = mask_boxes[i]
        found.append(item)
    return {"file_name": name, "height": height, "width": width, "instances": found}


def _predict_batch(model, batch, debug=False):
    """The model's outputs of one batch: per image its read record with the predicted
    ``instances`` added, or its error record. When the batch fails, its images are predicted
    one by one so that only the failing image is named (``debug``: raised instead)."""
    ok = [r for r in batch if "error" not in r]
    records = [r for r in batch if "error" in r]
    inputs = [{"image": r["image"].float(), "height": r["height"], "width": r["width"]}
              for r in ok]
    try:
        return records + [{"file_name": r["file_name"], "height": r["height"],
                           "width": r["width"], "instances": out["instances"]}
                          for r, out in zip(ok, model(inputs) if inputs else [])]
    except Exception as err:  # one file never ends a run over many
        if debug:
            raise
        if len(ok) == 1:
            return records + [{"file_name": ok[0]["file_name"], "error": _one_line(err)}]
    for r in ok:
        records += _predict_batch(model, [r])
    return records


def _write_records(shard, root, results, min_score, debug):
    """Append one batch's results to the open ``shard``, one JSON line an image, flushed: a
    finished image survives a kill of the process."""
    for result in results:
        if "error" not in result:
            try:
                result = instances_record(result["file_name"], result["instances"],
                                          result["height"], result["width"], min_score)
            except Exception as err:  # one file never ends a run over many
                if debug:
                    raise
                result = {"file_name": result["file_name"], "error": _one_line(err)}
        if "error" in result:
            if debug:
                raise RuntimeError(f"{result['file_name']}: {result['error']}")
            logger.error(f"failed {os.path.join(root, result['file_name'])}: {result['error']}")
        shard.write(json.dumps(result) + "\n")
        shard.flush()


def predict_worker(cfg, root, names, out_dir, batch_size=1, min_score=0.0, debug=False,
                   num_workers=None):
    """One process's share of a run (detectron2's ``launch`` runs it on every rank): the
    images of ``names`` not yet in the shards, every world-size-th one from this rank's,
    read by ``num_workers`` DataLoader workers (default DATALOADER.NUM_WORKERS; 0: in this
    process), predicted in batches and appended to this rank's shard
    as they finish."""
    rank, world = comm.get_rank(), comm.get_world_size()
    if cfg.MODEL.DEVICE == "cpu" and comm.get_local_size() > 1:
        # processes on one CPU share its cores: each taking all of them oversubscribes
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    predictor = load_predictor(cfg)
    comm.synchronize()  # every rank is ready (and rank 0's machine has repaired the shards)
    done, _ = read_shards(out_dir)
    todo = [n for n in names if n not in done]
    mine = todo[rank::world]
    workers = cfg.DATALOADER.NUM_WORKERS if num_workers is None else num_workers
    # A process that launch spawned makes spawn its default start method too: its loader
    # workers would import d2ext again each. Forked ones start at once (they touch no GPU).
    context = "fork" if workers and sys.platform.startswith("linux") else None
    loader = iter(torch.utils.data.DataLoader(
        _ImageFiles(root, mine, predictor.aug, predictor.input_format), batch_size=batch_size,
        num_workers=workers, collate_fn=_collate, multiprocessing_context=context))
    # The workers start reading while the other ranks finish starting theirs.
    comm.synchronize()
    progress = None
    if rank == 0:
        from tqdm import tqdm

        progress = tqdm(total=len(todo), unit="img", desc=f"predict ({world} process"
                                                          f"{'es' if world > 1 else ''})",
                        initial=0, dynamic_ncols=True)
    start, count = time.perf_counter(), 0
    shard = os.path.join(out_dir, SHARD_DIR, f"part-{rank:05d}.jsonl")
    with open(shard, "a") as f, torch.inference_mode():
        for batch in loader:
            if debug:
                for r in batch:
                    if "error" in r:
                        raise UserError(f"{os.path.join(root, r['file_name'])}: {r['error']}")
            _write_records(f, root, _predict_batch(predictor.model, batch, debug), min_score,
                           debug)
            count += len(batch)
            if progress is not None:  # every rank runs at about rank 0's pace
                progress.update(min(len(batch) * world, progress.total - progress.n))
    comm.synchronize()  # every rank has finished: the shards are complete
    if progress is not None:
        progress.close()
    seconds = time.perf_counter() - start
    if rank == 0:
        run_file = os.path.join(out_dir, RUN_FILE)
        info = _read_json(run_file) or {}
        info["categories"] = predictor_categories(predictor)
        info["last_run"] = {"images": len(todo), "processes": world, "batch_size": batch_size,
                            "seconds": seconds,
                            "images_per_second": len(todo) / seconds if seconds else None}
        _write_json_atomic(run_file, info)
    return count


def merge_shards(out_dir, root, names):
    """Write OUT/predictions.json from the shards: every finished image of ``names`` once
    (ids 1..N in the sorted input order), its instances as COCO annotations, the categories
    rank 0 recorded in run.json. Returns
    (number of images written, {name: error} of the inputs that have no result)."""
    done, errors = read_shards(out_dir)
    categories = (_read_json(os.path.join(out_dir, RUN_FILE)) or {}).get("categories", [])
    model_to_id = [c["id"] for c in categories]
    images, annotations = [], []
    for image_id, name in enumerate(names, start=1):
        record = done.get(name)
        if record is None:
            continue
        images.append({"id": image_id, "file_name": name, "height": record["height"],
                       "width": record["width"]})
        for item in record["instances"]:
            if item["category"] >= len(model_to_id):
                raise UserError(f"{name}: the model predicts class index {item['category']} but "
                                f"names {len(model_to_id)} classes; check MODEL.WEIGHTS and the "
                                "config's dataset.")
            ann = {"id": len(annotations) + 1, "image_id": image_id,
                   "category_id": model_to_id[item["category"]], "score": item["score"],
                   "iscrowd": 0}
            for key in ("bbox", "segmentation", "area"):
                if key in item:
                    ann[key] = item[key]
            if "area" not in ann and "bbox" in ann:
                ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
            annotations.append(ann)
    merged = {"info": {"description": f"{TOOL}: model predictions", "image_root": root,
                       "d2ext_predict": True},
              "images": images, "annotations": annotations, "categories": categories}
    _write_json_atomic(os.path.join(out_dir, MERGED_FILE), merged)
    missing = {n: errors.get(n, "not predicted (interrupted?)") for n in names if n not in done}
    return len(images), missing


def check_predicts_instances(cfg):
    """Refuse a config whose model outputs no ``instances`` (semantic-only)."""
    caps = capabilities(cfg)
    outputs = caps.outputs(cfg)
    if "instances" not in outputs:
        raise UserError(f"{caps.name} outputs "
                        f"{', '.join(outputs)} with this config, not instances; predict writes "
                        "instances (COCO json): use a config whose model outputs instances.")
