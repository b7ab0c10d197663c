"""What the IXGS Slicer modules share, so that neither imports the other: engine processes and
their output (``engine_process``), job runners (``engine_jobs``; ``qt_process`` for the GUI),
installing the engine's dependencies from its metadata (``dependencies``), the MRML bridge (VTK
and MRML classes only, tested with slicer-core) and the template's Widget and Logic bases
(``scripted_module``, which needs Slicer's GUI). Installed beside the modules' files; in the
source tree each module puts this folder's parent on the path."""
