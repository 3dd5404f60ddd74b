"""FiftyOne curation: Open Images V7 -> tagged splits -> COCO export for d2ext -> predictions
evaluated back in FiftyOne. FiftyOne is imported lazily (an optional extra), so importing this
package works without it; the functions raise FiftyOneUnavailable with a fix when it is missing.
"""
from .app import DEFAULT_PORT, launch_app
from .calibration import (
    calibrate_thresholds,
    load_thresholds,
    plot_precision_recall,
    save_thresholds,
)
from .coco_export import export_coco_splits, train_command
from .fiftyone_db import CurationError, FiftyOneUnavailable, load_dataset, require_fiftyone
from .open_images import DEFAULT_CLASSES, GT_FIELD, check_class_names, load_open_images
from .predictions import (
    add_predictions,
    add_predictions_from_coco,
    evaluate_predictions,
    instances_to_detections,
    worst_samples,
)
