"""detectron2's DetectionCheckpointer with crash-safe writes and a .pkl loader that runs no
code."""
import os
import pickle
import tempfile

import torch
from detectron2.checkpoint import DetectionCheckpointer


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


class WeightsPickleError(pickle.UnpicklingError):
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


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose checkpoints and ``last_checkpoint`` tag are replaced
    atomically, so an interrupted save never corrupts what was saved before (``--resume``
    always finds a whole checkpoint). Non-local save dirs fall back to detectron2's writes.

    ``.pkl`` weights are read without running code (``load_pickled_weights``).

    ``tag_last=False`` makes a checkpointer whose saves never become ``last_checkpoint``: the
    best-model checkpointer uses it, so ``--resume`` continues from the latest iteration, not
    from the best one.
    """

    def __init__(self, model, save_dir="", *, tag_last=True, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.tag_last = tag_last

    def _load_file(self, filename):
        if filename.endswith(".pkl"):
            return load_pickled_weights(filename)
        try:
            return super()._load_file(filename)
        except (pickle.UnpicklingError, KeyError, EOFError, RuntimeError) as err:
            raise ValueError(f"{filename}: not a PyTorch checkpoint that torch.load can read "
                             f"({type(err).__name__}: {err}); give MODEL.WEIGHTS a .pth "
                             "written by torch.save (a detectron2 or d2ext checkpoint).") from None

    def save(self, name, **kwargs):
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
