"""Run independent tasks (experiment rows, batch cases) locally one after another, or spread
over a Ray or Dask cluster, and keep their results in one JSON file that is rewritten
atomically after every finished task, so an interrupted run resumes where it stopped.

Ray and Dask are optional: they are imported only when a cluster address is given. With a
CUDA device each Ray task asks for one GPU; Dask tasks ask for the resource ``GPU=1``, so
each Dask worker must declare that resource (one worker per GPU).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ixgs_engine.errors import IXGSError
from ixgs_engine.io import atomic_output

RAY_HINT = "Ray is not installed; pip install 'ray[default]' (or run without `cluster`)"
DASK_HINT = "Dask is not installed; pip install 'dask[distributed]' (or run without `cluster`)"


def run_tasks(
    function: Callable[[Any], Any], tasks: dict[str, Any], cluster: str | None = None, use_gpu: bool = False
) -> Iterator[tuple[str, Any]]:
    """``(key, function(task))`` for every task, in the order they finish. ``cluster``: None
    (here, one after another), ``ray://host:port`` or ``ray:auto`` (a Ray cluster), or
    ``tcp://host:port`` (a Dask scheduler; also ``tls://``, or ``inproc://`` for an in-process
    LocalCluster)."""
    if cluster is None:
        for key, task in tasks.items():
            yield key, function(task)
    elif cluster.startswith("ray:"):
        yield from _run_ray(function, tasks, cluster, use_gpu)
    elif cluster.startswith(("tcp://", "tls://", "inproc://")):
        yield from _run_dask(function, tasks, cluster, use_gpu)
    else:
        raise IXGSError(
            f"`cluster` must be ray://HOST:PORT, ray:auto or tcp://HOST:PORT (a Dask scheduler), got {cluster!r}"
        )


def _run_ray(function: Callable, tasks: dict[str, Any], cluster: str, use_gpu: bool) -> Iterator[tuple[str, Any]]:
    try:
        import ray
    except ImportError:
        raise IXGSError(RAY_HINT) from None
    ray.init(address="auto" if cluster == "ray:auto" else cluster, ignore_reinit_error=True)
    remote = ray.remote(num_gpus=1 if use_gpu else 0)(function)
    pending = {remote.remote(task): key for key, task in tasks.items()}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        yield pending.pop(done[0]), ray.get(done[0])


def _run_dask(function: Callable, tasks: dict[str, Any], cluster: str, use_gpu: bool) -> Iterator[tuple[str, Any]]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise IXGSError(DASK_HINT) from None
    with Client(cluster) as client:
        resources = {"GPU": 1} if use_gpu else None
        futures = {client.submit(function, task, pure=False, resources=resources): key for key, task in tasks.items()}
        for future in as_completed(futures):
            yield futures[future], future.result()


class ResultStore:
    """A JSON file ``{"kind", "settings", "rows": {key: result}}``. Opening an existing file
    with different settings raises IXGSError: its rows would not be comparable."""

    def __init__(self, path: str | Path, kind: str, settings: dict) -> None:
        self.path = Path(path)
        self.kind = kind
        self.settings = json.loads(json.dumps(settings))  # as it reads back: tuples become lists
        self.rows: dict[str, dict] = {}
        if self.path.exists():
            try:
                stored = json.loads(self.path.read_text())
            except json.JSONDecodeError as error:
                raise IXGSError(f"{self.path} is not valid JSON ({error.msg}); move it away to start over") from None
            if stored.get("kind") != kind or stored.get("settings") != self.settings:
                raise IXGSError(
                    f"{self.path} holds results of other settings ({stored.get('kind')}); "
                    "use another output folder, or the same options as before to resume"
                )
            self.rows = stored.get("rows", {})

    def add(self, key: str, result: dict) -> None:
        """Record one finished task and rewrite the file atomically."""
        self.rows[key] = result
        with atomic_output(self.path) as temp:
            temp.write_text(json.dumps({"kind": self.kind, "settings": self.settings, "rows": self.rows}, indent=1))
