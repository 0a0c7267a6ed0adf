"""``lamina job``: follow long operations and find stuck ones."""

from __future__ import annotations

import click

from lamina.cli.context import Context
from lamina.cli.output import ProgressBar, emit_json, show_job, table


@click.group("job")
def job() -> None:
    """Persisted jobs and their step logs."""


@job.command("show")
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Wait until the job finishes, with a progress bar.")
@click.option("--timeout", type=float, help="Give up waiting after this many seconds.")
@click.pass_obj
def show(obj: Context, job_id: str, wait: bool, timeout: float | None) -> None:
    """Show a job and its steps."""
    if wait:
        bar = ProgressBar(f"job {job_id[:8]}")
        data = obj.client.wait_job(job_id, timeout=timeout, on_progress=bar)
        bar.done()
    else:
        data = obj.client.job(job_id)
    emit_json(data) if obj.json else show_job(data)
    if wait and data["status"] != "succeeded":
        raise SystemExit(1)


@job.command("list")
@click.option("--status")
@click.option("--target", help="Only jobs on this resource id.")
@click.option("--stuck", is_flag=True, help="Unfinished jobs near or past their deadline.")
@click.pass_obj
def list_(obj: Context, status: str | None, target: str | None, stuck: bool) -> None:
    """List recent jobs."""
    jobs = obj.client.jobs(status=status, target=target, stuck=stuck)
    if obj.json:
        emit_json(jobs)
        return
    table(jobs, ["id", "kind", "status", "progress", "target_id", "deadline", "error"])
    if stuck:
        for data in jobs:
            click.echo(f"\n{data['id']} ({data['kind']}):")
            table(
                data.get("steps", []),
                ["seq", "name", "status", "attempts", "started_at", "message"],
            )


def register(cli: click.Group) -> None:
    cli.add_command(job)
