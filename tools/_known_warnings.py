"""Warnings that d2ext's dependencies raise on every run and that a user cannot act on, each
silenced here by its message before d2ext (and so detectron2) is imported; any other warning is
still shown."""
import logging
import warnings

# fvcore (detectron2's dependency) scripts helpers with torch.jit.script, deprecated in torch.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated",
                        category=FutureWarning)
# detectron2 and segment-anything call torch.meshgrid without indexing=.
warnings.filterwarnings("ignore", message="torch.meshgrid: in an upcoming release",
                        category=UserWarning)
# detectron2's annotations_to_instances wraps read-only NumPy masks (it copies them itself).
warnings.filterwarnings("ignore", message="The given NumPy array is not writable",
                        category=UserWarning)
# detectron2's ROIPooler asks torch.fx whether it is tracing; torch logs a deprecation once.
logging.getLogger("torch.fx._symbolic_trace").addFilter(
    lambda record: "is_fx_tracing will return true" not in record.getMessage())
# onnxscript's optimizer (the ONNX export) logs each multi-output node it leaves unfolded.
logging.getLogger("onnxscript.optimizer._constant_folding").addFilter(
    lambda record: "Skipping constant folding for op" not in record.getMessage())
# detectron2 logs its environment at start-up through torch.utils.cpp_extension, which warns on
# every machine that has a CUDA toolkit but no GPU.
logging.getLogger("torch.utils.cpp_extension").addFilter(
    lambda record: "No CUDA runtime is found" not in record.getMessage())
