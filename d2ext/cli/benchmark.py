"""Inference speed and memory of a d2ext config, optionally next to its peers in the same run.

    python tools/benchmark.py --config-file configs/dinov3_eomt.yaml --peers [--size 640]
        [--reps 7] [--batch 4] [--precision bf16] [--compile] [--exported DIR]
        [--json out.json] [KEY VALUE ...]

Random weights (MODEL.WEIGHTS and MODEL.DINO.WEIGHTS are ignored), eval mode, under
``torch.inference_mode``. Every row gets one warm-up pass, then --reps rounds in which each row
runs once, in a new random order per round: a shared machine's slow spells hit all rows alike.
The figure is the median over the rounds. EoMT runs in its trained state (masked attention off,
as after annealing) unless --masked-attn.

Rows:
  d2ext        the model alone: normalised (1, 3, S, S) tensor -> class and mask logits (the
               semantic head: logits at stride 16)
  d2ext_bN     the same at batch N (images/s)
  d2ext_e2e    end to end: an RGB uint8 S x S image -> ``Instances`` (detectron2's
               DefaultPredictor: resize, model, post-processing)
  parts        per-part times of one pass (hooks on the model's parts; nothing re-implemented)
With --peers, the same shape (the config's ViT: width, blocks, heads, MLP; patch 16, 4
registers; the config's queries and classes) in transformers:
  floor        the bare DINOv3 ViT: no head can run faster
  hf_eomt      EomtDinov3ForUniversalSegmentation, masked attention off
  hf_m2f       Mask2FormerForUniversalSegmentation with a DINOv3 backbone (masks at 1/16)
  hf_eomt_e2e  EomtImageProcessor + EoMT + post_process_instance_segmentation (EoMT configs)
  hf_m2f_head  d2ext's backbone (the same p2..p5 maps) + transformers' Mask2FormerPixelDecoder,
               Mask2FormerTransformerModule and class predictor at the config's head recipe:
               equal work to d2ext's row (Mask2Former-style configs)
--exported DIR (tools/export_model.py's output for the same config, fixed at S x S or dynamic)
adds the export, in ONNX Runtime (CUDA provider when MODEL.DEVICE is cuda) or as the torch.export
program, in the precision it was exported in (ONNX Runtime's idle threads set not to spin, so
they leave the cores to the other rows):
  onnxruntime  (or torch_export) the graph on the same normalised tensor as the d2ext row
  onnxruntime_e2e  the same image as d2ext_e2e through ExportedPredictor (d2ext's runtime)
An exported EoMT's masked-attention state (export.json) is given to the d2ext rows too, so both
do the same work.
--train adds one training step (forward, losses, backward, AdamW step) at --batch: d2ext_train
(the whole model, d2ext's optimizer) and, with --peers, hf_m2f_head_train (the same backbone +
transformers' head and Mask2FormerLoss).
--precision runs every row, d2ext's and the peers', under ``torch.autocast`` (bf16 / fp16);
--compile adds d2ext_compiled (and, with --train, d2ext_train_compiled): a copy of the model
with the same weights, compiled as MODEL.COMPILE compiles it for users (its declared network;
pre- and post-processing eager; MODEL.COMPILE_MODE applies), timed in the same interleaved
rounds as the eager rows; the first call of each compiled row (the compilation) is timed apart
and printed on its own line. FPS at 640x640 for ViT-S/B/L next to transformers' EoMT on a GPU:
    python tools/benchmark.py --config-file configs/dinov3_eomt.yaml --peers --precision bf16 \
        --compile --batch 1 MODEL.DINO.ARCH dinov3_vitl16 MODEL.DEVICE cuda
Peak memory (the "peak memory" line): CUDA max_memory_allocated; CPU the peak resident-set
growth during one pass (sampled every 2 ms). The machine may be shared: compare ratios from
one run only.

--memory prints, instead of times, the peak memory of the tensors PyTorch allocates (CUDA:
max_memory_allocated; CPU: the allocator events torch.profiler records, see
``d2ext.utils.timing.peak_allocated_mb``), in MiB above what the weights (and AdamW's states,
after one warm-up step) already hold: a training step at --batch (forward, losses, backward,
AdamW step) with MODEL.DINO.GRADIENT_CHECKPOINTING off and on, inference at batch 1, and
with --peers transformers' Mask2Former at the same shape (hf_m2f: the whole model with its
DINOv3 backbone; hf_m2f_head: d2ext's backbone + transformers' head, Mask2Former-style
configs; hf_eomt for EoMT configs), each with its per-image figure, and the weights /
gradients / AdamW states in fp32.
"""
import argparse
import copy
import json
import time

