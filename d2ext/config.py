"""d2ext's config keys. Every key d2ext reads is added here with its default."""
from detectron2.config import CfgNode as CN


def add_d2ext_config(cfg):
    """Add d2ext's keys (with defaults) to a detectron2 config, in place."""
    add_dino_config(cfg)
    add_mask_former_config(cfg)
    add_eomt_config(cfg)
    add_sam_prompt_config(cfg)
    add_text_prompt_config(cfg)
    add_input_config(cfg)
    add_datasets_config(cfg)
    add_solver_config(cfg)
    add_evaluation_config(cfg)
    add_tools_config(cfg)
    # torch.compile the network (backbone and heads: the model's declared compiled_parts) in
    # training, evaluation and the predictor (demo, batch prediction); the data-dependent pre-
    # and post-processing stay eager. Off by default: compiling costs minutes at the first
    # image, and a CPU needs a C++ compiler. Image sizes are traced static, then dynamic after
    # the first new size, so inference over many sizes does not recompile per image.
    cfg.MODEL.COMPILE = False
    # torch.compile's mode: "default", "reduce-overhead" (CUDA graphs) or "max-autotune".
    cfg.MODEL.COMPILE_MODE = "default"
    # The best device here: CUDA if available, else Apple MPS, else CPU. A concrete name, so
    # that detectron2's own build_model / DefaultPredictor / DefaultTrainer take the config as
    # it is; d2ext's tools also accept "auto" (d2ext.engine.resolve_device).
    cfg.MODEL.DEVICE = default_device()


def add_dino_config(cfg):
    """MODEL.DINO: the DINOv2 / DINOv3 ViT and DINOv3 ConvNeXt backbones."""
    # --- DINOv2 / DINOv3 ViT backbone (d2ext/modeling/backbone/dino_vit.py) ---
    cfg.MODEL.DINO = CN()
    # Architecture by name (see d2ext.modeling.backbone.archs.DINO_ARCHS): the model is built
    # from this alone, so it builds offline with random weights.
    cfg.MODEL.DINO.ARCH = "dinov3_vits16"
    # Pretrained weights for the ViT only: "" (random), a transformers hub id, a local
    # `save_pretrained` directory, or a `.pth` / `.safetensors` state dict in transformers' layout
    # or Meta's (the original DINOv2 / DINOv3 files). MODEL.WEIGHTS (the whole detector) is
    # loaded afterwards and takes precedence.
    cfg.MODEL.DINO.WEIGHTS = ""
    # Blocks whose (layer-normed) patch tokens feed the neck; 0-based, negative counts from the
    # end. Several blocks are concatenated along channels.
    cfg.MODEL.DINO.OUT_BLOCKS = [-1]
    # 0: train everything; N > 0: freeze the patch embedding and the first N blocks;
    # -1: freeze the whole ViT (embedding, every block, final norm).
    cfg.MODEL.DINO.FREEZE_BLOCKS = 0
    cfg.MODEL.DINO.DROP_PATH_RATE = 0.0
    # Layer-wise LR decay: block i gets lr * LAYER_DECAY ** (num_blocks - i); 1.0 disables.
    # EoMT follows its own recipe (EoMT.lr_factor_func).
    cfg.MODEL.DINO.LAYER_DECAY = 1.0
    # Recompute block activations in the backward pass: trades compute for memory (each block's
    # forward runs twice, its activations are not kept).
    cfg.MODEL.DINO.GRADIENT_CHECKPOINTING = False
    # Simple feature pyramid (ViTDet) over the ViT's stride-16 map: p2..p5 (+ p6 by max pool).
    # Its width and norm are MODEL.FPN.OUT_CHANNELS and MODEL.FPN.NORM.
    cfg.MODEL.DINO.SFP_SCALE_FACTORS = [4.0, 2.0, 1.0, 0.5]
    # --- DINOv3 ConvNeXt backbones (d2ext/modeling/backbone/dino_convnext.py): MODEL.DINO.ARCH
    # dinov3_convnext_{tiny,small,base,large}; WEIGHTS and DROP_PATH_RATE as above, FREEZE_BLOCKS
    # counts stages. The stages the backbone returns (res2..res5, strides 4-32):
    cfg.MODEL.DINO.CONVNEXT_OUT_FEATURES = ["res2", "res3", "res4", "res5"]


