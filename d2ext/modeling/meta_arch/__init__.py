"""d2ext's meta-architectures (importing registers them) and what each one can do
(``capabilities``)."""
from . import detectron2_models  # noqa: F401  (declares detectron2's models' capabilities)
from .capabilities import BenchmarkParts, Capabilities, ExportInterface, PredictGraph, capabilities
from .dino_mask2former import DinoMask2Former
from .dino_sam_prompt import DinoSamPrompt
from .dino_semantic_segmentor import DinoSemanticSegmentor
from .eomt import EoMT
from .mask_classification import MaskClassificationModel
from .prompt_segmentor import PromptSegmentor
from .text_prompt_segmentor import TextPromptSegmentor

__all__ = ["BenchmarkParts", "Capabilities", "DinoMask2Former", "DinoSamPrompt",
           "DinoSemanticSegmentor", "EoMT", "ExportInterface", "MaskClassificationModel",
           "PredictGraph", "PromptSegmentor", "TextPromptSegmentor", "capabilities"]
