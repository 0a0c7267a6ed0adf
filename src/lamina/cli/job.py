"""``lamina job``: follow long operations and find stuck ones."""

from __future__ import annotations

from typing import Any

import click

from lamina.cli.context import Context
from lamina.cli.output import ProgressBar, emit_json, show_job, table

#: A job's statuses and kinds as the manager has them (``lamina.jobs.models.JOB_STATUSES``
#: and the kinds ``lamina.manager`` registers: a unit test holds these to them).
STATUSES = ("queued", "running", "succeeded", "failed", "rolled_back")
KINDS = (
    "appliance.capture",
    "appliance.install",
    "checkpoint.create",
    "checkpoint.delete",
    "checkpoint.restore",
    "forward.create",
    "forward.delete",
    "host.evacuate",
    "instance.create",
    "instance.delete",
    "instance.migrate",
    "instance.pause",
    "instance.reboot",
    "instance.resume",
    "instance.start",
    "instance.stop",
    "network.delete",
    "network.sync",
    "snapshot.create",
    "snapshot.delete",
    "volume.attach",
    "volume.create",
    "volume.delete",
    "volume.detach",
    "volume.extend",
)
COLUMNS = ["created_at", "kind", "target", "status", "progress", "error"]


@click.group("job")
def job() -> None:
    """Long operations and their step logs.

    What each job (create, deploy, attach, install, ...) did, is doing, or failed at.

    \b
    Examples:
      lamina job list --limit 5
      lamina job list --target web --status failed
    """


@job.command("show")
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Wait until the job finishes, with a progress bar.")
@click.option(
    "--timeout", type=click.FloatRange(min=0), help="Give up waiting after this many seconds."
)
@click.pass_obj
def show(obj: Context, job_id: str, wait: bool, timeout: float | None) -> None:
    """Show a job (by id, as job list --json gives it) and its steps; with --wait, follow
    it until it ends (exit 1 unless it succeeded). --json prints it, for scripts.

    \b
    Examples:
      lamina job show 6f1c2a9e-...
      lamina job show 6f1c2a9e-... --wait --timeout 600
    """
    if wait:
        bar = ProgressBar(f"job {job_id[:8]}")
        data = obj.client.wait_job(job_id, timeout=timeout, on_progress=bar)
        bar.done()
    else:
        data = obj.client.job(job_id)
    emit_json(data) if obj.json else show_job(data)
    if wait and data["status"] != "succeeded":
        raise SystemExit(1)


def _row(data: dict[str, Any]) -> dict[str, Any]:
    target = data.get("target_name") or data.get("target_id")
    if target and data.get("target_type"):
        target = f"{data['target_type']} {target}"
    progress = data.get("progress")
    return {**data, "target": target, "progress": f"{progress * 100:.0f}%" if progress else None}


@job.command("list")
@click.option("--status", type=click.Choice(STATUSES), help="Only jobs in this status.")
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    metavar="KIND",
    help="Only jobs of this kind: " + ", ".join(KINDS) + ".",
)
@click.option(
    "--target",
    metavar="NAME_OR_ID",
    help="Only jobs about this instance, volume, network, appliance or host (name or id).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="At most this many jobs, the most recent first.",
)
@click.option("--stuck", is_flag=True, help="Unfinished jobs near or past their deadline.")
@click.pass_obj
def list_(
    obj: Context,
    status: str | None,
    kind: str | None,
    target: str | None,
    limit: int,
    stuck: bool,
) -> None:
    """List recent jobs, the most recent first: when each was made, its kind, what it is
    about (by name), its status and error. job show ID gives its steps; --json prints the
    jobs with their ids and target ids, for scripts.

    \b
    Examples:
      lamina job list --target web1 --status failed
      lamina job list --kind appliance.install --limit 5 --json
    """
    jobs = obj.client.jobs(status=status, kind=kind, target=target, stuck=stuck, limit=limit)
    if obj.json:
        emit_json(jobs)
        return
    table([_row(j) for j in jobs], COLUMNS)
    if stuck:
        for data in jobs:
            click.echo(f"\n{data['id']} ({data['kind']}):")
            table(
                data.get("steps", []),
                ["seq", "name", "status", "attempts", "started_at", "message"],
            )


def register(cli: click.Group) -> None:
    cli.add_command(job)