def add_mask_former_config(cfg):
    """MODEL.MASK_FORMER and MODEL.SEM_SEG_HEAD: the Mask2Former-style head, Mask2Former's keys."""
    # --- Transformer decoder, matcher and losses (d2ext/modeling/{transformer_decoder,matcher,
    # criterion}.py) ---
    cfg.MODEL.MASK_FORMER = CN()
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1  # CE weight of the "no object" class
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 2.0
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 5.0  # point-sampled mask BCE
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 5.0
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100
    cfg.MODEL.MASK_FORMER.NHEADS = 8
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.0
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048
    # Decoder layers, counting Mask2Former's way: 1 + 3 * rounds (one prediction from the queries
    # alone, then each layer attends to one of the 3 coarsest pixel-decoder scales in turn).
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 10
    cfg.MODEL.MASK_FORMER.PRE_NORM = False
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False
    # Inputs are padded to this multiple (never to a square); 0 = the backbone's size_divisibility.
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32
    # Points per mask for the matcher's costs and the mask losses (PointRend importance sampling).
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 112 * 112
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75
    # --- Inference (d2ext/modeling/postprocessing.py; also used by EoMT) ---
    cfg.MODEL.MASK_FORMER.TEST = CN()
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = False
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = True
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.8  # panoptic: min class score kept
    cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.8  # panoptic: min visible part of a mask
    # (Instances per image: TEST.DETECTIONS_PER_IMAGE, as in Mask2Former.)
    # --- Pixel decoder (d2ext/modeling/pixel_decoder/msdeform_pixel_decoder.py) ---
    # detectron2 already defines SEM_SEG_HEAD.{NAME, IN_FEATURES, IGNORE_VALUE, NUM_CLASSES,
    # CONVS_DIM, COMMON_STRIDE, NORM, LOSS_WEIGHT}; these are Mask2Former's additions.
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    # A name in d2ext.modeling.pixel_decoder.PIXEL_DECODER_REGISTRY (not detectron2's
    # SEM_SEG_HEADS_REGISTRY, where Mask2Former registers the same name).
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 6
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["p3", "p4", "p5"]
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = 1024


def add_eomt_config(cfg):
    """MODEL.EOMT: the Encoder-only Mask Transformer (d2ext/modeling/meta_arch/eomt.py)."""
    # EoMT reads the bare ViT (MODEL.BACKBONE.NAME "build_dino_vit_backbone", MODEL.DINO.*), its
    # classes from MODEL.SEM_SEG_HEAD.NUM_CLASSES, its losses from MODEL.MASK_FORMER.{CLASS,MASK,
    # DICE}_WEIGHT, NO_OBJECT_WEIGHT, TRAIN_NUM_POINTS, ... and its outputs from
    # MODEL.MASK_FORMER.TEST.*, as the Mask2Former-style head does.
    cfg.MODEL.EOMT = CN()
    cfg.MODEL.EOMT.NUM_QUERIES = 100
    # The last NUM_BLOCKS blocks of the ViT process the queries together with the image tokens.
    cfg.MODEL.EOMT.NUM_BLOCKS = 4
    # x2 upsampling layers from the 1/16 patch grid to the mask resolution (2: masks at 1/4).
    cfg.MODEL.EOMT.NUM_UPSCALE_BLOCKS = 2
    # Patch size of the ViT (0 = the architecture's). EoMT runs DINOv2 at 16: the 14x14 kernel is
    # resampled.
    cfg.MODEL.EOMT.PATCH_SIZE = 0
    # DINOv2 family: side of the square image the absolute position embeddings are laid out for
    # (EoMT's crop size; other sizes interpolate them). 0 keeps the ViT's grid. DINOv3: unused.
    cfg.MODEL.EOMT.IMAGE_SIZE = 0
    # Epsilon of the ViT's LayerNorms (0 = the architecture's; transformers' EoMT uses 1e-6).
    cfg.MODEL.EOMT.LAYER_NORM_EPS = 0.0
    # Masked-attention annealing: block i (of the last NUM_BLOCKS) masks its queries' attention
    # with probability 1 before ANNEAL_START_ITERS[i], 0 from ANNEAL_END_ITERS[i] on, and
    # (1 - progress) ** ANNEAL_POWER in between. Empty lists keep the loaded probabilities
    # (a trained or converted model: all 0, masked attention off).
    cfg.MODEL.EOMT.ANNEAL_START_ITERS = []
    cfg.MODEL.EOMT.ANNEAL_END_ITERS = []
    cfg.MODEL.EOMT.ANNEAL_POWER = 0.9
    # How an image is fed to the network at inference.
    # "eomt": EoMT's evaluation protocol (tue-mps/eomt training/lightning_module.py), which its
    #   published figures are measured with: instance/panoptic fit the longer side into
    #   INPUT.IMAGE_SIZE and pad the pixels with black (0, before normalisation) to that square;
    #   semantic (SEMANTIC_ON alone) resizes the shorter side to INPUT.IMAGE_SIZE and averages
    #   the class scores of overlapping IMAGE_SIZE squares along the longer side. The test-time
    #   resize should match it (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, see configs/eomt/), else
    #   the model resizes the image itself.
    # "any_size": pad the resized image only to the patch multiple, with the normalised
    #   mean (grey), one pass per image: faster (no padded tokens), but the network sees other
    #   inputs than in EoMT's evaluation, so its figures are not reproduced exactly.
    cfg.MODEL.EOMT.TEST = CN()
    cfg.MODEL.EOMT.TEST.PROTOCOL = "any_size"


