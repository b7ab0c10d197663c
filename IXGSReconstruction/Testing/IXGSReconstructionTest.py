"""IXGS Reconstruction's self-tests, run by Slicer's Reload and Test and by ctest (the module
file's ``IXGSReconstructionTest`` is this class, loaded by ``scripted_module.self_tests``)."""

import json
import logging
import pathlib
import tempfile
import time

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from IXGSCommonLib import dependencies, engine_process, mrml_bridge
from IXGSReconstructionLib.logic import ENGINE_PARENT, IXGSReconstructionLogic


class IXGSReconstructionTest(ScriptedLoadableModuleTest):
    """Self-tests. ``test_commands`` needs nothing beyond Slicer and always runs; where the
    engine's dependencies are installed, a tiny simulated scan's points round trip and its
    reconstruction through the Logic's default runner (the QProcess of the Reconstruct button),
    checking the loaded volume's geometry, realignment and hardening."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_commands()
        if dependencies.missing_requirements(dependencies.engine_requirements(ENGINE_PARENT)) or not (
            dependencies.is_importable("torch")
        ):
            self.delayDisplay("The engine's dependencies are not installed: the engine tests are skipped")
            return
        self.setUp()
        self.test_points_round_trip()
        self.setUp()
        self.test_reconstruct_tiny_scan()

    def test_commands(self):
        """The Logic's command lines are the engine's, with the run's cancel file (no engine
        process, nothing beyond Slicer's own packages)."""
        arguments = engine_process.reconstruct_arguments("scan", "run", "fast", "cpu", 10, resume=True)
        self.assertEqual(arguments[:2], ["reconstruct", "scan"])
        self.assertIn("--resume", arguments)
        self.assertEqual(
            engine_process.cancel_file_in(arguments), pathlib.Path("run") / engine_process.CANCEL_FILE_NAME
        )
        self.assertEqual(IXGSReconstructionLogic().getParameterNode().preset, "auto")

    def simulateScan(self, folder):
        from ixgs_engine.simulate import simulate_phantom_scan

        return simulate_phantom_scan(folder, "spine", 24, 8.0, 6, 40, 8.0)

    def test_points_round_trip(self):
        self.delayDisplay("Points placed on an X-ray become POINTS_JSON pixels")
        logic = IXGSReconstructionLogic()
        folder = pathlib.Path(tempfile.mkdtemp(prefix="ixgs-points-"))
        self.simulateScan(folder / "scan")
        nodes = logic.loadScan(folder / "scan")
        self.assertEqual(len(nodes), 6)
        points = {2: [{"u": 10.5, "v": 20.25, "bead": 3}], 4: [{"u": 1.0, "v": 2.0, "bead": None}]}
        (folder / "in.json").write_text(json.dumps({"views": {str(k): v for k, v in points.items()}}))
        logic.loadPoints(folder / "in.json")
        path = logic.exportPoints(folder / "out.json")
        written = json.loads(pathlib.Path(path).read_text())["views"]
        self.assertEqual(sorted(written), ["2", "4"])
        self.assertAlmostEqual(written["2"][0]["u"], 10.5, places=6)
        self.assertAlmostEqual(written["2"][0]["v"], 20.25, places=6)
        self.assertEqual(written["2"][0]["bead"], 3)
        self.assertNotIn("bead", written["4"][0])

    def test_reconstruct_tiny_scan(self):
        import numpy as np

        from ixgs_engine.io.volumes import read_volume

        self.delayDisplay("Reconstructing a simulated 6-view scan for a few iterations")
        logic = IXGSReconstructionLogic()
        folder = pathlib.Path(tempfile.mkdtemp(prefix="ixgs-selftest-"))
        truth = self.simulateScan(folder / "scan")
        logic.loadScan(folder / "scan")
        roiNode = logic.getParameterNode().roi
        self.assertIsNotNone(roiNode)
        parameters = logic.getParameterNode()
        parameters.outputFolder, parameters.preset, parameters.device, parameters.iterations = (
            folder / "run",
            "fast",
            "cpu",
            10,
        )
        outcome = {}
        job = logic.reconstruct(
            onLog=logging.info,
            onFinished=lambda ok, message: outcome.update(ok=ok, message=message),
            extraArguments=["--gaussians", "400", "--voxel-size", "8"],
        )
        deadline = time.time() + 600
        while "ok" not in outcome and time.time() < deadline:
            slicer.app.processEvents()
            qt.QThread.msleep(50)
        self.assertTrue(outcome.get("ok"), outcome.get("message"))
        self.assertIsNotNone(job.reader.last_progress)
        self.assertEqual(job.reader.last_progress.done, job.reader.last_progress.total)
        self.assertIsNotNone(parameters.volume)

        node = logic.loadVolume(folder / "run" / "volume.nrrd", 0.02)
        written = read_volume(folder / "run" / "volume.nrrd")
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ written.index_to_world_matrix()
        np.testing.assert_allclose(mrml_bridge.numpy_matrix(matrix), expected, atol=1e-6)
        # The reconstruction box covers the phantom's centre.
        center = mrml_bridge.roi_from_node(roiNode).center
        self.assertLess(float(np.linalg.norm(center - truth.center())), 30.0)
        self.assertTrue(node.GetDisplayNode().GetApplyThreshold())

        transform = logic.realignFromPrincipalAxes(node, float(np.percentile(written.array, 90)))
        self.assertEqual(node.GetTransformNodeID(), transform.GetID())
        mrml_bridge.harden_transform(node)
        self.assertIsNone(node.GetTransformNodeID())
        self.delayDisplay("Test passed")
