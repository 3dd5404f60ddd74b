"""What the rest of d2ext may ask of a meta-architecture, declared once per model.

The trainer, evaluators, demo, curation tools, exporter, export runtime and benchmark never
compare the configured meta-architecture with a name, nor probe a model for attributes: they ask
``capabilities(cfg)`` (before a model exists) or ``capabilities(model)`` and read the answer.
Each d2ext meta-architecture states its ``Capabilities`` as the class attribute
``capabilities``, in its own file; detectron2's own models that d2ext configs use
(``GeneralizedRCNN``, ``SemanticSegmentor``) are declared in ``detectron2_models.py``. A
meta-architecture without a declaration (another project's) gets ``Capabilities()``: trainable,
no class-count check, not exportable.
"""
import logging
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ...errors import UserError

__all__ = ["BenchmarkParts", "Capabilities", "ExportInterface", "PredictGraph", "capabilities",
           "compile_configured", "compile_network", "declare", "not_exportable_message",
           "run_as_detectron2_inputs"]

logger = logging.getLogger(__name__)
_DECLARED = {}  # class -> Capabilities, for classes d2ext does not own (detectron2's)


def _no_outputs_change(cfg):
    return ("instances",)


def _nothing(model, *args):
    return None


@dataclass(frozen=True)
class ExportInterface:
    """How a model becomes one graph, and how that graph's raw outputs become the eager model's
    detectron2 outputs.

    inputs: the graph's input names: "images" (1, 3, H, W) normalised and zero-padded at the
        bottom and right[, "image_size" (2,) int64, the (h, w) of the image in the padding].
    output_names(model): the graph's output names.
    graph(model, output_names): an ``nn.Module`` taking the inputs and returning the outputs.
    postprocessor(cfg): ``fn(raw, padded_size, image_size, output_size)`` turning one image's
        raw outputs (name -> tensor, batch 1) into the model's output dict, with the functions
        the eager model's inference calls.
    formats: the graph formats it exports to ("onnx", "torch_export"); ``formats_reason`` why
        not the others.
    traced: exported by TorchScript tracing (ONNX only, its opset ``max_opset`` at most)
        instead of ``torch.export``.
    fixed_size_reason(cfg, fmt): why this model exports in ``fmt`` at a fixed size only, or
        None (the exporter adds the backbone's reasons).
    graph_constants(model): state a graph fixes, written into export.json (EoMT's masked
        attention probabilities); raises ``ValueError`` for a state no graph can hold.
    test_protocol(cfg): None where the runtime pads each image as ``inputs`` says; else
        ``fn(batched_inputs, predict)`` -> per image the output dict, feeding the graph as the
        eager model's inference does (EoMT's evaluation protocol: black-padded squares,
        windows), ``predict`` mapping normalised (N, 3, H, W) to the raw outputs by name.
    """

    output_names: Callable
    graph: Callable
    postprocessor: Callable
    inputs: tuple = ("images",)
    formats: tuple = ("onnx", "torch_export")
    formats_reason: str = ""
    traced: bool = False
    max_opset: Optional[int] = None
    fixed_size_reason: Callable = _nothing
    graph_constants: Callable = lambda model: {}
    test_protocol: Callable = lambda cfg: None


@dataclass(frozen=True)
class BenchmarkParts:
    """What ``tools/benchmark.py`` times of a model.

    predict(model): a function of the normalised image batch (N, 3, H, W) running the network
        without pre- or post-processing.
    parts(model): (name -> submodule, name -> method name) timed separately in one pass.
    peer: the transformers model of equal work ("hf_eomt", "hf_m2f") or None.
    num_queries_key: the config key of the query count the peers get.
    """

    predict: Callable
    parts: Callable = lambda model: ({}, {})
    peer: Optional[str] = None
    num_queries_key: str = "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES"


def run_as_detectron2_inputs(model):
    """A normalised batch run through the model's detectron2 interface (models without a
    separate network entry point)."""
    return lambda x: model([{"image": x[0] * 255, "height": x.shape[-2], "width": x.shape[-1]}])