def add_sam_prompt_config(cfg):
    """MODEL.SAM_PROMPT: the "DinoSamPrompt" meta-architecture (DINO prompts, SAM masks)."""
    # META_ARCHITECTURE "DinoSamPrompt", d2ext/modeling/meta_arch/dino_sam_prompt.py: DINO
    # features choose prompts, SAM draws masks; nothing is trained.
    cfg.MODEL.SAM_PROMPT = CN()
    # segment-anything model type ("vit_b", "vit_l", "vit_h"; "tiny" for tests) and its official
    # checkpoint file (sam_vit_*.pth); "" gives random weights (tests and benchmarks only).
    cfg.MODEL.SAM_PROMPT.SAM_TYPE = "vit_b"
    cfg.MODEL.SAM_PROMPT.SAM_CHECKPOINT = ""
    # How prompts are chosen: "clustering" (k-means of patch features, a point and a box per
    # region), "attention" (the class token's most attended patches), "prototypes" (few-shot
    # classes from reference masks), "grid" (SAM's everything mode).
    cfg.MODEL.SAM_PROMPT.METHOD = "clustering"
    # Clusters of "clustering"; points of "attention".
    cfg.MODEL.SAM_PROMPT.NUM_SEGMENTS = 5
    # "grid": points per side (SAM's automatic mask generator uses 32).
    cfg.MODEL.SAM_PROMPT.POINTS_PER_SIDE = 16
    # "prototypes": reference masks from a registered dataset (the first PROTOTYPE_SHOTS masks of
    # each class, restricted to PROTOTYPE_CLASSES when not empty) and/or from files as
    # [[image, mask image, class name], ...]; patches less similar than PROTOTYPE_MIN_SIMILARITY
    # (cosine) to every prototype are background.
    cfg.MODEL.SAM_PROMPT.PROTOTYPE_DATASET = ""
    cfg.MODEL.SAM_PROMPT.PROTOTYPE_SHOTS = 5
    cfg.MODEL.SAM_PROMPT.PROTOTYPE_CLASSES = []
    cfg.MODEL.SAM_PROMPT.PROTOTYPE_REFERENCES = []
    cfg.MODEL.SAM_PROMPT.PROTOTYPE_MIN_SIMILARITY = 0.35
    # A mask whose IoU with a better-scored mask exceeds DEDUP_IOU is a duplicate (SAM's 0.7).
    cfg.MODEL.SAM_PROMPT.DEDUP_IOU = 0.7
    # Score = SAM's predicted IoU (x prototype similarity); lower scores are dropped.
    cfg.MODEL.SAM_PROMPT.SCORE_THRESHOLD = 0.0
    cfg.MODEL.SAM_PROMPT.MAX_INSTANCES = 100
    # Prompts per call of SAM's prompt encoder and mask decoder; 0 = by device (CUDA 64,
    # otherwise 8: on a CPU, small batches keep the per-prompt image tokens cache-sized).
    cfg.MODEL.SAM_PROMPT.PROMPTS_PER_BATCH = 0


