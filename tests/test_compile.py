"""MODEL.COMPILE: the network each model declares (``Capabilities.compiled_parts``) compiles
without graph breaks, once for images of any size, to the eager numbers.

Backend: one that counts the graphs dynamo captures and runs them eagerly (dynamo's capture
is what these test: a graph break gives a second graph and a ``graph_break`` counter, as
``torch._dynamo.explain`` reports them); inductor, which users get, compiles the smallest
network once for the equality check (its code generation takes a CPU about 20 s).
"""
import pytest
import torch
from detectron2.modeling import build_model
from torch._dynamo.utils import counters

from d2ext.engine import Trainer, load_predictor
from d2ext.errors import UserError
from d2ext.modeling.meta_arch.capabilities import capabilities, compile_network
from d2ext.modeling.meta_arch.eomt import MASK_OFF, MASK_RANDOM

from helpers import cpu_config

# The tiny configs, the Mask2Former-style one with a lighter head (tracing time grows with
# the number of layers, the graph's shape does not).
TINY = {
    "eomt": ("quickstart_eomt.yaml",),
    "mask2former": ("quickstart_mask2former.yaml", "MODEL.MASK_FORMER.DEC_LAYERS", "2",
                    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1"),
    "mask_rcnn": ("quickstart.yaml",),
}
# Non-square sizes: a square image makes dynamo give both sides one symbol (one more graph);
# and above the size where the fake conv_transpose2d guards on the output's element count
# (torch's own guard, below images of about 190 x 190 px, not d2ext's).
SIZES = [(192, 256), (208, 240), (240, 192)]


class CountingBackend:
    """A torch.compile backend that counts the graphs it is given and runs them eagerly."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


def network(model):
    """The declared compiled part as a function of the normalised image batch (EoMT's takes
    the masked-attention modes too: none here, as in a trained model)."""
    (owner, attribute), = capabilities(model).compiled_parts(model).values()
    if attribute == "predict_network":
        return lambda x: getattr(owner, attribute)(x, (MASK_OFF,) * owner.num_blocks)
    return lambda x: getattr(owner, attribute)(x)


def tensors(outputs):
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return [t for key in sorted(outputs) for t in tensors(outputs[key])]
    return [t for value in outputs for t in tensors(value)]


def tiny_model(kind):
    torch.manual_seed(0)
    model = build_model(cpu_config(*TINY[kind])).eval()
    capabilities(model).trained_state(model)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(TINY))
def test_compiled_network_has_no_graph_break_and_one_graph_for_all_sizes(kind):
    model = tiny_model(kind)
    with torch.no_grad():
        images = [torch.rand(1, 3, h, w) for h, w in SIZES]
        eager = [tensors(network(model)(x)) for x in images]
        torch._dynamo.reset()
        counters.clear()
        backend = CountingBackend()
        # What MODEL.COMPILE does, with every size symbolic from the first image on.
        assert compile_network(model, backend=backend, dynamic=True) == list(
            capabilities(model).compiled_parts(model))
        compiled = [tensors(network(model)(images[0]))]
        assert not counters["graph_break"], dict(counters["graph_break"])
        assert backend.graphs == 1
        compiled += [tensors(network(model)(x)) for x in images[1:]]
    assert backend.graphs == 1, "recompiled for another image size"
    for ours, reference in zip(compiled, eager):
        assert len(ours) == len(reference)
        for a, b in zip(ours, reference):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_inductor_equals_eager():
    """What users get (inductor, MODEL.COMPILE's default), once, on the smallest network."""
    model = tiny_model("eomt")
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        eager = model.predict(x)
        torch._dynamo.reset()
        compile_network(model)
        compiled = model.predict(x)
    for key in ("pred_logits", "pred_masks"):
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_training_network_has_no_graph_break():
    """EoMT trains with deep supervision and its annealed masked attention, whose
    probabilities stay tensors: one graph (``torch._dynamo.explain``)."""
    model = tiny_model("eomt").train()
    x = torch.rand(2, 3, 128, 160)
    probs = torch.full((model.num_blocks,), 0.5)
    fn = lambda x: model.predict_network(x, (MASK_RANDOM,) * model.num_blocks, probs)  # noqa
    explained = torch._dynamo.explain(fn)(x)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_model_compile_key_compiles_where_users_run(tiny_config):
    """MODEL.COMPILE compiles the declared parts of the models the trainer (training and
    evaluation) and the predictor build, in place (lazily: nothing is traced here), and keeps
    the checkpoint's parameter names."""
    cfg = tiny_config("quickstart_eomt.yaml", "MODEL.DEVICE", "cpu", "MODEL.COMPILE", "True")
    model = Trainer.build_model(cfg)
    assert "predict_network" in vars(model)  # the compiled method, on the instance
    assert not any("_orig_mod" in key for key in model.state_dict())
    predictor = load_predictor(cfg)
    assert "predict_network" in vars(predictor.model)
    assert "predict_network" not in vars(load_predictor(cfg, compile=False).model)
    rcnn = Trainer.build_model(tiny_config("quickstart.yaml", "MODEL.DEVICE", "cpu",
                                           "MODEL.COMPILE", "True"))
    assert rcnn.backbone._compiled_call_impl is not None
    assert not any("_orig_mod" in key for key in rcnn.state_dict())
    eager = Trainer.build_model(tiny_config("quickstart_eomt.yaml", "MODEL.DEVICE", "cpu"))
    assert "predict_network" not in vars(eager)
    cfg.defrost()
    cfg.MODEL.COMPILE_MODE = "fastest"
    with pytest.raises(UserError, match="MODEL.COMPILE_MODE"):
        Trainer.build_model(cfg)
