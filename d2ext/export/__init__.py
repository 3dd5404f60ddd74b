"""Deployment: d2ext's models as ONNX or torch.export graphs (``exporter``) and the runtime
that turns a graph's raw outputs into the eager model's detectron2 outputs (``runtime``)."""
from .exporter import ExportError, check_exportable, export_model
from .runtime import ExportedModel, ExportedPredictor, load_graph
from .spec import read_spec

__all__ = ["ExportError", "ExportedModel", "ExportedPredictor", "check_exportable",
           "export_model", "load_graph", "read_spec"]
