"""Both modules' Logic, end to end and headless: real MRML classes from ``slicer-core``, the
stand-ins of ``slicer_stand_ins`` for what it lacks, and real engine processes started by the
Logic through its injectable runner (``SubprocessJob``; the GUI's is a QProcess), the same path
as the buttons and the Python console."""

import importlib
import json
import pathlib

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core package (pip install slicer-core)")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the importable 'slicer' module has no MRML classes", allow_module_level=True)

import slicer_stand_ins  # noqa: E402

from ixgs_engine.io.scan import read_scan  # noqa: E402
from ixgs_engine.io.volumes import read_volume  # noqa: E402
from ixgs_engine.reconstruct.run_files import has_checkpoint, read_log  # noqa: E402
from ixgs_engine.simulate import simulate_phantom_scan  # noqa: E402
from IXGSCommonLib import engine_process, mrml_bridge  # noqa: E402
from IXGSCommonLib.engine_jobs import CANCELLED, SubprocessJob  # noqa: E402

ENGINE_OPTIONS = ["--gaussians", "300", "--voxel-size", "8", "--seed", "1"]


@pytest.fixture
def modules(monkeypatch, tmp_path):
    """The two module files imported over the stand-ins, with a new scene."""
    slicer_stand_ins.install(monkeypatch, tmp_path / "slicer-temporary")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return importlib.import_module("IXGSReconstruction"), importlib.import_module("IXGSStandardize")


class Recorder:
    """The callbacks a widget would pass: progress events, log lines, the end."""

    def __init__(self) -> None:
        self.events, self.lines, self.finished = [], [], None

    def start(self, job_method, **kwargs):
        return job_method(self.events.append, self.lines.append, self.finish, **kwargs)

    def finish(self, success: bool, message: str) -> None:
        self.finished = (success, message)


def test_reconstruction_logic_loads_a_scan_reconstructs_cancels_resumes_and_reviews(modules, tmp_path):
    reconstruction, _ = modules
    truth = simulate_phantom_scan(tmp_path / "scan", "spine", 24, 8.0, 6, 40, 8.0)
    logic = reconstruction.IXGSReconstructionLogic(runner=SubprocessJob)
    parameters = logic.getParameterNode()

    # Load a scan: one X-ray node per view and the box from its geometry.
    parameters.scanFolder = tmp_path / "scan"
    nodes = logic.loadScan(parameters.scanFolder)
    assert len(nodes) == 6 and parameters.roi is not None
    assert float(np.linalg.norm(mrml_bridge.roi_from_node(parameters.roi).center - truth.center())) < 30.0

    # Points round trip: POINTS_JSON -> markups on the X-rays -> POINTS_JSON.
    points = {"views": {"2": [{"u": 10.5, "v": 20.25, "bead": 3}], "4": [{"u": 1.0, "v": 2.0}]}}
    (tmp_path / "in.json").write_text(json.dumps(points))
    logic.loadPoints(tmp_path / "in.json")
    written = json.loads(pathlib.Path(logic.exportPoints(tmp_path / "out.json")).read_text())["views"]
    assert sorted(written) == ["2", "4"] and written["2"][0]["bead"] == 3
    assert written["2"][0]["u"] == pytest.approx(10.5) and written["2"][0]["v"] == pytest.approx(20.25)

    # Reconstruct through the Logic's runner; Cancel once training has started.
    parameters.outputFolder, parameters.preset, parameters.device, parameters.iterations = (
        tmp_path / "run",
        "fast",
        "cpu",
        60,
    )
    run = Recorder()
    job = run.start(logic.reconstruct, extraArguments=ENGINE_OPTIONS)
    assert logic.isJobRunning()
    with pytest.raises(RuntimeError, match="job is running"):
        logic.reconstruct(extraArguments=ENGINE_OPTIONS)
    while job.is_running() and not any(e.stage == "reconstructing" and e.done >= 3 for e in run.events):
        job.wait(0.05)
    logic.cancelJob()
    job.wait(300)
    assert run.finished == (False, CANCELLED)
    assert any(e.stage == "SART start" for e in run.events)  # the stage before training is shown
    assert has_checkpoint(tmp_path / "run")
    # The preview (the SART start) was shown while the run trained, and stays after a Cancel.
    preview = parameters.volume
    assert preview is not None and preview.GetName() == "IXGS reconstruction (preview)"
    shown = mrml_bridge.volume_from_node(preview)
    written = read_volume(tmp_path / "run" / engine_process.PREVIEW_FILE)
    np.testing.assert_array_equal(shown.array, written.array)
    assert float(written.array.max()) > 0.0 and float(written.array.min()) >= 0.0

    # Resume: the run finishes, the volume replaces the preview in its node, thresholded and rendered.
    parameters.resume = True
    resumed = Recorder()
    resumed.start(logic.reconstruct).wait(300)
    assert resumed.finished[0], resumed.finished[1]
    assert resumed.finished[1].startswith("reconstructed 6 views")
    assert len(read_log(tmp_path / "run")) == 60
    events = [e for e in resumed.events if e.stage == "reconstructing"]
    assert events[-1].done == events[-1].total == 60
    volume = parameters.volume
    assert volume is preview and volume.GetName() == "IXGS reconstruction"
    np.testing.assert_array_equal(
        mrml_bridge.volume_from_node(volume).array, read_volume(tmp_path / "run" / "volume.nrrd").array
    )
    assert logic.previewNode(tmp_path / "run") is None
    assert volume.GetDisplayNode().GetApplyThreshold()
    assert slicer.modules.volumerendering.logic().GetFirstVolumeRenderingDisplayNode(volume) is not None
    logic.showVolume(volume, 0.05)
    assert volume.GetDisplayNode().GetLowerThreshold() == pytest.approx(0.05)

    # Realign to the anatomy (both ways) and harden.
    transform = logic.realignFromPrincipalAxes(volume, 0.02)
    assert volume.GetTransformNodeID() == transform.GetID()
    spine = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "spine")
    for ras in ((0.0, 0.0, -30.0), (1.0, 2.0, 0.0), (2.0, 4.0, 30.0)):
        spine.AddControlPoint(*ras)
    lateral = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "lateral")
    for ras in ((30.0, 0.0, 0.0), (-30.0, 0.0, 0.0)):
        lateral.AddControlPoint(*ras)
    transform = logic.realignFromLandmarks(volume, spine, lateral)
    assert volume.GetTransformNodeID() == transform.GetID()
    mrml_bridge.harden_transform(volume)
    assert volume.GetTransformNodeID() is None

    # Loading another scan replaces the X-rays and drops the earlier scan's points.
    simulate_phantom_scan(tmp_path / "other", "spine", 24, 8.0, 3, 40, 8.0)
    assert len(logic.loadScan(tmp_path / "other")) == 3
    assert logic.allPointsNodes() == [] and logic.exportPoints(tmp_path / "none.json") is None


