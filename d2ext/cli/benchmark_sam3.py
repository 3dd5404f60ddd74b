"""SAM 3 text prompting per image: d2ext's TextPromptSegmentor next to transformers' own pipeline.

  python tools/benchmark_sam3.py                                # 1, 3 and 80 phrases at 1008
  python tools/benchmark_sam3.py --phrases 1 80 --image-size 504 --reps 2

Random weights at the shape of facebook/sam3 (cost does not depend on the weights; no download),
the input size set by --image-size; phrases are COCO class names. Both sides go from the image
to instances (scores, boxes, masks at the image size, score > 0.3). transformers' side runs as
its documentation shows: one phrase with ``Sam3Processor(images=, text=)`` and ``Sam3Model``;
several phrases with the vision features computed once and one ``Sam3Model`` call per phrase,
each post-processed with ``post_process_instance_segmentation``. Timings are interleaved (peer,
d2ext, peer, d2ext, ...) and the medians printed with their ratio and the cost of each phrase
beyond the first.
"""
import argparse
import statistics
import time

import numpy as np
import torch

from . import run_tool


def coco_phrases():
    names = ("person bicycle car motorcycle airplane bus train truck boat traffic_light "
             "fire_hydrant stop_sign parking_meter bench bird cat dog horse sheep cow elephant "
             "bear zebra giraffe backpack umbrella handbag tie suitcase frisbee skis snowboard "
             "sports_ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket "
             "bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli "
             "carrot hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv "
             "laptop mouse remote keyboard cell_phone microwave oven toaster sink refrigerator "
             "book clock vase scissors teddy_bear hair_drier toothbrush").split()
    return [n.replace("_", " ") for n in names]


def build_models(image_size):
    from transformers import Sam3Config, Sam3Model, Sam3Processor
    from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor

    from ..modeling.text_prompt import word_tokenizer

    config = Sam3Config()
    config.vision_config.backbone_config.image_size = image_size
    grid = image_size // config.vision_config.backbone_config.patch_size
    config.vision_config.backbone_feature_sizes = [[4 * grid] * 2, [2 * grid] * 2, [grid] * 2]
    torch.manual_seed(0)
    model = Sam3Model(config).eval()
    tokenizer = word_tokenizer(sorted({w for p in coco_phrases() for w in p.split()}))
    processor = Sam3Processor(
        image_processor=Sam3ImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer)
    return model, tokenizer, processor


@torch.no_grad()
def transformers_pipeline(model, processor, image_rgb, phrases, threshold=0.3):
    """Image in, instances out, as transformers' SAM 3 documentation runs one or several
    phrases on one image."""
    size = [image_rgb.shape[:2]]
    if len(phrases) == 1:
        inputs = processor(images=image_rgb, text=phrases[0], return_tensors="pt")
        return [processor.post_process_instance_segmentation(
            model(**inputs), threshold=threshold, mask_threshold=0.5, target_sizes=size)[0]]
    pixels = processor(images=image_rgb, return_tensors="pt").pixel_values
    vision = model.get_vision_features(pixel_values=pixels)
    results = []
    for phrase in phrases:
        text = processor(text=phrase, return_tensors="pt")
        outputs = model(vision_embeds=vision, input_ids=text.input_ids,
                        attention_mask=text.attention_mask)
        results.append(processor.post_process_instance_segmentation(
            outputs, threshold=threshold, mask_threshold=0.5, target_sizes=size)[0])
    return results


def _main(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phrases", type=int, nargs="+", default=[1, 3, 80])
    parser.add_argument("--image-size", type=int, default=1008, help="SAM 3's input side")
    parser.add_argument("--height", type=int, default=480, help="the photo's size")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--phrases-per-batch", type=int, default=0,
                        help="MODEL.TEXT_PROMPT.PHRASES_PER_BATCH (0: by device)")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a mistake instead of its one-line message")
    args = parser.parse_args(argv)

    from ..modeling.meta_arch import TextPromptSegmentor

    model, tokenizer, processor = build_models(args.image_size)
    rng = np.random.default_rng(0)
    image_rgb = rng.integers(0, 256, (args.height, args.width, 3), np.uint8)
    tensor = torch.from_numpy(image_rgb).permute(2, 0, 1).float()
    print(f"SAM 3 shape, random weights, input {args.image_size}x{args.image_size}, photo "
          f"{args.height}x{args.width}, {torch.get_num_threads()} threads; medians of "
          f"{args.reps} interleaved runs")
    print(f"{'phrases':>8} {'transformers ms':>16} {'d2ext ms':>10} {'ratio':>7}")
    medians = {}
    for count in args.phrases:
        phrases = coco_phrases()[:count]
        ours = TextPromptSegmentor(sam3=model, tokenizer=tokenizer, class_names=phrases,
                                   image_size=args.image_size,
                                   phrases_per_batch=args.phrases_per_batch)
        ours([{"image": tensor}])  # warm-up; computes the phrases' text features once
        transformers_pipeline(model, processor, image_rgb, phrases)
        times = {"transformers": [], "d2ext": []}
        for _ in range(args.reps):
            start = time.perf_counter()
            transformers_pipeline(model, processor, image_rgb, phrases)
            times["transformers"].append(time.perf_counter() - start)
            start = time.perf_counter()
            ours([{"image": tensor}])
            times["d2ext"].append(time.perf_counter() - start)
        peer, mine = (1000 * statistics.median(times[k]) for k in ("transformers", "d2ext"))
        medians[count] = (peer, mine)
        print(f"{count:>8} {peer:>16.0f} {mine:>10.0f} {mine / peer:>7.2f}", flush=True)
    if len(medians) > 1:
        lo, hi = min(medians), max(medians)
        for name, i in (("transformers", 0), ("d2ext", 1)):
            per = (medians[hi][i] - medians[lo][i]) / (hi - lo)
            print(f"{name}: {per:.0f} ms per phrase beyond the first ({lo} -> {hi} phrases)")
    return 0


def main(argv=None):
    """benchmark_sam3: a user mistake ends in one line (``d2ext.cli.run_tool``)."""
    return run_tool("benchmark_sam3", _main, argv)
