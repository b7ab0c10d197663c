"""The Triton render backend against the torch reference: values and gradients of rendering
(mirrored and plain views, culled Gaussians, tile-straddling and many-tile footprints, screen
offsets) and of voxelization (rotated grids, sub-volumes), in float32 and float64; and the
backend selection's fallbacks.

Without CUDA the kernels run on CPU tensors through Triton's interpreter (``TRITON_INTERPRET=1``
is set for the test process); tests marked ``gpu`` run compiled kernels on a GPU.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import ixgs_engine.render
from ixgs_engine.errors import IXGSError
from ixgs_engine.gaussians import GaussianModel
from ixgs_engine.gaussians.densification import DensificationStrategy
from ixgs_engine.geometry.carm import Detector, carm_projection_matrix
from ixgs_engine.geometry.normalization import SceneNormalization
from ixgs_engine.geometry.roi import ROI
from ixgs_engine.io.scan import load_projections, read_scan
from ixgs_engine.reconstruct.config import ReconstructionConfig
from ixgs_engine.reconstruct.data import TrainingData
from ixgs_engine.reconstruct.trainer import Trainer
from ixgs_engine.render import backend as backend_module
from ixgs_engine.render import get_backend
from ixgs_engine.render.torch_backend import TorchBackend
from ixgs_engine.simulate import simulate_phantom_scan
from ixgs_engine.volume import VolumeGrid

CUDA = torch.cuda.is_available()
if not CUDA:
    # Kernels on CPU tensors through Triton's interpreter. Triton reads the variable when it is first
    # imported (its own library functions are jit-decorated then) and at every launch.
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip(
            "triton was imported before TRITON_INTERPRET=1 was set: run this file on its own, "
            "or the suite with TRITON_INTERPRET=1",
            allow_module_level=True,
        )
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")
from ixgs_engine.render import triton_kernels  # noqa: E402  (after the kernels' import mode is set)
from ixgs_engine.render.triton_backend import TritonAccumulator, TritonBackend  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")
NORMALIZATION = SceneNormalization.from_roi(ROI(center=[0.0, 0.0, 0.0], size=[200.0, 200.0, 200.0]))
HEIGHT, WIDTH = 30, 40  # neither a multiple of the 16-pixel tile across
LOGGER = "ixgs_engine.render.backend"


def views(height: int, width: int, pixel_mm: float) -> torch.Tensor:
    """Two C-arm views of the 200 mm ROI acting on normalized points: one plain, one mirrored."""
    detector = Detector((width, height), (pixel_mm, pixel_mm))
    plain = carm_projection_matrix(25.0, 10.0, 750.0, 1200.0, detector)
    mirrored = np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ carm_projection_matrix(
        -70.0, -20.0, 700.0, 1150.0, detector
    )
    return torch.tensor(np.stack([NORMALIZATION.projection_to_normalized(P) for P in (plain, mirrored)]))


def scene(count: int, dtype: torch.dtype, seed: int, matrices: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Random rotated anisotropic Gaussians (scales 0.01 to 0.25: sub-pixel to many tiles wide),
    one behind the first view's source and one far outside every view (both culled), as leaf
    tensors: means and densities in ``dtype`` (training's float32), covariances in float64."""
    generator = torch.Generator().manual_seed(seed)
    positions = torch.rand(count, 3, generator=generator, dtype=torch.float64) * 1.4 - 0.7
    source = -torch.linalg.solve(matrices[0, :, :3], matrices[0, :, 3])
    positions[0] = 2.0 * source
    positions[1] = torch.tensor([0.0, 0.0, 6.0])
    scales = 0.01 * 25.0 ** torch.rand(count, 3, generator=generator, dtype=torch.float64)
    rotations = torch.randn(count, 4, generator=generator, dtype=torch.float64)
    densities = 0.2 + torch.rand(count, generator=generator, dtype=torch.float64)
    model = GaussianModel.from_values(positions, scales, rotations, densities, dtype=torch.float64)
    with torch.no_grad():
        means, covariances, rho = model.positions.to(dtype), model.covariances(), model.densities.to(dtype)
    return tuple(t.to(DEVICE).requires_grad_() for t in (means, covariances, rho))


