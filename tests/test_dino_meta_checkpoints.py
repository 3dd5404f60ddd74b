"""Meta's original DINOv2 / DINOv3 checkpoints (facebookresearch/dinov2 and dinov3 layout) load
into d2ext's backbone and give the features of the model they were written from."""
import pytest
import torch
import torch.nn.functional as F

from d2ext.modeling.backbone import DinoViTBackbone, DinoWeightsError
from d2ext.modeling.backbone.archs import DINO_ARCHS, DinoArch

# Tiny versions of the layouts that only big published models have.
TINY = {
    "dinov2_tiny14_swiglu": DinoArch("dinov2", 64, 3, 2, 14, 256, gated=True),  # ViT-g
    "dinov2_tiny14_reg_swiglu": DinoArch("dinov2_reg", 64, 3, 2, 14, 256, gated=True),
    "dinov3_tiny16_swiglu": DinoArch("dinov3", 64, 3, 2, 16, 128, gated=True),  # S+ / H+
    "dinov3_tiny16_7b": DinoArch("dinov3", 64, 3, 2, 16, 128, gated=True, qkv_bias=False),
}


@pytest.fixture(autouse=True)
def tiny_archs(monkeypatch):
    for name, arch in TINY.items():
        monkeypatch.setitem(DINO_ARCHS, name, arch)


