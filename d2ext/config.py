"""d2ext's config keys. Every key d2ext reads is added here with its default."""
from detectron2.config import CfgNode as CN


def add_d2ext_config(cfg):
    """Add d2ext's keys (with defaults) to a detectron2 config, in place."""
    # --- DINOv2 / DINOv3 ViT backbone (d2ext/modeling/backbone/dino_vit.py) ---
    cfg.MODEL.DINO = CN()
    # Architecture by name (see d2ext.modeling.backbone.dino_vit.DINO_ARCHS): the model is built
    # from this alone, so it builds offline with random weights.
    cfg.MODEL.DINO.ARCH = "dinov3_vits16"
    # Pretrained weights for the ViT only: "" (random), a transformers hub id, a local
    # `save_pretrained` directory, or a `.pth` / `.safetensors` state dict. MODEL.WEIGHTS (the
    # whole detector) is loaded afterwards and takes precedence.
    cfg.MODEL.DINO.WEIGHTS = ""
    # Blocks whose (layer-normed) patch tokens feed the neck; 0-based, negative counts from the
    # end. Several blocks are concatenated along channels.
    cfg.MODEL.DINO.OUT_BLOCKS = [-1]
    # 0: train everything; N > 0: freeze the patch embedding and the first N blocks;
    # -1: freeze the whole ViT (embedding, every block, final norm).
    cfg.MODEL.DINO.FREEZE_BLOCKS = 0
    cfg.MODEL.DINO.DROP_PATH_RATE = 0.0
    # Layer-wise LR decay: block i gets lr * LAYER_DECAY ** (num_blocks - i); 1.0 disables.
    cfg.MODEL.DINO.LAYER_DECAY = 1.0
    # Recompute block activations in the backward pass (less memory, ~30% slower).
    cfg.MODEL.DINO.GRADIENT_CHECKPOINTING = False
    # Simple feature pyramid (ViTDet) over the ViT's stride-16 map: p2..p5 (+ p6 by max pool).
    # Its width and norm are MODEL.FPN.OUT_CHANNELS and MODEL.FPN.NORM.
    cfg.MODEL.DINO.SFP_SCALE_FACTORS = [4.0, 2.0, 1.0, 0.5]

    # --- Solver ---
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" or "SGD"
    # LR multiplier of the ViT's parameters (Mask2Former's key).
    cfg.SOLVER.BACKBONE_MULTIPLIER = 1.0
    # AMPTrainer's autocast dtype on CUDA: "float16" or "bfloat16".
    cfg.SOLVER.AMP.PRECISION = "float16"

    # --- Evaluation and best checkpoint ---
    # Keep `model_best.pth` by this metric of the periodic evaluation ("" disables).
    cfg.TEST.BEST_CHECKPOINT_METRIC = "segm/AP"
    cfg.TEST.BEST_CHECKPOINT_MODE = "max"

    # --- Datasets registered without code ---
    # COCO-format datasets as [name, json_file, image_root] triples; registered by
    # d2ext.data.datasets.register_datasets_from_cfg before training or evaluation.
    cfg.DATASETS.COCO_INSTANCES = []
    # The built-in synthetic dataset ("d2ext_synthetic_train" / "d2ext_synthetic_val").
    cfg.DATASETS.SYNTHETIC = CN()
    cfg.DATASETS.SYNTHETIC.NUM_TRAIN = 200
    cfg.DATASETS.SYNTHETIC.NUM_VAL = 50
    cfg.DATASETS.SYNTHETIC.IMAGE_SIZE = 192
    # Where generated images are cached; "" means $D2EXT_DATASETS or ./datasets.
    cfg.DATASETS.SYNTHETIC.ROOT = ""

    # --- tools/demo.py and the quickstart ---
    cfg.D2EXT = CN()
    # Written after training (tools/train_net.py): one val image with its predictions.
    cfg.D2EXT.SAVE_DEMO_IMAGE = True

    # --- SAM-prompt meta-architecture (d2ext/modeling/sam_prompt/, META_ARCHITECTURE
    # "DinoSamPrompt"): DINO features choose prompts, SAM draws masks; nothing is trained ---
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
    # Prompts per call of SAM's prompt encoder and mask decoder (memory vs. speed).
    cfg.MODEL.SAM_PROMPT.PROMPTS_PER_BATCH = 64

    # "auto": CUDA if available, else Apple MPS, else CPU (d2ext.engine.resolve_device).
    cfg.MODEL.DEVICE = "auto"


def get_d2ext_cfg():
    """detectron2's default config with d2ext's keys added."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_d2ext_config(cfg)
    return cfg
