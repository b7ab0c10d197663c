"""Densification as a strategy module: clone, split and prune with the optimizer's state,
the gradient statistics that choose them, the schedule, and the model's domain kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from render_views import IMAGE, normalized_views

from ixgs_engine.gaussians import GaussianModel
from ixgs_engine.gaussians.densification import (
    SPLIT_SCALE_DIVISOR,
    DensificationStrategy,
    GradientStatistics,
    clone,
    prune,
    split,
)
from ixgs_engine.render import get_backend


def trained_model() -> tuple[GaussianModel, torch.optim.Adam]:
    """400 Gaussians (scale 0.05, the first ten 0.25) and an Adam optimizer that has taken one
    step (so it has state)."""
    rng = np.random.default_rng(4)
    scales = np.full((400, 3), 0.05)
    scales[:10] = 0.25
    quaternions = rng.normal(size=(400, 4))
    model = GaussianModel.from_values(rng.uniform(-0.3, 0.3, (400, 3)), scales, quaternions, np.full(400, 0.5))
    optimizer = torch.optim.Adam(
        model.param_groups({"positions": 2e-4, "scales": 5e-3, "rotations": 1e-3, "densities": 1e-2}), eps=1e-15
    )
    image = get_backend("torch").render(
        model.positions, model.covariances(), model.densities, normalized_views([(0.0, 0.0)]), (IMAGE, IMAGE)
    )
    image.square().mean().backward()
    optimizer.step()
    optimizer.zero_grad()
    return model, optimizer


def strategy(**settings) -> DensificationStrategy:
    """A strategy due at every step with R^2-Gaussian's thresholds (the strategy's defaults),
    overridden by ``settings``."""
    return DensificationStrategy(**({"start": 1, "stop": 10, "interval": 1} | settings))


def render_model(model: GaussianModel, matrices: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return get_backend("torch").render(
            model.positions, model.covariances(), model.densities, matrices, (IMAGE, IMAGE)
        )


def assert_optimizer_matches(model: GaussianModel, optimizer: torch.optim.Optimizer) -> None:
    params = model.parameters()
    for group in optimizer.param_groups:
        (param,) = group["params"]
        assert param is params[group["name"]]
        state = optimizer.state[param]
        assert state["exp_avg"].shape == param.shape
        assert state["exp_avg_sq"].shape == param.shape


def test_clone_keeps_the_images_and_extends_optimizer_state() -> None:
    model, optimizer = trained_model()
    matrices = normalized_views([(0.0, 0.0), (60.0, 15.0)])
    before = render_model(model, matrices)
    old_state = {name: optimizer.state[p]["exp_avg"].clone() for name, p in model.parameters().items()}
    mask = torch.zeros(400, dtype=torch.bool)
    mask[::3] = True
    clone(model, mask, optimizer)
    assert model.num_gaussians == 400 + int(mask.sum())
    torch.testing.assert_close(render_model(model, matrices), before, rtol=1e-4, atol=1e-6)
    assert_optimizer_matches(model, optimizer)
    for name, p in model.parameters().items():
        torch.testing.assert_close(optimizer.state[p]["exp_avg"][:400], old_state[name])
        assert not optimizer.state[p]["exp_avg"][400:].any()


@pytest.mark.parametrize("factor", [0.5, SPLIT_SCALE_DIVISOR**3 / 2], ids=["r2_gaussian", "mass_conserving"])
def test_split_shares_density_as_chosen(factor: float) -> None:
    """Splitting one large Gaussian into two of scale / 1.6 with ``factor`` times its density
    scales its summed line integrals (image total) by 2 factor / 1.6^3: 0.24 with
    R^2-Gaussian's halving, 1 with the mass-conserving factor."""
    matrices = normalized_views([(0.0, 0.0), (60.0, 15.0)])
    model = GaussianModel.from_values([[0.1, 0.0, -0.1]], [[0.25, 0.12, 0.08]], [[0.9, 0.3, 0.2, 0.1]], [1.0])
    before = render_model(model, matrices).sum()
    split(model, torch.tensor([True]), generator=torch.Generator().manual_seed(0), density_factor=factor)
    assert model.num_gaussians == 2
    torch.testing.assert_close(model.scales, (torch.tensor([[0.25, 0.12, 0.08]]) / SPLIT_SCALE_DIVISOR).expand(2, 3))
    ratio = float(render_model(model, matrices).sum() / before)
    assert ratio == pytest.approx(2.0 * factor / SPLIT_SCALE_DIVISOR**3, rel=0.05)