def add_text_prompt_config(cfg):
    """MODEL.TEXT_PROMPT: the "TextPromptSegmentor" meta-architecture (SAM 3 text prompts)."""
    # META_ARCHITECTURE "TextPromptSegmentor", d2ext/modeling/meta_arch/text_prompt_segmentor.py:
    # SAM 3 finds every instance of each class's phrase; nothing is trained.
    cfg.MODEL.TEXT_PROMPT = CN()
    # SAM 3 (transformers' Sam3Model and its tokenizer): the hub id "facebook/sam3" (gated) or a
    # local save_pretrained directory.
    cfg.MODEL.TEXT_PROMPT.WEIGHTS = ""
    # Classes to find; [] = every class of DATASETS.TEST[0]. With a test dataset they must be its
    # classes (pred_classes are its class indices); without one, any names.
    cfg.MODEL.TEXT_PROMPT.CLASSES = []
    # The phrase for each prompted class ("" or [] = the class name), e.g. "rubber duck".
    cfg.MODEL.TEXT_PROMPT.PROMPTS = []
    # SAM 3's input size (the image is resized to a square of this side, as Sam3Processor does).
    cfg.MODEL.TEXT_PROMPT.IMAGE_SIZE = 1008
    # Score = query score x presence score (Sam3Processor's); lower scores are dropped.
    cfg.MODEL.TEXT_PROMPT.SCORE_THRESHOLD = 0.3
    cfg.MODEL.TEXT_PROMPT.MASK_THRESHOLD = 0.5
    # Of two detections of different classes whose masks overlap by more IoU, the lower scoring
    # one is dropped (one object found by two phrases).
    cfg.MODEL.TEXT_PROMPT.DEDUP_IOU = 0.7
    # Phrases decoded per call on the shared image encoding; 0 = by device (CUDA 16, otherwise
    # 4: on a CPU, a smaller call keeps its activations cache-sized; see docs/benchmarks.md).
    cfg.MODEL.TEXT_PROMPT.PHRASES_PER_BATCH = 0


def add_input_config(cfg):
    """INPUT: Mask2Former's keys for its training data (d2ext/data/dataset_mappers/)."""
    # "mask_former_instance_lsj" (COCO instances), "mask_former_semantic_lsj" (label PNGs),
    # "mask_former_panoptic_lsj" (COCO panoptic json + PNG segments) or "" (detectron2's
    # DatasetMapper, for the R-CNN configs).
    cfg.INPUT.DATASET_MAPPER_NAME = ""
    # Large-scale jitter: fit into IMAGE_SIZE x U(MIN_SCALE, MAX_SCALE), crop to IMAGE_SIZE.
    cfg.INPUT.IMAGE_SIZE = 1024
    cfg.INPUT.MIN_SCALE = 0.1
    cfg.INPUT.MAX_SCALE = 2.0
    # Pad every large-scale-jitter crop smaller than IMAGE_SIZE to the IMAGE_SIZE square, as
    # Mask2Former (FixedSizeCrop's padding) and EoMT train; False keeps each crop's own size:
    # faster for a ViT (no padded tokens), but not the published recipes' inputs.
    cfg.INPUT.LSJ_PAD = True
    # Pixel value of that padding, before normalisation: Mask2Former pads with 128 (detectron2's
    # FixedSizeCrop default), EoMT with 0 (black). Masks are padded with 0, label maps with
    # MODEL.SEM_SEG_HEAD.IGNORE_VALUE.
    cfg.INPUT.LSJ_PAD_VALUE = 128.0


