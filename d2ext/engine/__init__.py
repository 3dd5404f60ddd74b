from .defaults import check_num_classes, config_value, num_classes_key, resolve_device, setup_cfg
from .predictor import draw_predictions, load_predictor
from .trainer import Trainer
