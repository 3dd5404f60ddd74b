from .defaults import resolve_device, setup_cfg
from .predictor import draw_predictions, load_predictor
from .trainer import Trainer
