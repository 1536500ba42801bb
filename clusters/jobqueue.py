"""A YAML file spec: a dask-jobqueue cluster on SLURM, PBS, SGE or LSF.

The file names the batch system, the keyword arguments of its dask-jobqueue cluster class (the
same names dask-jobqueue documents: ``cores``, ``memory``, ``processes``, ``queue``,
``walltime``, ``account``, ``job_extra_directives``, ``worker_extra_args``, ...) and either a
fixed size (``scale``) or adaptive bounds (``adapt``)::

    system: slurm              # slurm | pbs | sge | lsf
    cluster:                   # dask_jobqueue.SLURMCluster(**cluster)
      cores: 16
      memory: 64GB
      processes: 4             # 4 workers of 4 threads per job
      walltime: "02:00:00"
      queue: compute
      account: proj42
    scale:
      jobs: 8                  # or: workers / cores / memory
    # adapt:                   # instead of scale
    #   minimum_jobs: 1
    #   maximum_jobs: 20

Values not given fall back to dask-jobqueue's own config (``jobqueue.slurm.*``), as with
``SLURMCluster()`` itself. GPU nodes declare ``worker_extra_args: ["--resources", "GPU=1"]`` so
GPU-engine work is routed to them.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

from distconv.errors import DistconvError

SYSTEMS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster"}
TOP_KEYS = ("system", "cluster", "scale", "adapt")
# JobQueueCluster.scale(n, jobs, memory, cores), with n spelled out.
SCALE_KEYS = {"jobs": "jobs", "workers": "n", "cores": "cores", "memory": "memory"}
ADAPT_KEYS = (
    "minimum_jobs",
    "maximum_jobs",
    "minimum",
    "maximum",
    "minimum_cores",
    "maximum_cores",
    "minimum_memory",
    "maximum_memory",
    "interval",
    "wait_count",
    "target_duration",
)
INSTALL_HINT = "pip install 'distconv[jobqueue]'"


@dataclass(frozen=True)
class JobqueueSpec:
    """A validated jobqueue YAML file."""

    path: str
    system: str
    cluster: dict[str, Any] = field(default_factory=dict)
    scale: dict[str, Any] | None = None
    adapt: dict[str, Any] | None = None

    @property
    def bounds(self) -> str:
        """``scale jobs=8`` or ``adapt minimum_jobs=1 maximum_jobs=20``, for messages."""
        how, values = ("scale", self.scale) if self.scale is not None else ("adapt", self.adapt)
        return f"{how} " + " ".join(f"{k}={v}" for k, v in (values or {}).items())


def is_yaml_path(text: str) -> bool:
    """Does a spec name a YAML file (by its extension)?"""
    return text.lower().endswith((".yaml", ".yml"))


def load_spec(path: str) -> JobqueueSpec:
    """Read and check a jobqueue YAML file; every problem is a one-line :class:`DistconvError`."""
    if importlib.util.find_spec("yaml") is None:
        raise DistconvError(f"a YAML cluster file needs PyYAML ({INSTALL_HINT})")
    import yaml

    if not os.path.isfile(path):
        raise DistconvError(f"cluster file {path}: no such file")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise DistconvError(f"cluster file {path} is not valid YAML{line}") from None
    if not isinstance(data, dict):
        raise DistconvError(
            f"cluster file {path} must be a mapping with keys {', '.join(TOP_KEYS)}"
        )
    _reject_unknown(path, "key(s)", data, TOP_KEYS)
    system = str(data.get("system", "")).lower()
    if system not in SYSTEMS:
        raise DistconvError(
            f"cluster file {path}: system must be one of "
            f"{', '.join(SYSTEMS)}, got {data.get('system')!r}"
        )
    cluster = data.get("cluster") or {}
    if not isinstance(cluster, dict):
        raise DistconvError(
            f"cluster file {path}: 'cluster' must be a mapping of "
            f"dask_jobqueue.{SYSTEMS[system]} arguments"
        )
    scale, adapt = data.get("scale"), data.get("adapt")
    if (scale is None) == (adapt is None):
        raise DistconvError(
            f"cluster file {path}: give exactly one of 'scale' (a fixed size) or 'adapt' (bounds)"
        )
    if scale is not None:
        _check_keys(path, "scale", scale, tuple(SCALE_KEYS))
        if len(scale) != 1:
            raise DistconvError(
                f"cluster file {path}: 'scale' takes one of {', '.join(SCALE_KEYS)}"
            )
    if adapt is not None:
        _check_keys(path, "adapt", adapt, ADAPT_KEYS)
    return JobqueueSpec(os.path.abspath(path), system, dict(cluster), scale, adapt)


def _check_keys(path: str, name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, dict) or not value:
        raise DistconvError(
            f"cluster file {path}: '{name}' must be a mapping with {' / '.join(allowed)}"
        )
    _reject_unknown(path, f"{name} key(s)", value, allowed)


def _reject_unknown(path: str, what: str, mapping: dict, allowed: tuple[str, ...]) -> None:
    """Raise when ``mapping`` has keys outside ``allowed`` (``what`` names them, as "key(s)")."""
    unknown = sorted(set(map(str, mapping)) - set(allowed))
    if unknown:
        raise DistconvError(
            f"cluster file {path}: unknown {what} {', '.join(unknown)}; "
            f"allowed: {', '.join(allowed)}"
        )


def build_cluster(spec: JobqueueSpec, worker_logs: bool = False):
    """The dask-jobqueue cluster a spec describes, not yet scaled (no job submitted).

    Its scheduler runs in this process and logs as a local cluster's does
    (:func:`distconv.clusters.local.worker_log_level`: errors only with ``worker_logs``, the
    CLI's ``--debug``): a lost worker's "Couldn't gather keys" would otherwise be a line
    beside the job's own one-line error. The file's ``silence_logs`` wins.

    Raises
    ------
    DistconvError
        When dask-jobqueue is missing or rejects an argument.
    """
    if importlib.util.find_spec("dask_jobqueue") is None:
        raise DistconvError(f"cluster file {spec.path} needs dask-jobqueue ({INSTALL_HINT})")
    import dask_jobqueue

    cls = getattr(dask_jobqueue, SYSTEMS[spec.system])
    from distconv.clusters.local import worker_log_level

    kwargs = {"silence_logs": worker_log_level(worker_logs), **spec.cluster}
    try:
        with warnings.catch_warnings():
            # The scheduler's dashboard takes another port when 8787 is taken (another
            # cluster, another user's job on a login node); the warning would be a second line
            # under a command's one-line result or error.
            warnings.filterwarnings("ignore", "Port .* is already in use", UserWarning)
            return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        message = " ".join(str(exc).split())
        raise DistconvError(
            f"cluster file {spec.path}: dask_jobqueue.{cls.__name__} rejects "
            f"the 'cluster' arguments ({message})"
        ) from None


def apply_bounds(cluster, spec: JobqueueSpec) -> None:
    """Submit jobs: ``cluster.scale(...)`` or ``cluster.adapt(...)`` as the file says."""
    if spec.scale is not None:
        cluster.scale(**{SCALE_KEYS[k]: v for k, v in spec.scale.items()})
    else:
        cluster.adapt(**spec.adapt)


def jobqueue_cluster(path: str, worker_logs: bool = False):
    """Build the cluster a YAML file describes and scale or adapt it; returns the cluster
    (``worker_logs``: its scheduler logs errors too, see :func:`build_cluster`)."""
    spec = load_spec(path)
    cluster = build_cluster(spec, worker_logs)
    try:
        apply_bounds(cluster, spec)
    except (TypeError, ValueError) as exc:
        cluster.close()
        raise DistconvError(
            f"cluster file {path}: {spec.bounds} rejected ({' '.join(str(exc).split())})"
        ) from None
    return cluster