@dataclass(frozen=True)
class Capabilities:
    """One meta-architecture's answers to what the tools ask.

    trainable: it has parameters to train (zero-training models refuse to train and need no
        MODEL.WEIGHTS).
    num_classes_key: the config key of its class count, None where classes are not counted in
        the config (zero-training models).
    class_metadata: the dataset metadata field naming the classes it predicts
        ("thing_classes", or "stuff_classes" for semantic models, whose count must match).
    outputs(cfg): the keys of its per-image output dict with this config.
    open_vocabulary: classes are given by name at run time (MODEL.TEXT_PROMPT.CLASSES,
        ``--classes``).
    prompt_methods: prompts are chosen per image by MODEL.SAM_PROMPT.* (``--method``,
        ``--num-segments``, ``--reference``).
    classes_from_model: the built model names its own classes (``model.class_names``).
    train_mapper: the INPUT.DATASET_MAPPER_NAME its recipes train with ("" = detectron2's
        DatasetMapper).
    padding_multiple(model): the multiple every padded input side is.
    lr_factor_func(model, cfg): its own per-parameter LR factor function, or None for d2ext's
        DINO rule (backbone multiplier, layer decay).
    trained_state(model): puts a freshly built model into the state a trained one runs in
        (EoMT: masked attention off), for benchmarks on random weights.
    load_graph_constants(model, constants): gives the model the state an export fixed.
    step_loss_context(model, batched_inputs): where its losses are normalised over the whole
        batch (the set criterion's mask count), a context manager within which they are
        normalised by ``batched_inputs`` (one optimizer step's, on this process; a collective
        where it counts over processes) while gradient accumulation passes each micro-batch:
        the micro-batches' losses then add up unscaled. None (the default) where the losses
        are per-image means (detectron2's): each micro-batch's loss then weighs its share of
        the step's images.
    export: its ``ExportInterface``, or None with ``not_exportable`` saying why.
    benchmark: its ``BenchmarkParts``.
    compiled_parts(model): name -> (owner, attribute): the network that MODEL.COMPILE compiles
        (``compile_network``), a submodule or a method of ``owner`` whose first argument is the
        normalised, padded image batch, free of graph breaks; the data-dependent pre- and
        post-processing around it stay eager. {} (the default): nothing is compiled.
    """

    name: str = ""  # the meta-architecture's registered name, filled in by ``capabilities``
    trainable: bool = True
    num_classes_key: Optional[str] = None
    class_metadata: str = "thing_classes"
    outputs: Callable = _no_outputs_change
    open_vocabulary: bool = False
    prompt_methods: bool = False
    classes_from_model: bool = False
    train_mapper: str = ""
    padding_multiple: Callable = lambda model: model.backbone.size_divisibility
    lr_factor_func: Callable = _nothing
    trained_state: Callable = _nothing
    load_graph_constants: Callable = _nothing
    step_loss_context: Callable = _nothing
    export: Optional[ExportInterface] = None
    not_exportable: str = "d2ext declares no export for it"
    benchmark: BenchmarkParts = field(default_factory=lambda: BenchmarkParts(
        predict=run_as_detectron2_inputs))
    compiled_parts: Callable = lambda model: {}


def declare(cls, caps):
    """Declare ``caps`` for a meta-architecture class d2ext does not own (detectron2's)."""
    _DECLARED[cls] = caps
    return caps


def _lookup(cls):
    """A d2ext model's declaration is inherited by its subclasses; a declaration for another
    project's class holds for that class alone (a subclass may output or export differently)."""
    if cls in _DECLARED:
        return _DECLARED[cls]
    for klass in cls.__mro__:
        if isinstance(klass.__dict__.get("capabilities"), Capabilities):
            return klass.__dict__["capabilities"]
    return Capabilities()


def capabilities(cfg_or_model):
    """The ``Capabilities`` of a config's meta-architecture (MODEL.META_ARCHITECTURE), or of a
    built model (a ``DistributedDataParallel`` wrapper is looked through). Raises
    ``ValueError`` naming the registered ones for a name that is not registered."""
    if isinstance(cfg_or_model, nn.Module):
        model = getattr(cfg_or_model, "module", cfg_or_model)  # DDP-wrapped
        cls = type(model)
    else:
        name = cfg_or_model.MODEL.META_ARCHITECTURE
        if name not in META_ARCH_REGISTRY:
            names = sorted(n for n, _ in META_ARCH_REGISTRY)
            raise ValueError(f"MODEL.META_ARCHITECTURE={name!r} is not registered; choose one "
                             f"of {names}.")
        cls = META_ARCH_REGISTRY.get(name)
    return replace(_lookup(cls), name=cls.__name__)


def compile_network(model, **options):
    """``torch.compile`` (with ``options``) the model's ``compiled_parts`` in place: a
    submodule by ``nn.Module.compile`` (its parameters and state dict keep their names), a
    method by an instance attribute of its compiled version. Returns the compiled parts' names
    ([] where the model declares none)."""
    model = getattr(model, "module", model)  # DDP-wrapped
    parts = capabilities(model).compiled_parts(model)
    for owner, attribute in parts.values():
        target = getattr(owner, attribute)
        if isinstance(target, nn.Module):
            target.compile(**options)
        else:
            setattr(owner, attribute, torch.compile(target, **options))
    return list(parts)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_configured(cfg, model):
    """Where MODEL.COMPILE is set, ``compile_network(model)`` with MODEL.COMPILE_MODE: the
    trainer, evaluation and predictor call it on the models they build. Returns the compiled
    parts' names."""
    if not cfg.MODEL.COMPILE:
        return []
    mode = cfg.MODEL.COMPILE_MODE
    if mode not in COMPILE_MODES:
        raise UserError(f"MODEL.COMPILE_MODE={mode!r}: choose one of {list(COMPILE_MODES)}.")
    parts = compile_network(model, mode=None if mode == "default" else mode)
    if not parts:
        logger.warning(f"MODEL.COMPILE: {capabilities(model).name} declares no part to compile; "
                       "it runs eager.")
    return parts


def not_exportable_message(caps):
    """One line: why the meta-architecture of ``caps`` cannot be exported, and which can."""
    exportable = sorted(name for name, cls in META_ARCH_REGISTRY
                        if _lookup(cls).export is not None)
    return (f"MODEL.META_ARCHITECTURE={caps.name!r} cannot be exported ({caps.not_exportable}); "
            f"exportable: {', '.join(exportable)}.")


class PredictGraph(nn.Module):
    """``model.predict(images, **constants)`` as a function of tensors: normalised, padded
    images (1, 3, H, W) -> the tensors of ``output_names`` (from predict's dict, or its one
    tensor). ``constants`` are the graph constants (``ExportInterface.graph_constants``)."""

    def __init__(self, model, output_names, constants=None):
        super().__init__()
        self.model = model
        self.output_names = list(output_names)
        self.constants = dict(constants or {})

    def forward(self, images):
        outputs = self.model.predict(images, **self.constants)
        if isinstance(outputs, torch.Tensor):
            return outputs
        return tuple(outputs[name] for name in self.output_names)