import numpy as np
import torch
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances

from ..engine import config_value, setup_cfg
from ..errors import UserError
from ..export import ExportedPredictor
from ..modeling.backbone.archs import DINO_ARCHS
from ..modeling.meta_arch import capabilities
from ..modeling.meta_arch.capabilities import compile_configured
from ..solver import build_optimizer
from ..utils.timing import (
    PRECISIONS,
    PartTimer,
    interleaved_medians,
    peak_allocated_mb,
    peak_memory_mb,
    with_precision,
)
from . import parse_args, run_tool


def model_parts(model):
    """name -> submodule, name -> method for the per-part breakdown (the model's
    ``BenchmarkParts.parts``)."""
    return capabilities(model).benchmark.parts(model)


def model_only(model):
    """A function of the normalised image tensor that runs the model without post-processing."""
    return capabilities(model).benchmark.predict(model)


def load_export(args, cfg, model):
    """``ExportedPredictor`` of --exported for ``cfg``'s model at the benchmark's size; an
    exported EoMT's masked-attention probabilities are copied into ``model``."""
    providers = ["CUDAExecutionProvider"] if cfg.MODEL.DEVICE.startswith("cuda") else None
    try:
        import onnxruntime
    except ImportError:  # a torch.export program runs without it
        options = None
    else:
        # ONNX Runtime's idle workers spin on the cores by default and would slow the PyTorch
        # rows timed between its calls; here they sleep.
        options = onnxruntime.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        predictor = ExportedPredictor(args.exported, providers, options)
    except FileNotFoundError as err:
        raise UserError(f"--exported {err}") from None
    spec = predictor.model.spec
    caps = capabilities(model)
    if spec["meta_architecture"] != caps.name:
        raise UserError(f"--exported {args.exported} holds a {spec['meta_architecture']}, the "
                         f"config a {caps.name}: export the same config.")
    if spec["size"] not in (None, [args.size, args.size]):
        raise UserError(f"--exported {args.exported} takes {spec['size'][0]}x{spec['size'][1]} "
                         f"only: run with --size {spec['size'][0]} (a square export), or export "
                         "with --dynamic.")
    caps.load_graph_constants(model, spec.get("graph_constants", {}))
    return predictor


def export_rows(predictor, x, image):
    """The export's rows: the graph on the normalised ``x``, and ``image`` end to end."""
    spec = predictor.model.spec
    inputs = [x]
    if "image_size" in spec["inputs"]:  # Mask R-CNN: x is all image, no padding
        inputs.append(torch.tensor(x.shape[-2:]))
    name = "onnxruntime" if spec["format"] == "onnx" else "torch_export"
    return {name: lambda: predictor.model.run(*inputs), f"{name}_e2e": lambda: predictor(image)}


def build_d2ext(args):
    cfg = setup_cfg(args.config_file, ["MODEL.WEIGHTS", "", "MODEL.DINO.WEIGHTS", "",
                                       "INPUT.MIN_SIZE_TEST", args.size,
                                       "INPUT.MAX_SIZE_TEST", args.size] + args.opts)
    model = build_model(cfg).eval()
    if not args.masked_attn:
        capabilities(model).trained_state(model)
    return cfg, model


