"""detectron2's DetectionCheckpointer with crash-safe writes."""
import os
import tempfile

import torch
from detectron2.checkpoint import DetectionCheckpointer


def _atomic_write(path, write):
    """Write through ``write(file)`` to a temporary sibling, fsync, then rename over ``path``:
    a crash or a full disk mid-write leaves the previous file intact."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
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


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose checkpoints and ``last_checkpoint`` tag are replaced
    atomically, so an interrupted save never corrupts what was saved before (``--resume``
    always finds a whole checkpoint). Non-local save dirs fall back to detectron2's writes.

    ``tag_last=False`` makes a checkpointer whose saves never become ``last_checkpoint``: the
    best-model checkpointer uses it, so ``--resume`` continues from the latest iteration, not
    from the best one.
    """

    def __init__(self, model, save_dir="", *, tag_last=True, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.tag_last = tag_last

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