def test_densify_and_prune_follows_the_gradient_statistics() -> None:
    model, optimizer = trained_model()
    with torch.no_grad():  # the first ten are large: split when hot
        model.parameters()["densities"][390:395] = -20.0  # below the density threshold
        model.parameters()["positions"][395:] = 1.5  # outside the box
    grad = torch.zeros(2, 400, 2)
    grad[0, :20] = 1e-3 / IMAGE  # hot in view 0 only: mean over 1 seen view >= threshold
    grad[1, 20:40] = 1e-7  # seen, but cold
    statistics = GradientStatistics.zeros(model)
    statistics.add(grad, (IMAGE, IMAGE))
    counts = strategy(scale_threshold=0.2).refine(model, statistics, optimizer, torch.Generator().manual_seed(1))
    assert counts == {"cloned": 10, "split": 10, "pruned": 10}
    assert model.num_gaussians == 400 + 10 + 10 - 10
    assert_optimizer_matches(model, optimizer)
    assert not statistics.mean().any()
    # The optimizer still works on the new tensors.
    image = get_backend("torch").render(
        model.positions, model.covariances(), model.densities, normalized_views([(0.0, 0.0)]), (IMAGE, IMAGE)
    )
    image.square().mean().backward()
    optimizer.step()


def test_densify_never_grows_past_the_maximum() -> None:
    model, optimizer = trained_model()
    grad = torch.zeros(1, 400, 2)
    grad[0, :30, 0] = torch.linspace(1e-4, 3e-3, 30) / IMAGE  # 30 hot, rising gradient
    statistics = GradientStatistics.zeros(model)
    statistics.add(grad, (IMAGE, IMAGE))
    counts = strategy(max_gaussians=412).refine(model, statistics, optimizer)
    assert counts["cloned"] + counts["split"] == 12
    assert model.num_gaussians == 412 - counts["pruned"]
    assert_optimizer_matches(model, optimizer)


def test_prune_keeps_rows_and_state_of_the_survivors() -> None:
    model, optimizer = trained_model()
    positions = model.positions.detach().clone()
    state = optimizer.state[model.parameters()["positions"]]["exp_avg_sq"].clone()
    mask = torch.zeros(400, dtype=torch.bool)
    mask[5:50] = True
    prune(model, mask, optimizer)
    torch.testing.assert_close(model.positions.detach(), positions[~mask])
    torch.testing.assert_close(optimizer.state[model.parameters()["positions"]]["exp_avg_sq"], state[~mask])
    assert_optimizer_matches(model, optimizer)


def test_statistics_follow_their_gaussians_through_clone_and_prune() -> None:
    """Each Gaussian's accumulated gradient stays with it when rows are appended or removed
    (copies start at zero), and a checkpoint's statistics must fit the model."""
    model, optimizer = trained_model()
    statistics = GradientStatistics.zeros(model)
    grad = torch.zeros(1, 400, 2)
    grad[0, :, 0] = torch.arange(400, dtype=torch.float32) / IMAGE
    statistics.add(grad, (IMAGE, IMAGE))
    seen = statistics.mean().clone()
    mask = torch.zeros(400, dtype=torch.bool)
    mask[:4] = True
    statistics.follow(clone(model, mask, optimizer), model.num_gaussians)
    torch.testing.assert_close(statistics.mean()[:400], seen)
    assert not statistics.mean()[400:].any()
    statistics.follow(prune(model, torch.arange(404) % 2 == 0, optimizer), model.num_gaussians)
    torch.testing.assert_close(statistics.mean()[:200], seen[1::2])
    with pytest.raises(ValueError, match="202 entries"):
        GradientStatistics.restored(*GradientStatistics.zeros(trained_model()[0]).tensors(), model)


def test_strategy_refines_on_its_schedule() -> None:
    schedule = strategy(start=200, stop=550, interval=100)
    assert [step for step in range(1, 1000) if schedule.is_due(step)] == [200, 300, 400, 500]


def test_densify_and_prune_keep_the_domain_and_refine_only_near_the_roi() -> None:
    """With a domain larger than [-1, 1]^3, centres out to its faces survive and only those
    beyond are pruned; hot Gaussians outside the refined box are neither cloned nor split."""
    model, optimizer = trained_model()
    with torch.no_grad():
        model.parameters()["positions"][:10, 0] = 1.8  # hot, inside the domain, outside the refined box
        model.parameters()["positions"][390:, 0] = 2.6  # beyond the domain
    grad = torch.zeros(1, 400, 2)
    grad[0, :20] = 1e-3 / IMAGE  # 20 hot
    statistics = GradientStatistics.zeros(model)
    statistics.add(grad, (IMAGE, IMAGE))
    counts = strategy(scale_threshold=0.2).refine(
        model, statistics, optimizer, torch.Generator().manual_seed(1), domain=(2.5, 2.5, 2.5), refined=(1.5, 1.5, 1.5)
    )
    assert counts["cloned"] + counts["split"] == 10 and counts["pruned"] == 10
    assert (model.positions[:, 0] == 1.8).sum() == 10  # kept, not refined
    assert_optimizer_matches(model, optimizer)
