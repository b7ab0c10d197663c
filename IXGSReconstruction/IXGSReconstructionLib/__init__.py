"""Parts of the IXGS Slicer modules that work without the GUI: the engine processes and their
output, dependency installation, scan assembly, POINTS_JSON files, and the MRML bridge (VTK and
MRML classes only, tested with slicer-core). ``qt_process`` (engine jobs in a QProcess) and
``scripted_module`` (widget and logic bases both modules share) need Slicer's GUI."""
