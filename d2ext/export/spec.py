"""The on-disk format of an export: the graph file, ``export.json`` (what the graph takes and
gives) and ``config.yaml``, read and written in one place for the exporter and the runtime."""
import json
import os

FORMATS = {"onnx": "model.onnx", "torch_export": "model.pt2"}
SPEC_FILE, CONFIG_FILE = "export.json", "config.yaml"


def write_spec(output_dir, spec, cfg):
    """Write ``spec`` as export.json and ``cfg`` as config.yaml into ``output_dir``."""
    with open(os.path.join(output_dir, SPEC_FILE), "w") as f:
        json.dump(spec, f, indent=1)
    with open(os.path.join(output_dir, CONFIG_FILE), "w") as f:
        f.write(cfg.dump())


def read_spec(export_dir):
    """The export.json of ``export_dir``; ``FileNotFoundError`` naming the folder and the tool
    that writes it when there is none."""
    path = os.path.join(export_dir, SPEC_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{export_dir}: no {SPEC_FILE} there; write the folder with "
                                "tools/export_model.py.")
    with open(path) as f:
        return json.load(f)


def config_path(export_dir):
    return os.path.join(export_dir, CONFIG_FILE)
