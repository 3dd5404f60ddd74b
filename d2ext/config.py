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

    # "auto": CUDA if available, else Apple MPS, else CPU (d2ext.engine.resolve_device).
    cfg.MODEL.DEVICE = "auto"


def get_d2ext_cfg():
    """detectron2's default config with d2ext's keys added."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_d2ext_config(cfg)
    return cfg
