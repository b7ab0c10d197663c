"""``python -m ixgs_engine`` runs the ``ixgs`` command line."""

from ixgs_engine.cli import main

raise SystemExit(main())