def peer_models(cfg, args, device):
    """transformers' peers at the config's shape, in eval mode: {"floor": the bare DINOv3 ViT,
    "hf_eomt": EoMT-DINOv3 (masked attention off), "hf_m2f": Mask2Former with a DINOv3
    backbone}."""
    from transformers import (
        DINOv3ViTConfig,
        DINOv3ViTModel,
        EomtDinov3Config,
        EomtDinov3ForUniversalSegmentation,
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
    )

    arch = DINO_ARCHS[cfg.MODEL.DINO.ARCH]
    shape = dict(hidden_size=arch.width, num_hidden_layers=arch.depth,
                 num_attention_heads=arch.heads, intermediate_size=arch.mlp, patch_size=16,
                 num_register_tokens=4, image_size=args.size)
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    queries = config_value(cfg, capabilities(cfg).benchmark.num_queries_key)
    models = {"floor": DINOv3ViTModel(DINOv3ViTConfig(**shape))}
    models["hf_eomt"] = EomtDinov3ForUniversalSegmentation(EomtDinov3Config(
        **shape, num_queries=queries, num_blocks=cfg.MODEL.EOMT.NUM_BLOCKS,
        num_labels=num_classes))
    models["hf_eomt"].attn_mask_probs.zero_()
    depth = arch.depth
    models["hf_m2f"] = Mask2FormerForUniversalSegmentation(Mask2FormerConfig(
        backbone_config=DINOv3ViTConfig(**shape, out_indices=[depth // 4, depth // 2,
                                                             3 * depth // 4, depth]),
        num_labels=num_classes, num_queries=queries))
    return {name: m.eval().to(device) for name, m in models.items()}


def peers(cfg, args, x, device):
    """name -> function running one of transformers' peers at the config's shape."""
    models = peer_models(cfg, args, device)
    floor, eomt, m2f = models["floor"], models["hf_eomt"], models["hf_m2f"]
    bench = capabilities(cfg).benchmark
    rows = {"floor": lambda: floor(pixel_values=x)}
    rows["hf_eomt"] = lambda: eomt(pixel_values=x)
    if bench.peer == "hf_eomt":  # the peer's own pre- and post-processing, end to end
        from transformers import EomtImageProcessor

        processor = EomtImageProcessor(size={"shortest_edge": args.size,
                                             "longest_edge": args.size})
        image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), np.uint8)

        def hf_pipeline():
            inputs = processor(images=image, return_tensors="pt").to(device)
            outputs = eomt(**inputs)
            return processor.post_process_instance_segmentation(
                outputs, target_sizes=[(args.size, args.size)])

        rows["hf_eomt_e2e"] = hf_pipeline
    rows["hf_m2f"] = lambda: m2f(pixel_values=x)
    return rows


