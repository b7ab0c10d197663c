"""IXGS Standardize's self-tests, run by Slicer's Reload and Test and by ctest (the module
file's ``IXGSStandardizeTest`` is this class, loaded by ``scripted_module.self_tests``)."""

import pathlib
import tempfile

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from IXGSCommonLib import dependencies, engine_process
from IXGSCommonLib.engine_jobs import SubprocessJob


def _module():
    """The module file's namespace (its Logic and node names), as Slicer loaded it."""
    import IXGSStandardize

    return IXGSStandardize


class IXGSStandardizeTest(ScriptedLoadableModuleTest):
    """Self-tests. ``test_commands`` needs nothing but Slicer and always runs; where the engine's
    dependencies (torch, ...) are installed, ``test_train_preview_and_apply`` makes a few
    simulated pairs, trains a tiny model and previews and applies it through the Logic's jobs."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_commands()
        if dependencies.is_importable("torch"):
            self.setUp()
            self.test_train_preview_and_apply()
        else:
            self.delayDisplay("The engine's dependencies are not installed: the training test is skipped")

    def test_commands(self):
        """The Logic's command lines are the engine's (no engine process, no torch)."""
        logic = _module().IXGSStandardizeLogic()
        parameters = logic.getParameterNode()
        self.assertEqual(parameters.trainConfig, "light")
        arguments = engine_process.standardize_preview_arguments("m.pt", "scan", 2, "out.tif")
        self.assertEqual(arguments[:2], ["standardize", "preview"])
        self.assertEqual(arguments[arguments.index("--view") + 1], "2")

    def runAndWait(self, start):
        outcome = {}
        job = start(onFinished=lambda ok, message: outcome.update(ok=ok, message=message))
        job.wait()
        self.assertTrue(outcome.get("ok"), outcome.get("message"))

    def test_train_preview_and_apply(self):
        import numpy as np

        from ixgs_engine.io.scan import read_scan
        from ixgs_engine.simulate import simulate_phantom_scan
        from ixgs_engine.standardize.pairs import make_simulated_pairs, phantom_variant

        self.delayDisplay("Training a tiny standardization model, previewing and applying it")
        folder = pathlib.Path(tempfile.mkdtemp(prefix="ixgs-standardize-"))
        logic = _module().IXGSStandardizeLogic(runner=SubprocessJob)
        make_simulated_pairs(folder / "pairs", [("spine", phantom_variant(32, 0, 0.1))], 4, 0, 32, 8.0)
        parameters = logic.getParameterNode()
        parameters.pairsFolder, parameters.trainModelFile, parameters.trainSteps = folder / "pairs", folder / "m.pt", 2
        self.runAndWait(logic.trainModel)
        self.assertEqual(pathlib.Path(parameters.modelFile), folder / "m.pt")
        simulate_phantom_scan(folder / "scan", "spine", 24, 8.0, 3, 32, 8.0)
        parameters.scanFolder, parameters.previewView = folder / "scan", 1
        self.runAndWait(logic.preview)
        raw, standardized = (
            slicer.mrmlScene.GetFirstNodeByName(n) for n in (_module().RAW_NODE_NAME, _module().STANDARDIZED_NODE_NAME)
        )
        self.assertIsNotNone(raw)
        self.assertEqual(raw.GetImageData().GetDimensions(), standardized.GetImageData().GetDimensions())
        parameters.outputScanFolder = folder / "standardized"
        self.runAndWait(logic.applyModel)
        source, result = read_scan(folder / "scan"), read_scan(folder / "standardized")
        self.assertEqual(len(result.views), 3)
        np.testing.assert_allclose(result.matrices, source.matrices)
        self.delayDisplay("Test passed")