def write_meta_layout(vit, family, chunks=False):
    """The state dict of transformers' ``vit`` in Meta's layout, written independently of
    d2ext's converter: the key names and tensor layouts of facebookresearch's
    DinoVisionTransformer (fused qkv, ls*.gamma, w12 / w1-w3 SwiGLU, DINOv3's bias_mask,
    storage_tokens, (1, C) mask token and RoPE periods)."""
    v3 = family == "dinov3"
    hf = vit.state_dict()
    layers = "model.layer." if v3 else "encoder.layer."
    out = {"cls_token": hf["embeddings.cls_token"],
           "mask_token": hf["embeddings.mask_token"].reshape(1, -1)}
    if v3:
        out["storage_tokens"] = hf["embeddings.register_tokens"]
        out["patch_embed.proj.weight"] = hf["embeddings.patch_embeddings.weight"]
        out["patch_embed.proj.bias"] = hf["embeddings.patch_embeddings.bias"]
        head_dim = vit.config.hidden_size // vit.config.num_attention_heads
        out["rope_embed.periods"] = 100.0 ** (torch.arange(head_dim // 4) * 4 / head_dim)
        out["norm.weight"], out["norm.bias"] = hf["norm.weight"], hf["norm.bias"]
    else:
        out["pos_embed"] = hf["embeddings.position_embeddings"]
        if family == "dinov2_reg":
            out["register_tokens"] = hf["embeddings.register_tokens"]
        out["patch_embed.proj.weight"] = hf["embeddings.patch_embeddings.projection.weight"]
        out["patch_embed.proj.bias"] = hf["embeddings.patch_embeddings.projection.bias"]
        out["norm.weight"], out["norm.bias"] = hf["layernorm.weight"], hf["layernorm.bias"]
    depth = vit.config.num_hidden_layers
    for i in range(depth):
        src = lambda name: hf[f"{layers}{i}.{name}"]  # noqa: E731
        dst = f"blocks.{i // 2}.{i}." if chunks else f"blocks.{i}."
        attn = [f"attention.{n}_proj" for n in "qkv"]
        out[dst + "attn.qkv.weight"] = torch.cat([src(a + ".weight") for a in attn])
        if f"{layers}{i}.attention.q_proj.bias" in hf:
            width = vit.config.hidden_size
            if v3:  # Meta keeps a key bias that its bias_mask zeroes: store junk there
                out[dst + "attn.qkv.bias"] = torch.cat(
                    [src("attention.q_proj.bias"), torch.randn(width),
                     src("attention.v_proj.bias")])
                out[dst + "attn.qkv.bias_mask"] = torch.cat(
                    [torch.ones(width), torch.zeros(width), torch.ones(width)])
            else:
                out[dst + "attn.qkv.bias"] = torch.cat([src(a + ".bias") for a in attn])
        for kind in ("weight", "bias"):
            out[dst + f"attn.proj.{kind}"] = src(f"attention.o_proj.{kind}")
            out[dst + f"norm1.{kind}"] = src(f"norm1.{kind}")
            out[dst + f"norm2.{kind}"] = src(f"norm2.{kind}")
            if f"{layers}{i}.mlp.gate_proj.weight" in hf:
                if v3:
                    out[dst + f"mlp.w1.{kind}"] = src(f"mlp.gate_proj.{kind}")
                    out[dst + f"mlp.w2.{kind}"] = src(f"mlp.up_proj.{kind}")
                else:
                    out[dst + f"mlp.w12.{kind}"] = torch.cat(
                        [src(f"mlp.gate_proj.{kind}"), src(f"mlp.up_proj.{kind}")])
                out[dst + f"mlp.w3.{kind}"] = src(f"mlp.down_proj.{kind}")
            elif v3:
                out[dst + f"mlp.fc1.{kind}"] = src(f"mlp.up_proj.{kind}")
                out[dst + f"mlp.fc2.{kind}"] = src(f"mlp.down_proj.{kind}")
            else:
                out[dst + f"mlp.fc1.{kind}"] = src(f"mlp.fc1.{kind}")
                out[dst + f"mlp.fc2.{kind}"] = src(f"mlp.fc2.{kind}")
        out[dst + "ls1.gamma"] = src("layer_scale1.lambda1")
        out[dst + "ls2.gamma"] = src("layer_scale2.lambda1")
    return out


def _randomised(arch):
    torch.manual_seed(0)
    backbone = DinoViTBackbone(arch).eval()
    with torch.no_grad():  # layer scales and norms away from their init: every tensor matters
        for name, p in backbone.vit.named_parameters():
            if "lambda1" in name:
                p.uniform_(0.25, 0.75)
            elif "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            elif p.dim() < 2 or "token" in name or "position" in name:
                p.normal_(0, 0.02)
    return backbone


@pytest.mark.parametrize("arch", ["dinov2_tiny14", "dinov2_tiny14_reg", "dinov3_tiny16",
                                  *TINY])
@pytest.mark.parametrize("wrapped", [False, True])
def test_meta_checkpoints_give_the_features_of_their_source(arch, wrapped, tmp_path):
    source = _randomised(arch)
    family = DINO_ARCHS[arch].family
    state = write_meta_layout(source.vit, family, chunks=wrapped)
    if wrapped:  # a DINO training checkpoint: {"teacher": {"backbone.<key>": ...}}
        state = {"teacher": {"backbone." + k: v for k, v in state.items()},
                 "iteration": 5}
    path = tmp_path / "meta.pth"
    torch.save(state, path)
    loaded = DinoViTBackbone(arch, weights=str(path)).eval()
    image = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected = source(image)["vit"]
        assert not torch.allclose(DinoViTBackbone(arch).eval()(image)["vit"], expected)
        torch.testing.assert_close(loaded(image)["vit"], expected, atol=1e-5, rtol=0)


def test_a_converted_checkpoint_round_trips_through_d2ext(tmp_path):
    source = _randomised("dinov3_tiny16")
    torch.save(write_meta_layout(source.vit, "dinov3"), tmp_path / "meta.pth")
    converted = DinoViTBackbone("dinov3_tiny16", weights=str(tmp_path / "meta.pth")).eval()
    converted.vit.save_pretrained(tmp_path / "hf")
    torch.save({"model": {"backbone.net.vit." + k: v
                          for k, v in converted.vit.state_dict().items()}}, tmp_path / "d2.pth")
    image = torch.randn(1, 3, 80, 112)
    with torch.no_grad():
        expected = converted(image)["vit"]
        for weights in (tmp_path / "hf", tmp_path / "d2.pth"):
            again = DinoViTBackbone("dinov3_tiny16", weights=str(weights)).eval()
            assert torch.equal(again(image)["vit"], expected)


def test_a_meta_checkpoint_of_another_architecture_names_the_one_it_is(tmp_path):
    torch.save(write_meta_layout(_randomised("dinov2_tiny14_reg").vit, "dinov2_reg"),
               tmp_path / "reg.pth")
    with pytest.raises(DinoWeightsError) as err:
        DinoViTBackbone("dinov2_tiny14", weights=str(tmp_path / "reg.pth"))
    message = str(err.value)
    assert "a Meta dinov2_reg checkpoint" in message
    assert "does not fit MODEL.DINO.ARCH='dinov2_tiny14'" in message
    assert "family: 'dinov2_reg' there, 'dinov2' here" in message
    assert message.endswith("MODEL.DINO.ARCH to the architecture of the weights: "
                            "dinov2_tiny14_reg.")
    torch.save(write_meta_layout(_randomised("dinov3_tiny16_7b").vit, "dinov3"),
               tmp_path / "7b.pth")
    with pytest.raises(DinoWeightsError, match="qkv_bias: False there, True here"):
        DinoViTBackbone("dinov3_tiny16_swiglu", weights=str(tmp_path / "7b.pth"))


def test_meta_checkpoints_that_transformers_cannot_represent_are_refused(tmp_path):
    state = write_meta_layout(_randomised("dinov3_tiny16").vit, "dinov3")
    bad_mask = dict(state, **{"blocks.1.attn.qkv.bias_mask": torch.ones(3 * 64)})
    torch.save(bad_mask, tmp_path / "key_bias.pth")
    with pytest.raises(DinoWeightsError, match=r"blocks.1.attn.qkv.bias: the key bias"):
        DinoViTBackbone("dinov3_tiny16", weights=str(tmp_path / "key_bias.pth"))
    other_rope = dict(state, **{"rope_embed.periods": state["rope_embed.periods"] * 2})
    torch.save(other_rope, tmp_path / "rope.pth")
    with pytest.raises(DinoWeightsError, match="rope_embed.periods are not those of RoPE base"):
        DinoViTBackbone("dinov3_tiny16", weights=str(tmp_path / "rope.pth"))


def test_dinov2_resamples_position_embeddings_as_meta_does():
    """Meta's DINOv2 (no registers) resamples its 37 x 37 position embeddings with the scale
    factor (grid + 0.1) / 37; transformers' Dinov2Model resamples to the size."""
    vit = DinoViTBackbone("dinov2_tiny14").vit
    embeddings = vit.embeddings
    native = embeddings.position_embeddings
    grid_h, grid_w = 20, 13
    tokens = torch.zeros(1, 1 + grid_h * grid_w, 64)
    ours = embeddings.interpolate_pos_encoding(tokens, grid_h * 14, grid_w * 14)
    patch = native[:, 1:].reshape(1, 37, 37, 64).permute(0, 3, 1, 2)
    meta = F.interpolate(patch, scale_factor=((grid_h + 0.1) / 37, (grid_w + 0.1) / 37),
                         mode="bicubic")
    hf = F.interpolate(patch, size=(grid_h, grid_w), mode="bicubic")
    as_tokens = lambda p: p.permute(0, 2, 3, 1).reshape(1, -1, 64)  # noqa: E731
    torch.testing.assert_close(ours[:, 1:], as_tokens(meta))
    assert not torch.allclose(as_tokens(hf), as_tokens(meta), atol=1e-3)
    assert torch.equal(ours[:, :1], native[:, :1])


def test_dinov3_vit7b16_is_built_as_meta_builds_it():
    """dinov3_vit7b16 as Meta builds it: 4096 wide, 40 blocks, SwiGLU of 8192, no q/k/v bias."""
    from d2ext.modeling.backbone.dino_vit import build_hf_vit

    with torch.device("meta"):
        vit = build_hf_vit(DINO_ARCHS["dinov3_vit7b16"])
    state = vit.state_dict()
    assert sum(v.numel() for v in state.values()) == 6_716_035_072
    assert "model.layer.0.attention.q_proj.bias" not in state
    assert state["model.layer.39.mlp.gate_proj.weight"].shape == (8192, 4096)
    assert vit.config.num_attention_heads == 32 and vit.config.num_register_tokens == 4