def test_a_run_with_refined_poses_shows_their_table_and_loads_the_refined_scan(modules, tmp_path):
    """Refine poses on: the Logic passes the mode to the engine, the run's per-view corrections
    become a table node (a row per view, the summary's numbers) and the refined scan can be
    made the scan (its X-rays loaded, its matrices the refined ones)."""
    reconstruction, _ = modules
    simulate_phantom_scan(tmp_path / "scan", "spine", 24, 8.0, 6, 40, 8.0)
    logic = reconstruction.IXGSReconstructionLogic(runner=SubprocessJob)
    parameters = logic.getParameterNode()
    parameters.scanFolder = tmp_path / "scan"
    logic.loadScan(parameters.scanFolder)
    parameters.outputFolder, parameters.preset, parameters.device, parameters.iterations = (
        tmp_path / "run",
        "fast",
        "cpu",
        40,
    )
    parameters.refinePoses = "on"
    run = Recorder()
    run.start(logic.reconstruct, extraArguments=ENGINE_OPTIONS).wait(300)
    assert run.finished[0], run.finished[1]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    table = slicer.mrmlScene.GetFirstNodeByName(importlib.import_module("IXGSReconstructionLib.logic").POSES_TABLE_NAME)
    assert table is not None and table.GetNumberOfRows() == 6
    assert table.GetColumnName(1) == "Rotation (deg)"
    assert float(table.GetCellText(2, 1)) == pytest.approx(summary["poses"]["views"][2]["rotation_deg"])
    assert float(table.GetCellText(5, 3)) == pytest.approx(summary["poses"]["views"][5]["reprojection_px"])
    assert len(logic.loadRefinedScan(tmp_path / "run")) == 6
    assert pathlib.Path(parameters.scanFolder) == tmp_path / "run" / "refined_scan"
    refined = read_scan(tmp_path / "run" / "refined_scan").matrices
    assert not np.allclose(refined, read_scan(tmp_path / "scan").matrices)
    parameters.refinePoses = "off"
    assert "--refine-poses" in logic.reconstructionArguments(
        tmp_path / "scan", None, tmp_path / "again", "fast", "cpu", refinePoses="off"
    )
    assert logic.posesTable(tmp_path / "run") is table  # shown again: the same node
    with pytest.raises(RuntimeError, match="no refined poses"):
        logic.loadRefinedScan(tmp_path / "scan")


