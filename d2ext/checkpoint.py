"""detectron2's DetectionCheckpointer with crash-safe writes, a .pkl loader that runs no code,
checkpoints that fit the model or are refused, and the training classes saved with the weights."""
import os
import pickle
import tempfile
from collections.abc import Mapping
from urllib.parse import urlparse

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from fvcore.common.checkpoint import _filter_reused_missing_keys

from .config import config_value
from .errors import UserError
from .modeling.meta_arch import capabilities

_PARTIAL = ".d2ext-partial-"  # in the name of a file being written: .NAME.d2ext-partial-PID-XXXX


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_abandoned_partial_files(directory):
    """Delete the temporary files of saves whose process is gone (killed mid-write, where no
    clean-up runs); those of live processes are kept. Returns the paths removed."""
    removed = []
    for name in os.listdir(directory):
        if not name.startswith(".") or _PARTIAL not in name:
            continue
        pid = name.rsplit(_PARTIAL, 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            try:
                os.unlink(os.path.join(directory, name))
                removed.append(os.path.join(directory, name))
            except OSError:
                pass
    return removed


def _atomic_write(path, write):
    """Write through ``write(file)`` to a temporary sibling, fsync, then rename over ``path``:
    a crash or a full disk mid-write leaves the previous file intact, and the next save removes
    what a killed one left."""
    directory = os.path.dirname(path) or "."
    remove_abandoned_partial_files(directory)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}{_PARTIAL}{os.getpid()}-",
                               dir=directory)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a saved file gets the user's mode
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class CheckpointError(UserError):
    """A weights file that is missing, unreadable, or does not fit the model the config builds;
    the message is one line naming the file (and its config key) and the fix."""


class WeightsPickleError(CheckpointError, pickle.UnpicklingError):
    pass


