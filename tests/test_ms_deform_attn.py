"""The PyTorch multi-scale deformable attention against a direct computation."""
import detectron2  # noqa: F401  (the tests require detectron2)
import torch

from d2ext.modeling.pixel_decoder.ms_deform_attn import MSDeformAttn, ms_deform_attn_core


def _bilinear(value, x, y):
    """value (H, W, D) sampled at pixel coordinates (x, y) (pixel centres at i + 0.5),
    zeros outside the map."""
    h, w, d = value.shape
    x, y = x - 0.5, y - 0.5
    x0, y0 = int(torch.floor(x)), int(torch.floor(y))
    out = torch.zeros(d, dtype=value.dtype)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            weight = (1 - abs(x - xx)) * (1 - abs(y - yy))
            if 0 <= yy < h and 0 <= xx < w:
                out += weight * value[yy, xx]
    return out


def test_core_equals_explicit_bilinear_sampling():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 2)]
    n, m, d, lq, p = 2, 2, 3, 5, 3
    value = torch.randn(n, sum(h * w for h, w in shapes), m, d, generator=g, dtype=torch.float64)
    # Include locations outside [0, 1] to check the zero padding.
    locations = (torch.rand(n, lq, m, len(shapes), p, 2, generator=g, dtype=torch.float64) * 1.4
                 - 0.2)
    weights = torch.rand(n, lq, m, len(shapes), p, generator=g, dtype=torch.float64)
    out = ms_deform_attn_core(value, shapes, locations, weights)
    expected = torch.zeros(n, lq, m, d, dtype=torch.float64)
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                start = 0
                for level, (h, w) in enumerate(shapes):
                    v = value[b, start:start + h * w, head].view(h, w, d)
                    start += h * w
                    for k in range(p):
                        x, y = locations[b, q, head, level, k]
                        expected[b, q, head] += weights[b, q, head, level, k] * \
                            _bilinear(v, x * w, y * h)
    assert out.shape == (n, lq, m * d)
    torch.testing.assert_close(out, expected.flatten(2), atol=1e-10, rtol=1e-10)


def test_module_runs_and_backpropagates_on_cpu():
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2)
    shapes = [(6, 8), (3, 4)]
    value = torch.randn(2, 60, 16, requires_grad=True)
    query = torch.randn(2, 7, 16)
    ref = torch.rand(2, 7, 2, 2)
    out = attn(query, ref, value, shapes)
    out.sum().backward()
    assert out.shape == (2, 7, 16) and value.grad.abs().sum() > 0
