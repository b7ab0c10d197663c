"""Radiographic standardization: the realistic X-ray simulator (each effect does what it
should), the Pix2Pix model (sizes, model file, training), and the `ixgs standardize` commands
end to end on tiny data."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from ixgs_engine.cli import main
from ixgs_engine.errors import IXGSError
from ixgs_engine.io.scan import load_projections, read_scan
from ixgs_engine.io.volumes import read_volume
from ixgs_engine.standardize import apply_model, load_model, save_model
from ixgs_engine.standardize.model import Normalization, Pix2PixConfig, StandardizationModel, UNetGenerator
from ixgs_engine.standardize.pairs import bone_enhanced_from_basis, read_pairs, write_pairs
from ixgs_engine.standardize.radiograph import RadiographParams, polychromatic_transmission, simulate_radiograph
from ixgs_engine.standardize.spectrum import BONE, WATER, decompose_hu, mass_attenuation, tube_spectrum

TINY = Pix2PixConfig(
    "tiny",
    base_channels=4,
    depth=3,
    max_channels=16,
    disc_channels=4,
    disc_layers=2,
    dropout=0.0,
    batch_size=2,
    steps=4,
    crop=0,
    validate_every=2,
    checkpoint_every=2,
)
SMALL_SCAN = ["simulate", "--phantom-size", "24", "--phantom-spacing", "8", "--views", "3"]
SMALL_SCAN += ["--detector-pixels", "40", "36", "--pixel-size", "10"]
"""``ixgs simulate`` of a 3-view scan of 40 x 36 pixels (add ``-o FOLDER``)."""
NOISELESS = 1e12  # photons: Poisson noise far below every effect a test looks at


def _slab(shape=(48, 48), water_mm=150.0, bone_mm=0.0) -> tuple[np.ndarray, np.ndarray]:
    """Water and bone line integrals (g/cm^3 x mm) of a uniform slab."""
    return np.full(shape, water_mm), np.full(shape, bone_mm * 1.85)


def _patterned() -> tuple[np.ndarray, np.ndarray]:
    """A body (water) with sharp-edged bone bars and air at the sides."""
    water = np.zeros((64, 64))
    water[:, 8:56] = 180.0
    bone = np.zeros((64, 64))
    for row in range(10, 60, 12):
        bone[row : row + 5, 20:44] = 1.85 * 25.0
    return water, bone


# --- simulator -------------------------------------------------------------------------------------------


def test_spectrum_and_materials_are_physical():
    spectrum = tube_spectrum(80, 3.0)
    assert spectrum.energies_kev.max() <= 80 and 30 < spectrum.mean_kev < 60
    assert tube_spectrum(120, 3.0).mean_kev > spectrum.mean_kev  # higher kVp, harder beam
    assert tube_spectrum(80, 3.0, 0.2).mean_kev > spectrum.mean_kev  # copper hardens
    assert mass_attenuation(WATER, 60.0) == pytest.approx(0.2059, rel=0.01)  # NIST XCOM water, 60 keV
    assert mass_attenuation(BONE, 40.0) > 2 * mass_attenuation(WATER, 40.0)  # photoelectric effect of calcium


def test_hu_decomposition_reproduces_the_ct_at_the_reference_energy():
    hu = np.linspace(-1000.0, 3000.0, 81)
    water, bone = decompose_hu(hu)
    assert np.all(water >= 0) and np.all(bone >= 0) and np.all(bone[hu <= 0] == 0)
    mu_water = mass_attenuation(WATER, 70.0) / 10.0
    np.testing.assert_allclose(
        bone_enhanced_from_basis(water, bone, 1.0), mu_water * (1 + hu / 1000), rtol=1e-4, atol=1e-7
    )
    enhanced = bone_enhanced_from_basis(water, bone, 3.0)
    assert np.all(enhanced[hu > 100] > bone_enhanced_from_basis(water, bone, 1.0)[hu > 100])


def test_polychromatic_beam_hardens():
    thickness = np.array([[50.0, 100.0, 200.0, 400.0]])
    photons, _ = polychromatic_transmission(thickness, np.zeros_like(thickness), 80, 3.0)
    effective_mu = -np.log(photons[0]) / thickness[0]
    assert np.all(np.diff(effective_mu) < 0)  # the beam hardens: attenuation per mm falls with depth
    mean_kev = tube_spectrum(80, 3.0).mean_kev
    assert mass_attenuation(WATER, 80) / 10 < effective_mu[0] < mass_attenuation(WATER, mean_kev - 15) / 10


def test_noise_level_scales_with_dose_as_poisson_statistics():
    water, bone = _slab()
    stds = []
    for exposure in (400.0, 6400.0):
        simulated = simulate_radiograph(water, bone, RadiographParams(exposure=exposure), np.random.default_rng(1))
        photons, energy = polychromatic_transmission(water[:1, :1], bone[:1, :1], 80, 3.0)
        expected_counts = exposure * float(photons[0, 0] / energy[0, 0])
        stds.append(float(simulated.log_image.std()))
        assert stds[-1] == pytest.approx(1 / np.sqrt(expected_counts), rel=0.1)  # std of -ln(Poisson)
    assert stds[0] / stds[1] == pytest.approx(4.0, rel=0.15)


def test_inversion_flips_the_display_values():
    water, bone = _patterned()
    rng = lambda: np.random.default_rng(3)  # noqa: E731
    params = RadiographParams(exposure=2000.0, window_percentiles=(2.0, 98.0), gamma=0.8)
    plain = simulate_radiograph(water, bone, params, rng()).radiograph
    inverted = simulate_radiograph(water, bone, replace(params, invert=True), rng()).radiograph
    np.testing.assert_allclose(plain + inverted, 1.0, atol=1e-6)
    assert plain[30, 32] > plain[30, 2]  # bone-bright display: the body is brighter than air


def test_collimation_masks_the_field_and_shutters_look_dense():
    water, bone = _patterned()
    params = RadiographParams(
        exposure=NOISELESS,
        collimation=(0.0, 0.125, 0.0, 0.5),
        collimator_transmission=0.005,
        window_percentiles=(0, 99),
    )
    simulated = simulate_radiograph(water, bone, params, np.random.default_rng(0))
    expected = np.zeros((64, 64), bool)
    expected[:32, :56] = True
    np.testing.assert_array_equal(simulated.field, expected)
    open_field = simulate_radiograph(water, bone, replace(params, collimation=(0.0,) * 4), np.random.default_rng(0))
    np.testing.assert_allclose(simulated.log_image[expected], open_field.log_image[expected], atol=1e-4)
    shuttered_air = simulated.log_image[40:, 0]  # air behind a shutter: -ln(transmission)
    np.testing.assert_allclose(shuttered_air, -np.log(0.005), atol=1e-3)
    # behind the shutters even air displays brighter (denser) than the body in the open field
    assert simulated.radiograph[40:, 0].min() > simulated.radiograph[:32, 12].max()


def test_scatter_adds_a_smooth_positive_offset():
    water, bone = _patterned()
    params = RadiographParams(exposure=NOISELESS, scatter_sigma_px=12.0)
    clean = simulate_radiograph(water, bone, params, np.random.default_rng(0)).signal.astype(np.float64)
    scattered = simulate_radiograph(
        water, bone, replace(params, scatter_fraction=0.3), np.random.default_rng(0)
    ).signal.astype(np.float64)
    offset = scattered - clean
    assert offset.min() > 0
    inner = (slice(8, 56), slice(8, 56))
    detail = lambda image: np.sqrt(np.mean((image - gaussian_filter(image, 1.5))[inner] ** 2))  # noqa: E731
    assert detail(offset) < 0.01 * detail(clean)  # low frequency only: the bone edges do not scatter
    body = (slice(None), slice(8, 56))
    assert np.mean(offset[body] / clean[body]) > 0.05  # a scatter-to-primary ratio that matters
    # the -log image loses contrast: scatter is why raw radiographs underestimate dense paths
    log_clean = -np.log(clean)
    log_scattered = -np.log(scattered)
    assert np.ptp(log_scattered[body]) < np.ptp(log_clean[body])


def test_heel_effect_tilts_the_output_along_its_axis():
    water, bone = _slab(water_mm=0.0)
    signal = simulate_radiograph(
        water, bone, RadiographParams(exposure=NOISELESS, heel=0.2, heel_axis=1), np.random.default_rng(0)
    ).signal
    assert signal[:, -1].mean() / signal[:, 0].mean() == pytest.approx(1.1 / 0.9, rel=1e-3)
    np.testing.assert_allclose(signal[0], signal[-1], rtol=2e-5)  # constant along the other axis


def test_detector_blur_and_processing_change_what_they_should():
    water, bone = _slab(water_mm=100.0)
    params = RadiographParams(exposure=1000.0)
    sharp = simulate_radiograph(water, bone, params, np.random.default_rng(2)).log_image
    blurred = simulate_radiograph(water, bone, replace(params, blur_sigma_px=1.0), np.random.default_rng(2)).log_image
    assert blurred.std() < 0.5 * sharp.std()  # light spread correlates and lowers pixel noise
    gained = simulate_radiograph(water, bone, replace(params, air_gain_error=1.1), np.random.default_rng(2)).log_image
    np.testing.assert_allclose(gained - sharp, np.log(1.1), atol=1e-5)
    quantized = simulate_radiograph(water, bone, replace(params, bits=4), np.random.default_rng(2)).radiograph
    assert len(np.unique(quantized)) <= 16


# --- model -----------------------------------------------------------------------------------------------


def _tiny_model(seed: int = 0) -> StandardizationModel:
    torch.manual_seed(seed)
    return StandardizationModel(TINY, Normalization(target_scale=4.0), UNetGenerator(TINY).eval(), {"note": "test"})


@pytest.mark.parametrize("shape", [(1, 1, 37, 53), (2, 1, 64, 40), (1, 1, 5, 3)])
def test_generator_keeps_any_image_size(shape):
    output = UNetGenerator(TINY)(torch.randn(shape))
    assert output.shape == shape and output.abs().max() <= 1.0


def test_standardize_returns_line_integrals_of_the_input_shape():
    images = np.random.default_rng(0).uniform(0, 4095, (3, 29, 31)).astype(np.float32)
    output = apply_model(_tiny_model(), images)
    assert output.shape == images.shape and output.min() >= 0 and output.max() <= 4.0
    assert apply_model(_tiny_model(), images[0]).shape == (1, 29, 31)


def test_model_file_round_trip(tmp_path: Path):
    model = _tiny_model()
    path = save_model(tmp_path / "model.pt", model)
    loaded = load_model(path)
    assert loaded.config == TINY and loaded.normalization == model.normalization and loaded.info == {"note": "test"}
    images = np.random.default_rng(1).normal(size=(2, 24, 20)).astype(np.float32)
    np.testing.assert_array_equal(loaded.standardize(images), model.standardize(images))


def test_wrong_or_corrupt_model_files_give_clear_errors(tmp_path: Path):
    good = save_model(tmp_path / "model.pt", _tiny_model())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    text = tmp_path / "notes.pt"
    text.write_text("not a model")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    mismatched = tmp_path / "mismatched.pt"
    record = torch.load(good, weights_only=True)
    record["config"] = json.dumps({**TINY.to_dict(), "base_channels": 8})
    torch.save(record, mismatched)
    for path, words in [
        (tmp_path / "missing.pt", "not found"),
        (truncated, "cannot be read"),
        (text, "cannot be read"),
        (foreign, "expected format"),
        (mismatched, "damaged contents"),
    ]:
        with pytest.raises(IXGSError, match=words) as error:
            load_model(path)
        assert str(path) in str(error.value)


def _write_tiny_pairs(folder: Path, count: int = 6) -> None:
    rng = np.random.default_rng(0)
    targets = [gaussian_filter(rng.uniform(0, 3, (24, 24)), 2) for _ in range(count)]
    inputs = [1.0 - t / 3 + rng.normal(0, 0.01, t.shape) for t in targets]
    write_pairs(folder, inputs, targets, [{"group": "g"}] * count, {"bone_weight": 2.5})


def test_one_training_step_lowers_the_loss(tmp_path: Path):
    from ixgs_engine.standardize.training import Pix2PixTrainer

    _write_tiny_pairs(tmp_path)
    trainer = Pix2PixTrainer(TINY, read_pairs(tmp_path), torch.device("cpu"), seed=0)
    x, y = trainer.batch(0)
    with torch.no_grad():
        before = float(torch.nn.functional.l1_loss(trainer.generator(x), y))
    trainer.train_step()
    with torch.no_grad():
        after = float(torch.nn.functional.l1_loss(trainer.generator(x), y))
    assert after < before
    assert trainer.train_indices == [0, 1, 2, 3, 4] and trainer.validation_indices == [5]


def test_batches_are_reproducible_and_the_same_read_from_disk(tmp_path: Path, monkeypatch):
    from ixgs_engine.standardize import training

    _write_tiny_pairs(tmp_path, count=12)
    in_memory = training.Pix2PixTrainer(TINY, read_pairs(tmp_path), torch.device("cpu"), seed=5)
    monkeypatch.setattr(training, "IN_MEMORY_BYTES", 0)
    from_disk = training.Pix2PixTrainer(TINY, read_pairs(tmp_path), torch.device("cpu"), seed=5)
    assert from_disk._memory is None and in_memory.normalization == from_disk.normalization
    for step in (0, 7):
        for a, b in zip(in_memory.batch(step), from_disk.batch(step), strict=True):
            torch.testing.assert_close(a, b)
    assert not torch.equal(in_memory.batch(0)[0], in_memory.batch(1)[0])
    assert in_memory.validation_indices == [9]


# --- commands --------------------------------------------------------------------------------------------

PAIRS = [
    "--phantom-size",
    "24",
    "--phantom-variants",
    "2",
    "--views",
    "6",
    "--detector-pixels",
    "32",
    "--pixel-size",
    "12.8",
]


def test_commands_end_to_end(tmp_path: Path, capsys):
    pairs, model = tmp_path / "pairs", tmp_path / "model" / "standardize.pt"
    assert main(["standardize", "make-pairs", "-o", str(pairs), *PAIRS, "--device", "cpu"]) == 0
    assert "made pairs from 6 simulated views of 2 CT(s)" in capsys.readouterr().out
    pair_set = read_pairs(pairs)
    assert len(pair_set) == 6 and set(pair_set.groups) == {"spine-0", "spine-1"}
    radiograph, target = pair_set.load(0)
    assert radiograph.shape == target.shape == (32, 32) and 0 <= radiograph.min() and radiograph.max() <= 1
    assert target.min() >= 0 and target.max() > 1  # a line integral through the body

    assert main(["standardize", "train", str(pairs), "-o", str(model), "--steps", "2", "--device", "cpu"]) == 0
    assert "trained 2 steps on 5 pairs" in capsys.readouterr().out
    assert main(["standardize", "train", str(pairs), "-o", str(model), "--steps", "3", "--resume"]) == 0
    log = [json.loads(line) for line in (model.parent / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and "val_psnr" in log[-1] and np.isfinite(log[-1]["val_l1"])
    assert (model.parent / "validation" / "step-000003.png").is_file()
    assert load_model(model).info["steps"] == 3

    scan = tmp_path / "scan"
    assert main(SMALL_SCAN + ["-o", str(scan)]) == 0
    out = tmp_path / "standardized"
    assert main(["standardize", "apply", str(model), str(scan), "-o", str(out)]) == 0
    assert "standardized 3 views" in capsys.readouterr().out
    projections = load_projections(read_scan(out))
    original = read_scan(scan)
    assert projections.values.shape == (3, 36, 40)
    np.testing.assert_allclose(projections.matrices, original.matrices)
    np.testing.assert_allclose(projections.roi.center, original.roi.center)
    assert read_scan(out).image_kind == "line_integral" and "ground_truth" not in read_scan(out).extra


def test_real_pairs_from_a_scan_and_its_ct(tmp_path: Path, capsys):
    scan = tmp_path / "scan"
    assert main(SMALL_SCAN + ["-o", str(scan)]) == 0
    pairs = tmp_path / "pairs"
    ct = scan / "ground_truth.nrrd"  # attenuation (1/mm): --units auto converts it back to HU
    assert (
        main(["standardize", "make-pairs", str(ct), "--scan", str(scan), "-o", str(pairs), "--bone-weight", "1"]) == 0
    )
    pair_set = read_pairs(pairs)
    projections = load_projections(read_scan(scan))
    for index in range(3):
        x, y = pair_set.load(index)
        np.testing.assert_array_equal(x, projections.values[index])  # the scan's own image is the input
        # bone weight 1: the target is the CT's own DRR (xraylib vs NIST water differ by 0.4 %)
        np.testing.assert_allclose(y, projections.values[index], rtol=0.01, atol=0.01 * y.max())
    assert read_volume(ct).shape == (24, 24, 24)


def test_command_errors_are_one_clear_line(tmp_path: Path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 100)
    (tmp_path / "scan").mkdir()
    bad, scan = str(tmp_path / "bad.pt"), str(tmp_path / "scan")
    assert main(["standardize", "apply", bad, scan, "-o", str(tmp_path / "o")]) == 2
    assert "bad.pt: cannot be read" in capsys.readouterr().err
    assert main(["standardize", "train", str(tmp_path), "-o", str(tmp_path / "m.pt")]) == 2
    assert "is not a pairs folder" in capsys.readouterr().err
    assert main(["standardize", "train", str(tmp_path), "-o", str(tmp_path / "m.pt"), "--resume"]) == 2
    assert main(["standardize", "make-pairs", "--scan", str(tmp_path / "scan"), "-o", str(tmp_path / "p")]) == 2
    assert "--scan needs the patient's CT" in capsys.readouterr().err