def add_datasets_config(cfg):
    """DATASETS: datasets registered without code (COCO files, synthetic, semantic folders)."""
    # COCO-format datasets as [name, json_file, image_root] triples; registered by
    # d2ext.data.datasets.register_datasets_from_cfg before training or evaluation.
    cfg.DATASETS.COCO_INSTANCES = []
    # COCO panoptic-format datasets (a panoptic json, its folder of RGB-encoded segment PNGs, the
    # image folder) as [name, panoptic_json, panoptic_png_dir, image_dir] entries, registered
    # like COCO_INSTANCES; their classes are the json's categories, things and stuff.
    cfg.DATASETS.COCO_PANOPTIC = []
    # The built-in synthetic dataset ("d2ext_synthetic_train" / "d2ext_synthetic_val").
    cfg.DATASETS.SYNTHETIC = CN()
    cfg.DATASETS.SYNTHETIC.NUM_TRAIN = 200
    cfg.DATASETS.SYNTHETIC.NUM_VAL = 50
    cfg.DATASETS.SYNTHETIC.IMAGE_SIZE = 192
    # Where generated images are cached; "" means $D2EXT_DATASETS or ./datasets.
    cfg.DATASETS.SYNTHETIC.ROOT = ""
    # --- Semantic segmentation on DINO features ---
    # Datasets from an image folder and a mask folder, as [name, image_dir, mask_dir] triples;
    # masks are single-channel PNGs named like their image whose pixel values are class ids.
    # Pixels equal to MODEL.SEM_SEG_HEAD.IGNORE_VALUE are ignored by the loss and SemSegEvaluator.
    cfg.DATASETS.SEM_SEG = []
    # Class names of those datasets, in class-id order; empty: "class_0", "class_1", ... up to
    # MODEL.SEM_SEG_HEAD.NUM_CLASSES.
    cfg.DATASETS.SEM_SEG_CLASSES = []


def add_solver_config(cfg):
    """SOLVER: optimizer, backbone LR and EoMT's schedule (d2ext/solver.py)."""
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" or "SGD"
    # LR multiplier of the ViT's parameters (Mask2Former's key).
    cfg.SOLVER.BACKBONE_MULTIPLIER = 1.0
    # AMPTrainer's autocast dtype on CUDA: "float16" or "bfloat16".
    cfg.SOLVER.AMP.PRECISION = "float16"
    # SOLVER.CLIP_GRADIENTS.CLIP_TYPE also takes "full_model" (Mask2Former's: the norm of all
    # gradients together). SOLVER.LR_SCHEDULER_NAME also takes "TwoStageWarmupPoly" (EoMT's):
    # the head warms up over WARMUP_ITERS with the backbone at 0, then the backbone over
    # BACKBONE_WARMUP_ITERS; each then decays as (1 - progress) ** POLY_LR_POWER.
    cfg.SOLVER.BACKBONE_WARMUP_ITERS = 0
    # Weight decay of nn.Embedding weights (queries, level embeddings), Mask2Former's key.
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.POLY_LR_POWER = 0.9
    # Images per forward/backward pass on each device: each optimizer step of IMS_PER_BATCH
    # images runs as micro-batches of this size and accumulates their gradients, so a recipe's
    # batch trains on a device too small for it with the same gradients
    # (d2ext/engine/accumulation.py). 0: IMS_PER_BATCH / number of devices (no accumulation).
    cfg.SOLVER.IMS_PER_DEVICE = 0


def add_evaluation_config(cfg):
    """TEST: evaluation and the best checkpoint."""
    # Keep `model_best.pth` by this metric of the periodic evaluation ("" disables).
    cfg.TEST.BEST_CHECKPOINT_METRIC = "segm/AP"
    cfg.TEST.BEST_CHECKPOINT_MODE = "max"


def add_tools_config(cfg):
    """D2EXT: options of d2ext's tools (tools/demo.py, tools/train_net.py and the quickstart)."""
    cfg.D2EXT = CN()
    # Written after training (tools/train_net.py): one val image with its predictions.
    cfg.D2EXT.SAVE_DEMO_IMAGE = True


def default_device():
    """"cuda" if available, else Apple "mps", else "cpu"."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        # Ops without an MPS kernel need PYTORCH_ENABLE_MPS_FALLBACK=1 (see README).
        return "mps"
    return "cpu"


def get_d2ext_cfg():
    """detectron2's default config with d2ext's keys added."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_d2ext_config(cfg)
    return cfg


def config_value(cfg, key):
    """The value of the dotted ``key`` (e.g. "MODEL.ROI_HEADS.NUM_CLASSES") in ``cfg``."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value
