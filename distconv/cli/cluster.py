"""``distconv cluster info``: what a ``--cluster`` spec gives (workers, threads, memory, GPUs)."""

from __future__ import annotations

import json

import click
from dask.utils import format_bytes

from distconv.cli._common import cluster_options


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


@click.group("cluster")
def cluster_group() -> None:
    """Inspect the cluster a --cluster spec names."""


@cluster_group.command("info")
@cluster_options(rmm=True)
@click.option(
    "--wait",
    "wait_workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Wait for this many workers first (a cluster file's jobs start later).",
)
@click.option(
    "--check",
    "check_paths",
    multiple=True,
    metavar="PATH",
    help="Say whether each worker sees this path or URL as this machine does (repeatable).",
)
@click.option(
    "--storage-option",
    "storage_option",
    multiple=True,
    metavar="KEY=VALUE",
    help="fsspec option for the --check URLs, e.g. endpoint_url=http://host:9000.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info_command(
    cluster_spec: str | None,
    workers: int | None,
    threads_per_worker: int | None,
    rmm_pool_size: str | None,
    wait_workers: int,
    check_paths: tuple[str, ...],
    storage_option: tuple[str, ...],
    as_json: bool,
) -> None:
    """Start or connect to the cluster SPEC names and list its workers: threads, memory,
    resources and GPUs. For a cluster file, also the job script dask-jobqueue submits.

    \b
    Examples:
      distconv cluster info                                  # the local cluster (auto)
      distconv cluster info --cluster tcp://10.0.0.5:8786
      distconv cluster info --cluster slurm.yaml             # job script + scaling
      distconv cluster info --cluster tcp://10.0.0.5:8786 --check /data/in.zarr --check s3://b/out
    """
    from distconv.clusters import cluster, describe, parse_spec
    from distconv.clusters.auto import local_threshold

    parsed = parse_spec(cluster_spec)
    auto_note = None
    if parsed.kind == "auto":  # no job to size: show the local cluster large jobs get
        auto_note = (
            f"auto: jobs under {format_bytes(local_threshold())} of input and output run on "
            "threads in this process; larger ones on this local cluster"
        )
        parsed = parse_spec("local")
        cluster_spec = "local"
    if parsed.kind == "threads":
        import dask.system

        text = {"kind": "threads", "threads": int(dask.system.CPU_COUNT)}
        click.echo(
            json.dumps(text)
            if as_json
            else f"no cluster: Dask's threaded scheduler in this process, {text['threads']} threads"
        )
        return
    with cluster(
        cluster_spec,
        workers=workers,
        threads_per_worker=threads_per_worker,
        rmm_pool_size=rmm_pool_size,
        quiet=True,
    ) as client:
        if wait_workers:
            client.wait_for_workers(wait_workers)
        description = {"kind": parsed.kind, **describe(client)}
        if check_paths:
            description["check"] = _check(client, check_paths, storage_option)
        if auto_note:
            description["auto"] = auto_note
        if parsed.kind == "jobqueue":
            from distconv.clusters.jobqueue import load_spec

            spec = load_spec(parsed.path)
            description["system"] = spec.system
            description["bounds"] = spec.bounds
            description["job_script"] = client.cluster.job_script()
    if as_json:
        click.echo(json.dumps(description, indent=2))
        return
    if auto_note:
        click.echo(auto_note)
    click.echo(f"{'kind:':12}{description['kind']}")
    click.echo(f"{'scheduler:':12}{description['scheduler']}")
    click.echo(f"{'dashboard:':12}{description['dashboard']}")
    click.echo(
        f"{'workers:':12}{len(description['workers'])} "
        f"({description['total_threads']} threads, "
        f"{_gib(description['total_memory'])} memory, {description['gpus']} GPUs)"
    )
    for worker in description["workers"]:
        resources = ",".join(f"{k}={v:g}" for k, v in worker["resources"].items())
        gpu = worker["gpu"] or ""
        if worker["gpu_memory"]:
            gpu += f" ({_gib(worker['gpu_memory'])})"
        click.echo(
            f"  {worker['address']}  {worker['threads']} threads  "
            f"{_gib(worker['memory_limit'])}"
            + (f"  resources {resources}" if resources else "")
            + (f"  gpu {gpu}" if gpu else "")
        )
    if parsed.kind == "jobqueue":
        click.echo(f"{'system:':12}{description['system']} ({description['bounds']})")
        click.echo("job script:")
        click.echo(description["job_script"].rstrip())
    for path, answers in description.get("check", {}).items():
        seeing = sum(reason is None for reason in answers.values())
        click.echo(f"check {path}: {seeing} of {len(answers)} workers see it")
        for address, reason in answers.items():
            click.echo(f"  {address}  " + ("sees it" if reason is None else f"cannot: {reason}"))


def _check(client, paths, storage_option) -> dict[str, dict[str, str | None]]:
    """Path → worker address → None (sees it as this machine does) or why not."""
    from distconv.save.sight import path_probes, see_on_workers
    from distconv.stores import Location, parse_storage_options

    options = parse_storage_options(storage_option) if storage_option else None
    found = {}
    for path in paths:
        location = Location.parse(path, options)
        probes, token = path_probes(location)
        try:
            answers = see_on_workers(client, probes) if probes else {}
        finally:
            if token is not None:
                probes[0].location.delete(token)
        found[location.shown] = {
            address: reasons[0].split(": ", 1)[1] if reasons else None
            for address, reasons in answers.items()
        }
    return found