def hf_mask2former_head(cfg, device):
    """transformers' Mask2Former pixel decoder + transformer module + class predictor + loss at
    the config's head recipe (widths, layers, heads, queries, points), for the equal-work rows:
    fed the same simple-feature-pyramid maps (p2..p5) as d2ext's head."""
    from transformers import Mask2FormerConfig
    from transformers.models.mask2former import modeling_mask2former as hf

    head, mf = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.MASK_FORMER
    config = Mask2FormerConfig(
        feature_size=head.CONVS_DIM, mask_feature_size=head.MASK_DIM, hidden_dim=mf.HIDDEN_DIM,
        num_attention_heads=mf.NHEADS, encoder_layers=head.TRANSFORMER_ENC_LAYERS,
        encoder_feedforward_dim=head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD,
        decoder_layers=mf.DEC_LAYERS, dim_feedforward=mf.DIM_FEEDFORWARD,
        pre_norm=mf.PRE_NORM, num_queries=mf.NUM_OBJECT_QUERIES, num_labels=head.NUM_CLASSES,
        train_num_points=mf.TRAIN_NUM_POINTS, oversample_ratio=mf.OVERSAMPLE_RATIO,
        importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO, class_weight=mf.CLASS_WEIGHT,
        mask_weight=mf.MASK_WEIGHT, dice_weight=mf.DICE_WEIGHT, dropout=mf.DROPOUT,
        backbone_config={"model_type": "resnet", "depths": [1, 1, 1, 1]})
    modules = torch.nn.ModuleDict({
        "pixel": hf.Mask2FormerPixelDecoder(config, [cfg.MODEL.FPN.OUT_CHANNELS] * 4),
        "transformer": hf.Mask2FormerTransformerModule(head.CONVS_DIM, config),
        "classes": torch.nn.Linear(mf.HIDDEN_DIM, head.NUM_CLASSES + 1)}).to(device)
    torch.nn.init.normal_(modules["pixel"].level_embed)
    weights = {"loss_cross_entropy": mf.CLASS_WEIGHT, "loss_mask": mf.MASK_WEIGHT,
               "loss_dice": mf.DICE_WEIGHT}
    loss = hf.Mask2FormerLoss(config, weights).to(device)

    def predict(features):
        pix = modules["pixel"]([features[k] for k in ("p2", "p3", "p4", "p5")])
        dec = modules["transformer"](list(pix.multi_scale_features), pix.mask_features,
                                     output_hidden_states=True)
        logits = [modules["classes"](h.transpose(0, 1)) for h in dec.intermediate_hidden_states]
        return logits, dec.masks_queries_logits

    def losses(features, targets):
        logits, masks = predict(features)
        out = loss(masks[-1], logits[-1], [t["masks"] for t in targets],
                   [t["labels"] for t in targets],
                   [{"masks_queries_logits": m, "class_queries_logits": c}
                    for c, m in zip(logits[:-1], masks[:-1])])
        return sum(v * next(w for k, w in weights.items() if k in key) for key, v in out.items())

    return modules, predict, losses