class _WeightsUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, numbers, strings and NumPy arrays, the contents of detectron2 and
    Detectron model-zoo .pkl files; any other class or function (what a crafted file uses to
    run code) is refused."""

    _ALLOWED = {("collections", "OrderedDict")} | {
        (module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise WeightsPickleError(f"it refers to {module}.{name}, which a weights file never needs")


def load_pickled_weights(path):
    """A detectron2-format dict from a .pkl weights file, read with ``_WeightsUnpickler`` (as
    detectron2 reads it, without running code)."""
    with open(path, "rb") as f:
        try:
            data = _WeightsUnpickler(f, encoding="latin1").load()
        except WeightsPickleError as err:
            raise WeightsPickleError(f"{path}: refused to load ({err}); load .pkl weights only "
                                     "from a source you trust, or convert them to .pth") from None
    if "model" in data and "__author__" in data:  # detectron2's model zoo format
        return data
    data = data.get("blobs", data)  # Caffe2 / Detectron model zoo
    return {"model": {k: v for k, v in data.items() if not k.endswith("_momentum")},
            "__author__": "Caffe2", "matching_heuristics": True}


# -- the classes a checkpoint was trained on -----------------------------------------------------

def _ids_key(field):
    """"thing_classes" -> "thing_dataset_id_to_contiguous_id" (and "stuff_..." alike)."""
    return field.replace("_classes", "_dataset_id_to_contiguous_id")


def training_classes(cfg):
    """The "classes" entry of the checkpoints a training on ``cfg`` saves: {"dataset": the
    first DATASETS.TRAIN name, <class field>: [names], <field's dataset id map>: {id: index}}
    from its MetadataCatalog entry (the field is ``capabilities(cfg).class_metadata``); None
    where that dataset names no classes."""
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        return None
    field = capabilities(cfg).class_metadata
    meta = MetadataCatalog.get(names[0])
    classes = meta.get(field)
    if classes is None:
        return None
    entry = {"dataset": names[0], field: [str(c) for c in classes]}
    ids = meta.get(_ids_key(field))
    if ids is not None:
        entry[_ids_key(field)] = {int(k): int(v) for k, v in ids.items()}
    return entry


def checkpoint_class_names(classes, cfg):
    """The names a checkpoint's "classes" entry gives the classes of ``cfg``'s model, or None
    (a checkpoint saved before d2ext recorded them, or one of another kind of model)."""
    names = (classes or {}).get(capabilities(cfg).class_metadata)
    return None if names is None else list(names)


def dataset_class_names(cfg, dataset_name, load=False):
    """The class names dataset ``dataset_name`` gives ``cfg``'s model (None if unknown);
    ``load``: read the dataset when its metadata does not name them yet (COCO json datasets
    name them when loaded)."""
    field = capabilities(cfg).class_metadata
    names = MetadataCatalog.get(dataset_name).get(field)
    if names is None and load and dataset_name in DatasetCatalog:
        DatasetCatalog.get(dataset_name)
        names = MetadataCatalog.get(dataset_name).get(field)
    return None if names is None else list(names)


def show_names(names, limit=12):
    """``names`` as a list literal, cut to its first ``limit - 2`` names beyond ``limit``."""
    if len(names) <= limit:
        return repr(list(names))
    return f"[{', '.join(map(repr, names[:limit - 2]))}, ... ({len(names)} in all)]"


def class_names_difference(trained, other):
    """'' when the lists are equal, else a few words on where they part."""
    if list(trained) == list(other):
        return ""
    if len(trained) != len(other):
        return f"{len(trained)} classes against {len(other)}"
    i = next(i for i, (a, b) in enumerate(zip(trained, other)) if a != b)
    return f"class {i} is {trained[i]!r} against {other[i]!r}"


def check_evaluation_classes(classes, cfg, source):
    """Stop (``CheckpointError``) when a DATASETS.TEST dataset names its classes otherwise than
    the checkpoint's "classes" entry (other names, order or count): every AP would compare
    predictions of one class with ground truth of another. ``source`` names the checkpoint
    (``AtomicCheckpointer.loaded_from``). A checkpoint without the entry, or a dataset that
    names no classes, is not checked."""
    trained = checkpoint_class_names(classes, cfg)
    if trained is None:
        return
    for name in cfg.DATASETS.TEST:
        names = dataset_class_names(cfg, name, load=True)
        if names is None or names == trained:
            continue
        raise CheckpointError(
            f"{source} was trained on {classes.get('dataset')!r} with classes "
            f"{show_names(trained)}, but DATASETS.TEST {name!r} has {show_names(names)} "
            f"({class_names_difference(trained, names)}); evaluate on a dataset with the "
            f"checkpoint's classes in its order, or use a checkpoint trained on the classes "
            f"of {name!r}.")


# -- whether a checkpoint fits the model ---------------------------------------------------------

# The class-count dimension of a class predictor's tensors: K (mask or semantic logits), K + 1
# (scores with "no object") or 4K (class-specific box deltas), as (a, b) in a * K + b.
_CLASS_ROWS = ((1, 0), (1, 1), (4, 0))


def trained_class_count(incorrect_shapes, num_classes):
    """The class count K' of a checkpoint whose tensors differ from a model of ``num_classes``
    classes only by the number of classes, else None: every mismatched tensor differs in its
    first dimension alone, which is a * K + b in the model (``_CLASS_ROWS``) and a * K' + b in
    the checkpoint, with one K' for all."""
    counts = set()
    for _, theirs, ours in incorrect_shapes:
        if not ours or len(theirs) != len(ours) or tuple(theirs[1:]) != tuple(ours[1:]):
            return None
        rows = [(a, b) for a, b in _CLASS_ROWS if a * num_classes + b == ours[0]]
        if len(rows) != 1:
            return None
        (a, b), = rows
        if theirs[0] <= b or (theirs[0] - b) % a:
            return None
        counts.add((theirs[0] - b) // a)
    return counts.pop() if len(counts) == 1 else None


def _groups(keys, limit=3):
    """'roi_heads.*, proposal_generator.*': the modules ``keys`` lie in, most keys first (one
    level deeper when they all lie in one)."""
    def heads(depth):
        counts = {}
        for key in keys:
            head = ".".join(key.split(".")[:depth])
            counts[head] = counts.get(head, 0) + 1
        return sorted(counts, key=lambda h: -counts[h])

    found = heads(1)
    if len(found) == 1 and all(k.count(".") > 1 for k in keys):
        found = heads(2)
    shown = ", ".join(f"{h}.*" if any(k != h for k in keys) else h for h in found[:limit])
    return shown + (f" and {len(found) - limit} more" if len(found) > limit else "")


def _a(name):
    return f"{'an' if name[:1].upper() in 'AEIOU' else 'a'} {name}"


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose checkpoints and ``last_checkpoint`` tag are replaced
    atomically, so an interrupted save never corrupts what was saved before (``--resume``
    always finds a whole checkpoint). Non-local save dirs fall back to detectron2's writes.

    ``.pkl`` weights are read without running code (``load_pickled_weights``).

    ``tag_last=False`` makes a checkpointer whose saves never become ``last_checkpoint``: the
    best-model checkpointer uses it, so ``--resume`` continues from the latest iteration, not
    from the best one.

    A checkpoint must fit the model, or loading raises ``CheckpointError`` in one line saying
    what the file holds and what the config builds:

    * ``strict`` (evaluation, the demo, export; and always when resuming from the save dir's
      ``last_checkpoint``): every tensor of the model must be in the checkpoint, in its shape.
    * otherwise (fine-tuning from MODEL.WEIGHTS): the checkpoint must hold at least half of the
      model's parameters, and shapes may differ only as another class count makes them differ
      (the class predictor then starts from scratch, with a one-line warning), as detectron2
      allows. ``cfg`` gives the class count (``capabilities(cfg).num_classes_key``); without it
      no shape may differ.

    A missing or unreadable file is one line naming MODEL.WEIGHTS (or ``last_checkpoint``).

    Every save records the model's meta-architecture ("meta_architecture") and the entries of
    ``extra_data`` (the trainer's: the training data's "classes", see ``training_classes``);
    ``load`` returns them with the rest of the checkpoint's extra data.
    """

    def __init__(self, model, save_dir="", *, tag_last=True, strict=False, cfg=None,
                 extra_data=None, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.tag_last = tag_last
        self.strict = strict
        self.extra_data = dict(extra_data or {})
        self._num_classes = None  # (config key, value) of the model's class count
        if cfg is not None:
            key = capabilities(cfg).num_classes_key
            if key is not None:
                self._num_classes = (key, config_value(cfg, key))
        self._resuming = False
        self._path = ""
        self.loaded_from = ""  # the file the last load read, as messages name it
        self._class_change = None  # (K', keys) of a fine-tuning load of another class count

    # -- loading ---------------------------------------------------------------------------------

    def _where(self):
        if self._resuming:
            return f"{self._path} (the last_checkpoint of {self.save_dir}, --resume)"
        return f"MODEL.WEIGHTS {self._path}"

    def _missing_file_error(self, path):
        what = "is a directory, not a checkpoint file" if os.path.isdir(path) else "no such file"
        if self._resuming:
            return CheckpointError(
                f"{self.save_dir}/last_checkpoint names {path}: {what}; put that checkpoint "
                f"back, or write the name of another model_*.pth of {self.save_dir} into "
                "last_checkpoint.")
        return CheckpointError(f"MODEL.WEIGHTS {path}: {what}; give MODEL.WEIGHTS the path of "
                               "a .pth checkpoint (e.g. the model_final.pth of a training's "
                               "OUTPUT_DIR).")

    def load(self, path, *args, **kwargs):
        if path and "://" not in path:  # a local file (URLs are detectron2's to fetch)
            local = urlparse(path)._replace(query="").geturl()
            if not os.path.isfile(local):
                raise self._missing_file_error(local)
        self._path = path
        loaded = super().load(path, *args, **kwargs)
        if path:
            self.loaded_from = self._where()
        return loaded

    def resume_or_load(self, path, *, resume=True):
        """detectron2's ``resume_or_load``; a resume from ``last_checkpoint`` is strict."""
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        strict, self.strict, self._resuming = self.strict, True, True
        try:
            return self.load(self.get_checkpoint_file())
        finally:
            self.strict, self._resuming = strict, False

    def _load_file(self, filename):
        try:
            if filename.endswith(".pkl"):
                return load_pickled_weights(filename)
            return super()._load_file(filename)
        except CheckpointError:
            raise
        except PermissionError as err:
            raise CheckpointError(f"{self._where()}: cannot be read ({err.strerror}); make it "
                                  "readable, or give another checkpoint.") from None
        except (pickle.UnpicklingError, KeyError, EOFError, RuntimeError, OSError) as err:
            # torch names neither the file nor what to do; a cut-short file fails in any of
            # these, depending on where it ends
            first = (str(err).strip().splitlines() or [""])[0].split(". ")[0]
            why = f"{type(err).__name__}: {first}" if first else type(err).__name__
            if os.path.getsize(filename) == 0:
                why = "the file is empty"
            raise CheckpointError(
                f"{self._where()}: not a PyTorch checkpoint that torch.load can read, or one "
                f"cut short ({why}); give it a whole .pth written by torch.save (a detectron2 "
                "or d2ext checkpoint).") from None

    def _load_model(self, checkpoint):
        state = checkpoint.get("model")
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{self._where()} holds no state dict under 'model' (it holds "
                                  f"{type(state).__name__}); give a detectron2 or d2ext "
                                  "checkpoint.")
        num_saved = len(state)
        saved_arch = checkpoint.get("meta_architecture")
        try:
            incompatible = super()._load_model(checkpoint)
        except CheckpointError:
            raise
        except ValueError as err:  # fvcore: a value that is no tensor
            raise CheckpointError(f"{self._where()}: {err}; give a detectron2 or d2ext "
                                  "checkpoint.") from None
        self._check_fit(incompatible, num_saved, saved_arch)
        return incompatible

    def _check_fit(self, incompatible, num_saved, saved_arch):
        """Raise ``CheckpointError`` when the checkpoint just loaded does not fit the model (see
        the class docstring); note a fine-tuning load of another class count for the log."""
        self._class_change = None
        model_state = self.model.state_dict()
        shapes = incompatible.incorrect_shapes
        mismatched = {k for k, _, _ in shapes}
        missing = [k for k in _filter_reused_missing_keys(self.model, incompatible.missing_keys)
                   if k not in mismatched]
        if not missing and not shapes:
            return
        size = {k: v.numel() for k, v in model_state.items()
                if not isinstance(v, torch.nn.parameter.UninitializedParameter)}
        total = sum(size.values())
        absent = sum(size.get(k, 0) for k in set(missing) | mismatched)
        unused = sorted(set(incompatible.unexpected_keys) | mismatched)
        model_heads = {k.split(".")[0] for k in model_state}
        foreign = [k for k in incompatible.unexpected_keys if k.split(".")[0] not in model_heads]
        arch = capabilities(self.model).name
        # Less than half of the model found: another architecture, or another backbone. When
        # fine-tuning, modules of another architecture (a detector's backbone in a segmentor)
        # may seed a model that they mostly fill.
        if (total and absent * 2 > total) or (foreign and self.strict):
            raise self._architecture_error(arch, saved_arch, num_saved, unused, missing,
                                           mismatched, len(model_state), absent, total)
        trained = (trained_class_count(shapes, self._num_classes[1])
                   if self._num_classes and shapes else None)
        if shapes and trained is not None and not missing and self.strict:
            raise self._class_count_error(arch, trained, shapes)
        if self.strict or (shapes and trained is None):
            raise self._misfit_error(arch, missing, shapes, len(model_state))
        if shapes:
            self._class_change = (trained, sorted(mismatched))

    def _architecture_error(self, arch, saved_arch, num_saved, unused, missing, mismatched,
                            num_model, absent, total):
        same = saved_arch == arch  # e.g. another backbone
        held = f"{_a(saved_arch)} model" if saved_arch else "a model"
        if unused:
            held += f" ({_groups(unused)}: {len(unused)} of its {num_saved} tensors unused here)"
        lacking = sorted(set(missing) | mismatched)
        fix = ("use the config it was trained with (the config.yaml of its training's "
               "OUTPUT_DIR)" if same else
               "use a checkpoint of this architecture or fix MODEL.META_ARCHITECTURE")
        return CheckpointError(
            f"{self._where()} holds {held}; the config builds {'another ' if same else ''}{arch}: "
            f"{_groups(lacking)}: {len(lacking)} of its {num_model} tensors "
            f"({100 * absent / max(total, 1):.0f}% of its parameters) are not in the checkpoint; "
            f"{fix}.")

    def _class_count_error(self, arch, trained, shapes):
        key, configured = self._num_classes
        name, theirs, ours = shapes[0]
        return CheckpointError(
            f"{self._where()} holds {_a(arch)} trained for {trained} classes ({name}: "
            f"{tuple(theirs)} there, {tuple(ours)} here); the config builds it for {configured} "
            f"({key} {configured}); set {key} {trained} to run this checkpoint, or use one "
            f"trained on these {configured} classes.")

    def _misfit_error(self, arch, missing, shapes, num_model):
        parts = []
        if missing:
            parts.append(f"{len(missing)} of its {num_model} tensors are not in the checkpoint "
                         f"({_groups(missing)})")
        if shapes:
            name, theirs, ours = shapes[0]
            parts.append(f"{len(shapes)} have another shape there (e.g. {name}: {tuple(theirs)} "
                         f"there, {tuple(ours)} here)")
        when = "" if self.strict else " (fine-tuning accepts another class count only)"
        return CheckpointError(
            f"{self._where()} does not fit the {arch} the config builds{when}: "
            f"{'; '.join(parts)}; use the config it was trained with (the config.yaml of its "
            "training's OUTPUT_DIR) or a checkpoint of this model.")

    def _log_incompatible_keys(self, incompatible):
        """detectron2's report, but a fine-tuning load of another class count is one line."""
        if self._class_change:
            trained, keys = self._class_change
            key, configured = self._num_classes
            self.logger.warning(
                f"{self._where()} was trained for {trained} classes and {key} is {configured}: "
                f"its class predictor ({len(keys)} tensors in {_groups(keys)}) is not loaded and "
                "is trained from scratch.")
            incompatible = incompatible._replace(
                incorrect_shapes=[], missing_keys=[k for k in incompatible.missing_keys
                                                   if k not in keys])
        super()._log_incompatible_keys(incompatible)

    # -- saving ----------------------------------------------------------------------------------

    def save(self, name, **kwargs):
        recorded = {k: v for k, v in self.extra_data.items() if v is not None}
        if self.model is not None:
            recorded["meta_architecture"] = capabilities(self.model).name
        kwargs = {**recorded, **kwargs}
        if not self.save_dir or not self.save_to_disk or not os.path.isdir(self.save_dir):
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        _atomic_write(path, lambda f: torch.save(data, f))
        if self.tag_last:
            self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        if not os.path.isdir(self.save_dir):
            return super().tag_last_checkpoint(last_filename_basename)
        _atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                      lambda f: f.write(last_filename_basename.encode()))