def assert_relative(actual: torch.Tensor, expected: torch.Tensor, tolerance: float, what: str) -> None:
    """Largest difference within ``tolerance`` of the largest magnitude (a tensor's near-zero
    entries carry only rounding, so an entrywise relative bound would test noise)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    scale = float(expected.abs().max())
    assert scale > 0, f"{what}: the reference is all zero, the test would prove nothing"
    error = float((actual - expected).abs().max()) / scale
    assert error <= tolerance, f"{what}: max difference {error:.3g} of the largest value"


def render_with_gradients(backend, inputs, matrices, shape) -> tuple[torch.Tensor, ...]:
    """Images, then gradients of a weighted sum w.r.t. means, covariances, densities and screen offsets."""
    means, covariances, densities = inputs
    offsets = torch.zeros(matrices.shape[0], means.shape[0], 2, dtype=torch.float64, device=DEVICE, requires_grad=True)
    images = backend.render(means, covariances, densities, matrices.to(DEVICE), shape, offsets)
    weights = torch.rand(images.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    loss = (images * weights.to(DEVICE, images.dtype)).sum()
    return (images.detach(), *torch.autograd.grad(loss, (means, covariances, densities, offsets)))


def voxelize_with_gradients(backend, inputs, grid) -> tuple[torch.Tensor, ...]:
    """Volume, then gradients of a weighted sum w.r.t. means, covariances and densities."""
    volume = backend.voxelize(*inputs, grid)
    weights = torch.rand(volume.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    loss = (volume * weights.to(DEVICE, volume.dtype)).sum()
    return (volume.detach(), *torch.autograd.grad(loss, inputs))


NAMES = ("values", "d/d means", "d/d covariances", "d/d densities", "d/d screen offsets")


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-4), (torch.float64, 1e-10)], ids=["f32", "f64"])
def test_render_matches_torch_values_and_gradients(dtype: torch.dtype, tolerance: float) -> None:
    matrices = views(HEIGHT, WIDTH, pixel_mm=5.0)
    inputs = scene(200, dtype, seed=1, matrices=matrices)
    expected = render_with_gradients(TorchBackend(), inputs, matrices, (HEIGHT, WIDTH))
    actual = render_with_gradients(TritonBackend(), inputs, matrices, (HEIGHT, WIDTH))
    assert (expected[0] > 0).float().mean() > 0.5  # the Gaussians cover most of both views
    assert float(expected[4][0, 0].abs().max()) == 0.0  # culled behind the source: no gradient...
    for name, want, got in zip(NAMES, expected, actual, strict=True):
        assert_relative(got, want, tolerance, name)
    assert float(actual[4][0, 0].abs().max()) == 0.0  # ... in either backend


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-4), (torch.float64, 1e-10)], ids=["f32", "f64"])
def test_voxelize_matches_torch_on_a_rotated_grid_and_a_subvolume(dtype: torch.dtype, tolerance: float) -> None:
    rotation, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
    spacing = np.array([0.12, 0.11, 0.13])
    centred = -rotation @ (spacing * (np.array([11, 12, 13]) - 1) / 2)  # the grid's centre at the origin
    grid = VolumeGrid((13, 12, 11), origin=centred, spacing=spacing, direction=rotation)
    block = grid.block((2, 3, 4), (7, 9, 6))
    inputs = scene(150, dtype, seed=2, matrices=views(HEIGHT, WIDTH, 5.0))
    full = None
    for target in (grid, block):
        expected = voxelize_with_gradients(TorchBackend(), inputs, target)
        actual = voxelize_with_gradients(TritonBackend(), inputs, target)
        for name, want, got in zip(NAMES[:4], expected, actual, strict=True):
            assert_relative(got, want, tolerance, name)
        full = actual[0] if full is None else full
    torch.testing.assert_close(actual[0], full[2:9, 3:12, 4:10])


def test_training_steps_follow_the_torch_backend(tmp_path) -> None:
    """Four trainer steps (two views a step, TV blocks, densification from the screen-offset
    gradients) take the same path with either backend: same losses, same clones and splits."""
    simulate_phantom_scan(tmp_path / "scan", "spine", 24, 8.0, 8, 40, 8.0)
    data = TrainingData.from_projections(load_projections(read_scan(tmp_path / "scan")), 1.0, DEVICE)
    config = ReconstructionConfig(
        iterations=4,
        views_per_step=2,
        init="random",
        num_gaussians=100,
        tv_size=8,
        tv_grid_size=24,
        densification=DensificationStrategy(start=2, stop=4, interval=2, grad_threshold=1e-6),
    )
    runs = [Trainer(data, config, b, tmp_path / b.name).run() for b in (TorchBackend(), TritonBackend())]
    assert runs[0].model.num_gaussians > config.num_gaussians  # densification ran
    for expected, actual in zip(runs[0].history, runs[1].history, strict=True):
        assert {k: v for k, v in actual.items() if k != "elapsed_s"} == pytest.approx(
            {k: v for k, v in expected.items() if k != "elapsed_s"}, rel=1e-5
        )
    for name, value in runs[0].model.parameters().items():
        torch.testing.assert_close(runs[1].model.parameters()[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_empty_and_fully_culled_scenes_render_zeros_with_zero_gradients() -> None:
    matrices = views(HEIGHT, WIDTH, 5.0)
    means, covariances, densities = (t[:2].detach().requires_grad_() for t in scene(2, torch.float32, 4, matrices))
    inputs = (means, covariances, densities)
    images, *gradients = render_with_gradients(TritonBackend(), inputs, matrices, (HEIGHT, WIDTH))
    assert images.shape == (2, HEIGHT, WIDTH) and float(images.abs().max()) == 0.0
    assert all(float(g.abs().max()) == 0.0 for g in gradients)


def test_check_device_refuses_a_cpu() -> None:
    with pytest.raises(RuntimeError, match="not a CUDA GPU"):
        TritonBackend().check_device("cpu")


def test_compiled_kernels_on_cpu_tensors_are_a_clear_user_error(monkeypatch) -> None:
    monkeypatch.setattr(triton_kernels, "INTERPRETED", False)
    matrices = views(HEIGHT, WIDTH, 5.0)
    means, covariances, densities = (t.detach().cpu() for t in scene(3, torch.float32, 6, matrices))
    with pytest.raises(IXGSError, match="the Triton render backend needs a CUDA GPU, not cpu"):
        TritonBackend().render(means, covariances, densities, matrices, (HEIGHT, WIDTH))


def test_self_test_passes_and_catches_wrong_kernels(monkeypatch) -> None:
    TritonBackend().self_test(DEVICE)
    accumulate = TritonAccumulator.accumulate
    monkeypatch.setattr(TritonAccumulator, "accumulate", lambda self, *args: 1.02 * accumulate(self, *args))
    with pytest.raises(RuntimeError, match="Triton render values differ from the torch reference by 0.02"):
        TritonBackend().self_test(DEVICE)


COMPILE_FOR_H100 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from ixgs_engine.render import triton_kernels
from ixgs_engine.render.triton_backend import BLOCK_SPLATS, TILE_SHAPES

assert not triton_kernels.INTERPRETED
kernel = triton_kernels.tile_sum
for dims, (tx, ty, tz) in TILE_SHAPES.items():
    for backward in (False, True):
        constants = {"DIMS": dims, "TX": tx, "TY": ty, "TZ": tz, "BLOCK": BLOCK_SPLATS[dims], "BACKWARD": backward}
        types = {"ids_ptr": "*i32", "starts_ptr": "*i32", "cutoff_value": "fp32"}
        signature = {
            name: "constexpr" if name in constants else types.get(name, "*fp32" if name.endswith("_ptr") else "i32")
            for name in kernel.arg_names
        }
        source = ASTSource(kernel, signature, {(kernel.arg_names.index(k),): v for k, v in constants.items()})
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], constants
        print(kernel.__name__, dims, "backward" if backward else "forward", "compiled")
"""