def synthetic_batch(batch, size, num_classes, device, seed=0):
    """Training inputs: random images with 5 box-shaped instances each, as detectron2 dicts."""
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(batch):
        masks = torch.zeros(5, size, size, dtype=torch.bool)
        for m in masks:
            y, x = torch.randint(0, size // 2, (2,), generator=g).tolist()
            m[y: y + size // 3, x: x + size // 3] = True
        inst = Instances((size, size), gt_classes=torch.randint(0, num_classes, (5,), generator=g),
                         gt_masks=BitMasks(masks))
        inputs.append({"image": torch.randint(0, 256, (3, size, size), generator=g).float(),
                       "instances": inst})
    return inputs


def training_steps(cfg, model, hf_head, inputs, device):
    """name -> one training step (forward, losses, backward, optimizer step): d2ext's whole
    model, and with ``hf_head`` the same backbone + transformers' head and loss."""
    optimizer = build_optimizer(cfg, model)

    def step(loss_fn, opt):
        with torch.inference_mode(False), torch.enable_grad():
            model.train()
            loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.eval()

    rows = {"d2ext_train": lambda: step(lambda: sum(model(inputs).values()), optimizer)}
    if hf_head is not None:
        modules, _, hf_losses = hf_head
        hf_opt = torch.optim.AdamW(list(model.backbone.parameters()) + list(modules.parameters()),
                                   lr=cfg.SOLVER.BASE_LR)

        def hf_loss():  # the same preprocessing and targets as d2ext's step
            modules.train()
            images = model.preprocess_image(inputs)
            targets = model.prepare_targets(inputs, images)
            return hf_losses(model.extract_features(images.tensor), targets)

        rows["hf_m2f_head_train"] = lambda: step(hf_loss, hf_opt)
    return rows


def compiled_twin(cfg, model):
    """A copy of ``model`` (its weights and state) compiled as MODEL.COMPILE compiles it for
    users (``compile_configured``: the declared network, MODEL.COMPILE_MODE), for the compiled
    rows; ``model`` stays eager."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.COMPILE = True
    twin = copy.deepcopy(model)
    compile_configured(cfg, twin)
    return twin


def first_calls_s(fns):
    """name -> seconds of the first call of each fn (for a compiled one, its compilation),
    under ``torch.inference_mode`` as the timed rounds run them."""
    seconds = {}
    with torch.inference_mode():
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            seconds[name] = time.perf_counter() - start
    return seconds


def hf_training_step(hf_model, pixel_values, targets, lr):
    """One training step of a transformers segmentation model with its own loss (``loss`` from
    ``mask_labels`` / ``class_labels``) and AdamW."""
    optimizer = torch.optim.AdamW(hf_model.parameters(), lr=lr)

    def step():
        with torch.inference_mode(False), torch.enable_grad():
            hf_model.train()
            loss = hf_model(pixel_values=pixel_values,
                            mask_labels=[t["masks"] for t in targets],
                            class_labels=[t["labels"] for t in targets]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            hf_model.eval()
    return step


def _mib(params):
    return sum(p.numel() * p.element_size() for p in params) / 2**20


def memory_rows(args, cfg, model, device):
    """name -> (images, peak MiB, MiB of the gradients it holds): the --memory table's rows."""
    bench = capabilities(model).benchmark
    if bench.peer is None:
        raise UserError(f"--memory measures the mask-classification recipes next to "
                        f"transformers' Mask2Former; {capabilities(model).name} has no such "
                        "peer: use an EoMT or Mask2Former-style config.")
    inputs = synthetic_batch(args.batch, args.size, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, device)
    x = torch.rand(1, 3, args.size, args.size, device=device)
    with_head = args.peers and bench.peer == "hf_m2f"
    hf_head = hf_mask2former_head(cfg, device) if with_head else None
    if hf_head is not None:
        hf_head[0].eval()

    def precise(fn):
        return with_precision(fn, device, args.precision)

    def train_peak(step, *modules):
        # After one warm-up step, which allocates AdamW's states, and without its gradients:
        # the peak is then above the weights and AdamW's states alone, on any device.
        precise(step)()
        for module in modules:
            module.zero_grad(set_to_none=True)
        return peak_allocated_mb(precise(step), device)

    def infer_peak(fn):
        with torch.inference_mode():
            return peak_allocated_mb(precise(fn), device)

    def grads(*modules):
        return _mib(p for m in modules for p in m.parameters() if p.requires_grad)

    rows = {}
    steps = training_steps(cfg, model, hf_head, inputs, device)
    rows["d2ext_train"] = (args.batch, train_peak(steps["d2ext_train"], model), grads(model))
    gc_cfg = cfg.clone()
    gc_cfg.defrost()
    gc_cfg.MODEL.DINO.GRADIENT_CHECKPOINTING = True
    gc_model = build_model(gc_cfg).eval()
    gc_model.load_state_dict(model.state_dict())
    gc_step = training_steps(gc_cfg, gc_model, None, inputs, device)["d2ext_train"]
    rows["d2ext_train_gc"] = (args.batch, train_peak(gc_step, gc_model), grads(gc_model))
    del gc_model, gc_step
    run = model_only(model)
    rows["d2ext"] = (1, infer_peak(lambda: run(x)), 0.0)
    if not args.peers:
        return rows
    hf = peer_models(cfg, args, device)
    images = model.preprocess_image(inputs)
    targets = model.prepare_targets(inputs, images)
    for name in ("hf_m2f",) + (("hf_eomt",) if bench.peer == "hf_eomt" else ()):
        step = hf_training_step(hf[name], images.tensor, targets, cfg.SOLVER.BASE_LR)
        rows[f"{name}_train"] = (args.batch, train_peak(step, hf[name]), grads(hf[name]))
        rows[name] = (1, infer_peak(lambda m=hf[name]: m(pixel_values=x)), 0.0)
    if hf_head is not None:
        rows["hf_m2f_head_train"] = (
            args.batch, train_peak(steps["hf_m2f_head_train"], model.backbone, hf_head[0]),
            grads(model.backbone, hf_head[0]))
        rows["hf_m2f_head"] = (1, infer_peak(lambda: hf_head[1](model.extract_features(x))), 0.0)
    return rows


def report_memory(args, cfg, model, device):
    """Print the --memory table (and write it to --json)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    state = {"weights": _mib(model.parameters()), "gradients": _mib(trainable),
             "adamw": 2 * _mib(trainable)}
    rows = memory_rows(args, cfg, model, device)
    how = ("CUDA max_memory_allocated" if device.startswith("cuda")
           else "PyTorch's CPU allocations (torch.profiler)")
    print(f"config {args.config_file}, size {args.size}, train batch {args.batch}, device "
          f"{device}, precision {args.precision}, torch {torch.__version__}")
    print(f"peak memory in MiB above the weights and AdamW's states ({how}); per image: "
          "(peak - gradients) / images")
    print(f"{'row':<20}{'images':>7}{'peak':>10}{'per image':>11}")
    table = {}
    for name, (images, peak, grad) in rows.items():
        per_image = (peak - grad) / images
        table[name] = {"images": images, "peak_mb": peak, "gradients_mb": grad,
                       "per_image_mb": per_image}
        print(f"{name:<20}{images:>7}{peak:>10.1f}{per_image:>11.1f}")
    print(f"d2ext model state: weights {state['weights']:.1f} MiB, gradients "
          f"{state['gradients']:.1f} MiB, AdamW states {state['adamw']:.1f} MiB "
          f"({sum(p.numel() for p in trainable) / 1e6:.2f} M trainable parameters)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config_file, "size": args.size, "batch": args.batch,
                       "device": device, "precision": args.precision, "memory_mb": table,
                       "state_mb": state}, f, indent=1)
    return table


def _main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--peers", action="store_true", help="also time transformers' peers")
    parser.add_argument("--size", type=int, default=640, help="square input side")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4, help="batch for images/s (1: skip)")
    parser.add_argument("--masked-attn", action="store_true",
                        help="EoMT: keep masked attention on (start of training)")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                        help="run every row under torch.autocast with this dtype (bf16 wants a "
                        "GPU or a CPU with bf16 instructions)")
    parser.add_argument("--compile", action="store_true",
                        help="add d2ext_compiled (and with --train d2ext_train_compiled): the "
                        "model compiled as MODEL.COMPILE compiles it, next to the eager rows; "
                        "compiling takes minutes on a CPU")
    parser.add_argument("--memory", action="store_true",
                        help="print peak memory instead of times: a training step at --batch "
                        "(gradient checkpointing off and on), inference, and with --peers "
                        "transformers' Mask2Former at the same shape")
    parser.add_argument("--train", action="store_true",
                        help="also time one training step (forward, backward, optimizer) at "
                        "--batch, d2ext's and (with --peers, Mask2Former-style configs) the "
                        "same backbone with transformers' head and loss")
    parser.add_argument("--exported", metavar="DIR", default="",
                        help="also time this export of the config (tools/export_model.py)")
    parser.add_argument("--json", default="", help="also write the results to this file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a mistake instead of its one-line message")
    args = parse_args(parser, argv)
    torch.manual_seed(0)
    cfg, model = build_d2ext(args)
    if args.memory:
        report_memory(args, cfg, model, cfg.MODEL.DEVICE)
        return
    exported = load_export(args, cfg, model) if args.exported else None
    device = cfg.MODEL.DEVICE
    x = torch.rand(1, 3, args.size, args.size, device=device)
    run = model_only(model)
    fns, extra = {"d2ext": lambda: run(x)}, {}
    extra["d2ext_peak_mem_mb"] = peak_memory_mb(
        with_precision(lambda: run(x), device, args.precision), device)
    if args.batch > 1:
        xb = torch.rand(args.batch, 3, args.size, args.size, device=device)
        fns[f"d2ext_b{args.batch}"] = lambda: run(xb)
        extra[f"d2ext_b{args.batch}_peak_mem_mb"] = peak_memory_mb(
            with_precision(lambda: run(xb), device, args.precision), device)
    predictor = DefaultPredictor(cfg.clone())
    predictor.model = model  # the same weights and state as the rows above
    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), np.uint8)
    fns["d2ext_e2e"] = lambda: predictor(image)
    hf_head = None
    if args.peers:
        fns.update(peers(cfg, args, x, device))
        if capabilities(model).benchmark.peer == "hf_m2f":
            # equal work: the same feature maps into transformers' head
            hf_head = hf_mask2former_head(cfg, device)
            hf_head[0].eval()
            fns["hf_m2f_head"] = lambda: hf_head[1](model.extract_features(x))
    if args.compile:
        twin = compiled_twin(cfg, model)
        run_compiled = model_only(twin)
        fns["d2ext_compiled"] = lambda: run_compiled(x)
    if args.train:
        inputs = synthetic_batch(args.batch, args.size, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, device)
        fns.update(training_steps(cfg, model, hf_head, inputs, device))
        if args.compile:
            fns["d2ext_train_compiled"] = training_steps(cfg, twin, None, inputs,
                                                         device)["d2ext_train"]
    fns = {name: with_precision(fn, device, args.precision) for name, fn in fns.items()}
    compile_s = first_calls_s({n: fn for n, fn in fns.items() if n.endswith("_compiled")})
    if exported is not None:
        exported.aug = predictor.aug  # d2ext_e2e's test-time resize (to --size), not the export's
        fns.update(export_rows(exported, x, image))
    rows = interleaved_medians(fns, args.reps, device)
    if args.batch > 1:
        extra["images_per_s"] = 1000 * args.batch / rows[f"d2ext_b{args.batch}"]
    modules, methods = model_parts(model)
    timer = PartTimer(model, modules, methods)
    with torch.inference_mode():
        predictor(image)
    timer.close()
    extra["parts_ms"] = timer.times

    print(f"config {args.config_file}, size {args.size}, reps {args.reps}, device {device}, "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}, precision "
          f"{args.precision}{', compiled' if args.compile else ''}")
    for name, ms in rows.items():
        ratios = []
        if "floor" in rows and not name.endswith("e2e"):
            ratios.append(f"{ms / rows['floor']:.2f} x floor")
        peer = capabilities(model).benchmark.peer
        if name == "d2ext":
            ratios += [f"{ms / rows[p]:.2f} x {p}" for p in (peer, "hf_m2f_head") if p in rows]
        if name == "d2ext_train" and "hf_m2f_head_train" in rows:
            ratios.append(f"{ms / rows['hf_m2f_head_train']:.2f} x hf_m2f_head_train")
        if name in ("d2ext_compiled", "d2ext_train_compiled"):
            eager = name.replace("_compiled", "")
            ratios.append(f"{ms / rows[eager]:.2f} x {eager}")
        if name == "d2ext_e2e" and "hf_eomt_e2e" in rows:
            ratios.append(f"{ms / rows['hf_eomt_e2e']:.2f} x hf_eomt_e2e")
        if name in ("onnxruntime", "torch_export"):
            ratios.append(f"{ms / rows['d2ext']:.2f} x d2ext")
        if name in ("onnxruntime_e2e", "torch_export_e2e"):
            ratios.append(f"{ms / rows['d2ext_e2e']:.2f} x d2ext_e2e")
        print(f"{name}: {ms:.1f} ms" + (f"  ({', '.join(ratios)})" if ratios else ""))
    if compile_s:
        extra["compile_s"] = compile_s
        print("compilation (first call, not in the times above): " + ", ".join(
            f"{name} {s:.1f} s" for name, s in compile_s.items()))
    if "images_per_s" in extra:
        print(f"throughput at batch {args.batch}: {extra['images_per_s']:.2f} images/s")
    print(f"peak memory, batch 1: {extra['d2ext_peak_mem_mb']:.0f} MiB"
          + (f", batch {args.batch}: {extra[f'd2ext_b{args.batch}_peak_mem_mb']:.0f} MiB"
             if args.batch > 1 else ""))
    print("parts (one end-to-end pass): " + ", ".join(
        f"{k} {v:.1f} ms" for k, v in extra["parts_ms"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config_file, "size": args.size, "device": device,
                       "precision": args.precision, "compiled": args.compile, "ms": rows,
                       **extra}, f, indent=1)


def main(argv=None):
    """benchmark: a user mistake ends in one line (``d2ext.cli.run_tool``)."""
    return run_tool("benchmark", _main, argv)
