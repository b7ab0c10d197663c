"""Classical reconstruction: the algorithms IXGS starts from, ends with and is measured against,
in one family (as TIGRE's ``algorithms``), apart from the projector primitives they are built of
(``projector``: the Joseph projector and its adjoint, RTK's geometry and forward projector).

Every iterative algorithm takes ``(projections, matrices, grid, iterations, **options)`` and
returns a :class:`~ixgs_engine.volume.Volume` on ``grid``: ``projections`` are line integrals
(N, H, W), ``matrices`` the views' 3x4 projection matrices (world mm), ``grid`` the volume's
voxels. The analytic one (FDK) takes the same less ``iterations``.

- ``sart``: SART with our Joseph projector, any geometry, optionally with a coarse shell
  solved around the volume (a truncated patient);
- ``tv``: the total variation's gradient and the TV descent steps ASD-POCS takes between passes;
- ``asd_pocs``: SART passes each followed by TV steps (Sidky & Pan 2008);
- ``rtk``: RTK's SART, TV-regularized conjugate gradient and FDK (itk-rtk, optional);
- ``ceiling``: each voxel's upper bound from the views' line integrals (non-negative attenuation),
  the box constraint SART and ASD-POCS take as ``ceiling``.
"""
