"""The PyTorch multi-scale deformable attention against a direct computation."""
import detectron2  # noqa: F401  (the tests require detectron2)
import torch

from d2ext.modeling.pixel_decoder.ms_deform_attn import (
    MSDeformAttn,
    grid_sample_core,
    ms_deform_attn_core,
)


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


def test_bag_sums_equal_grid_sample_in_values_and_gradients():
    """Training reads the gradients of the values, locations and weights: the embedding-bag sums
    and grid_sample's (which exports write) agree, locations far outside the maps included."""
    g = torch.Generator().manual_seed(1)
    shapes = [(5, 7), (3, 4), (2, 2)]
    n, m, d, lq, p = 2, 3, 4, 11, 2
    value = torch.randn(n, sum(h * w for h, w in shapes), m, d, generator=g, dtype=torch.float64)
    locations = torch.rand(n, lq, m, len(shapes), p, 2, generator=g, dtype=torch.float64) * 2 - 0.5
    weights = torch.rand(n, lq, m, len(shapes), p, generator=g, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (value, locations, weights)]
    grad_out = torch.randn(n, lq, m * d, generator=g, dtype=torch.float64)
    results = []
    for core in (ms_deform_attn_core, grid_sample_core):
        out = core(value, shapes, locations, weights)
        results.append((out, torch.autograd.grad(out, inputs, grad_out)))
    (ours, our_grads), (theirs, their_grads) = results
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-10)
    for a, b in zip(our_grads, their_grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_export_writes_grid_sample():
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2).eval()
    shapes = [(6, 8), (3, 4)]

    class Wrapped(torch.nn.Module):
        def forward(self, query, ref, value):
            return attn(query, ref, value, shapes)

    args = (torch.randn(1, 7, 16), torch.rand(1, 7, 2, 2), torch.randn(1, 60, 16))
    program = torch.export.export(Wrapped(), args)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any("grid_sampler" in t for t in targets)
    assert not any("embedding_bag" in t for t in targets)
    torch.testing.assert_close(program.module()(*args), Wrapped()(*args), atol=1e-5, rtol=0)