def test_a_failed_job_reports_the_engines_one_line_error(modules, tmp_path):
    reconstruction, _ = modules
    simulate_phantom_scan(tmp_path / "scan", "spine", 24, 8.0, 3, 40, 8.0)
    logic = reconstruction.IXGSReconstructionLogic(runner=SubprocessJob)
    parameters = logic.getParameterNode()
    parameters.scanFolder, parameters.device = tmp_path / "scan", "cpu"
    parameters.outputFolder = tmp_path / "run"
    parameters.resume = True  # nothing to resume
    run = Recorder()
    run.start(logic.reconstruct).wait(300)
    assert run.finished[0] is False
    assert 'the "Resume" option: no checkpoint in' in run.finished[1] and parameters.volume is None
    assert "--resume" not in run.finished[1]  # the engine names parameters, the module words them


def test_standardize_logic_trains_previews_and_applies_through_its_jobs(modules, tmp_path):
    from ixgs_engine.standardize.pairs import make_simulated_pairs, phantom_variant

    reconstruction, standardize = modules
    logic = standardize.IXGSStandardizeLogic(runner=SubprocessJob)
    parameters = logic.getParameterNode()
    make_simulated_pairs(tmp_path / "pairs", [("spine", phantom_variant(32, 0, 0.1))], 4, 0, 32, 8.0)
    parameters.pairsFolder, parameters.trainModelFile, parameters.trainSteps = tmp_path / "pairs", tmp_path / "m.pt", 2
    train = Recorder()
    train.start(logic.trainModel).wait(300)
    assert train.finished[0], train.finished[1]
    assert pathlib.Path(parameters.modelFile) == tmp_path / "m.pt"

    simulate_phantom_scan(tmp_path / "scan", "spine", 24, 8.0, 3, 32, 8.0)
    parameters.scanFolder, parameters.previewView = tmp_path / "scan", 2
    preview = Recorder()
    preview.start(logic.preview).wait(300)
    assert preview.finished[0], preview.finished[1]
    raw = slicer.mrmlScene.GetFirstNodeByName(standardize.RAW_NODE_NAME)
    standardized = slicer.mrmlScene.GetFirstNodeByName(standardize.STANDARDIZED_NODE_NAME)
    assert raw.GetImageData().GetDimensions() == standardized.GetImageData().GetDimensions() == (32, 32, 1)
    parameters.previewView = 7
    with pytest.raises(ValueError, match="X-rays 0 to 2"):
        logic.preview()

    parameters.outputScanFolder = tmp_path / "standardized"
    applied = Recorder()
    applied.start(logic.applyModel).wait(300)
    assert applied.finished[0], applied.finished[1]
    source, result = read_scan(tmp_path / "scan"), read_scan(tmp_path / "standardized")
    np.testing.assert_allclose(result.matrices, source.matrices)
    # The standardized scan becomes IXGS Reconstruction's input.
    assert (
        pathlib.Path(reconstruction.IXGSReconstructionLogic().getParameterNode().scanFolder)
        == tmp_path / "standardized"
    )


def test_the_runner_is_the_engine_command_line(modules, tmp_path):
    """The Logic passes its runner the engine's command line and environment unchanged."""
    reconstruction, _ = modules
    seen = {}

    class Capture:
        def __init__(self, arguments, environment, on_progress, on_log, on_finished) -> None:
            seen.update(arguments=list(arguments), environment=environment)

        def start(self) -> None:
            pass

        def is_running(self) -> bool:
            return False

    simulate_phantom_scan(tmp_path / "scan", "spine", 24, 8.0, 3, 40, 8.0)
    logic = reconstruction.IXGSReconstructionLogic(runner=Capture)
    parameters = logic.getParameterNode()
    parameters.scanFolder, parameters.device, parameters.outputFolder = tmp_path / "scan", "cpu", tmp_path / "run"
    logic.reconstruct()
    assert seen["arguments"][:2] == ["reconstruct", str(tmp_path / "scan")]
    assert engine_process.cancel_file_in(seen["arguments"]) == tmp_path / "run" / engine_process.CANCEL_FILE_NAME
    assert seen["environment"][engine_process.PROGRESS_FORMAT_VARIABLE] == "jsonl"
