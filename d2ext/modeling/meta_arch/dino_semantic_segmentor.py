"""detectron2's SemanticSegmentor, with the logits resampled to the output size in one pass."""
from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor
from detectron2.structures import ImageList

from ..dino_linear_sem_seg_head import bilinear_matrix
from .capabilities import BenchmarkParts, Capabilities, ExportInterface, PredictGraph
from .detectron2_models import SEMANTIC, backbone_parts


def _semantic_graph(model, output_names):
    if not hasattr(model.sem_seg_head, "layers"):
        raise ValueError(f"MODEL.SEM_SEG_HEAD.NAME={type(model.sem_seg_head).__name__!r} has no "
                         "`layers` (logits at the feature stride); exportable: "
                         "DinoLinearSemSegHead.")
    return PredictGraph(model, output_names).eval()


def _semantic_postprocessor(cfg):
    def postprocess(raw, padded_size, image_size, output_size):  # DinoSemanticSegmentor.forward
        logits = raw["sem_seg_logits"][0]
        stride = padded_size[0] // logits.shape[-2]
        return {"sem_seg": resample_logits(logits, stride, image_size, output_size)}

    return postprocess


@META_ARCH_REGISTRY.register()
class DinoSemanticSegmentor(SemanticSegmentor):
    """SemanticSegmentor whose inference writes the (K, height, width) logits once.

    detectron2's SemanticSegmentor has the head upsample its logits to the padded input size,
    then ``sem_seg_postprocess`` crops the padding and resizes them to the requested
    ("height", "width") with ``F.interpolate`` even when the size is unchanged. With many
    classes that is most of the head's cost: 150 x 640 x 640 float logits are 245 MB, written
    twice. Here the head gives its logits at the feature stride (``sem_seg_head.layers``), and
    the three linear steps (upsample by the stride, crop, resize) are folded into one row and
    one column matrix, so the logits are written once. The result equals SemanticSegmentor's
    up to float rounding (tests/test_sem_seg.py checks it).

    Training, and heads without ``layers``, use SemanticSegmentor unchanged.
    """

    capabilities = Capabilities(
        export=ExportInterface(output_names=lambda model: ["sem_seg_logits"],
                               graph=_semantic_graph, postprocessor=_semantic_postprocessor),
        benchmark=BenchmarkParts(predict=lambda model: model.predict, parts=backbone_parts),
        **SEMANTIC)

    def predict(self, images):
        """Normalised, padded (N, 3, H, W) -> (N, K, H/s, W/s) logits at the head's feature
        stride s (heads with ``layers``): the network without the resampling."""
        return self.sem_seg_head.layers(self.backbone(images))

    def forward(self, batched_inputs):
        if self.training or not hasattr(self.sem_seg_head, "layers"):
            return super().forward(batched_inputs)
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        images = ImageList.from_tensors(images, self.backbone.size_divisibility,
                                        padding_constraints=self.backbone.padding_constraints)
        logits = self.predict(images.tensor)
        stride = self.sem_seg_head.stride
        results = []
        for per_image, inputs, image_size in zip(logits, batched_inputs, images.image_sizes):
            out_size = (inputs.get("height", image_size[0]), inputs.get("width", image_size[1]))
            results.append({"sem_seg": resample_logits(per_image, stride, image_size, out_size)})
        return results


def resample_logits(logits, stride, image_size, out_size):
    """(K, h, w) logits on the stride grid of a padded image -> (K, *out_size).

    Equals upsampling by ``stride`` (bilinear, align_corners=False), cropping to ``image_size``
    and resizing to ``out_size`` (bilinear) - what SemanticSegmentor and sem_seg_postprocess do -
    as ``rows @ logits @ cols.T`` with composed resampling matrices.
    """
    matrices = []
    for n, size, out in zip(logits.shape[-2:], image_size, out_size):
        upsample = bilinear_matrix(n, n * stride, logits.device)[:size]  # upsample, then crop
        matrices.append((bilinear_matrix(size, out, logits.device) @ upsample).to(logits.dtype))
    rows, cols = matrices
    # Columns first: the small (K, h, W) product, then one pass writes the (K, H, W) logits.
    return rows @ (logits @ cols.T)