def test_kernels_compile_for_an_h100_without_one(tmp_path) -> None:
    """The interpreter accepts code the compiler rejects: build the kernels as launched (float32)
    for sm_90 through Triton's whole pipeline (front end, LLVM, ptxas), in a process without
    ``TRITON_INTERPRET``."""
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environment["TRITON_DEFAULT_FP_FUSION"] = "1"
    environment["TRITON_CACHE_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", COMPILE_FOR_H100], env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("compiled") == 4, result.stdout


# ----------------------------------------------------------------------------- selection
def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


def test_auto_picks_torch_on_a_cpu_without_warning(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    monkeypatch.delenv(backend_module.BACKEND_VARIABLE, raising=False)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        chosen = backend_module.select_backend("cpu")
    assert chosen.name == "torch" and warnings_of(caplog) == []
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == ["render backend: torch (device cpu)"]


def test_auto_falls_back_with_one_line_when_triton_is_missing(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    monkeypatch.delenv(backend_module.BACKEND_VARIABLE, raising=False)
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton -> ImportError
    for name in ("triton_backend", "triton_kernels"):  # forget the modules imported above
        monkeypatch.delitem(sys.modules, f"ixgs_engine.render.{name}", raising=False)
        monkeypatch.delattr(ixgs_engine.render, name, raising=False)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        chosen = backend_module.select_backend("cuda")
    assert chosen.name == "torch"
    (line,) = warnings_of(caplog)
    assert "triton" in line and "pip install triton" in line and "\n" not in line


def test_auto_falls_back_on_an_old_gpu(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    monkeypatch.delenv(backend_module.BACKEND_VARIABLE, raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        chosen = backend_module.select_backend("cuda")
    assert chosen.name == "torch"
    assert warnings_of(caplog) == [
        "render backend: torch, not the fast GPU one: Tesla V100 has compute capability 7.0; Triton needs 8.0+"
    ]


def test_auto_falls_back_when_the_kernels_fail(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    def fail(self, device) -> None:
        raise RuntimeError("PassManager::run failed\n<long compiler log>")

    monkeypatch.delenv(backend_module.BACKEND_VARIABLE, raising=False)
    monkeypatch.setattr(TritonBackend, "check_device", fail)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        chosen = backend_module.select_backend("cuda")
    assert chosen.name == "torch"
    assert warnings_of(caplog) == ["render backend: torch, not the fast GPU one: PassManager::run failed"]


def test_auto_picks_triton_on_a_gpu_that_passes_the_check(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    monkeypatch.delenv(backend_module.BACKEND_VARIABLE, raising=False)
    checked = []
    monkeypatch.setattr(TritonBackend, "check_device", lambda self, device: checked.append(device))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        chosen = backend_module.select_backend("cuda")
    assert chosen.name == "triton" and checked == [torch.device("cuda")] and warnings_of(caplog) == []


def test_named_backends_and_the_environment_override_auto(monkeypatch) -> None:
    monkeypatch.setenv(backend_module.BACKEND_VARIABLE, "torch")
    monkeypatch.setattr(TritonBackend, "check_device", lambda self, device: pytest.fail("auto ran despite the setting"))
    assert backend_module.select_backend("cuda").name == "torch"
    assert backend_module.select_backend("cpu", "triton").name == "triton"
    assert isinstance(get_backend("triton"), TritonBackend)


# ----------------------------------------------------------------------------- on a GPU
def assert_relative_l2(actual: torch.Tensor, expected: torch.Tensor, tolerance: float, what: str) -> None:
    error = float(torch.linalg.vector_norm(actual - expected) / torch.linalg.vector_norm(expected))
    assert error <= tolerance, f"{what}: relative L2 difference {error:.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_gpu_render_and_voxelize_match_torch_at_training_sizes(dtype: torch.dtype) -> None:
    """20k Gaussians, two 256^2 views and a 64^3 grid: compiled kernels vs the torch reference.
    float64: every entry. float32 at this size: millions of samples, so rounding moves a few
    across the hard cutoff in one backend only (each a jump of 1.1 % of one splat's peak, a
    1 % change of that splat's gradient), hence relative L2 bounds."""
    matrices = views(256, 256, pixel_mm=1.0)
    inputs = scene(20_000, dtype, seed=5, matrices=matrices)
    grid = VolumeGrid((64, 64, 64), origin=np.full(3, -0.7), spacing=np.full(3, 1.4 / 63))
    for op, run in (
        ("render", lambda backend: render_with_gradients(backend, inputs, matrices, (256, 256))),
        ("voxelize", lambda backend: voxelize_with_gradients(backend, inputs, grid)),
    ):
        expected, actual = run(TorchBackend()), run(TritonBackend())
        for index, (name, want, got) in enumerate(zip(NAMES[: len(expected)], expected, actual, strict=True)):
            if dtype == torch.float64:
                assert_relative(got, want, 1e-9, f"{op} {name}")
            else:
                assert_relative_l2(got, want, 1e-4 if index == 0 else 1e-3, f"{op} {name}")


@pytest.mark.gpu
def test_gpu_auto_selects_triton(monkeypatch) -> None:
    monkeypatch.delenv(backend_module.BACKEND_VARIABLE, raising=False)
    assert backend_module.select_backend("cuda").name == "triton"
