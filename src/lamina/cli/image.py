"""``lamina image``: the image repository with VISOR's verbs (its tables 4.10 and 4.11):
brief, detail, head, get, add, update, delete, plus history."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import click

from lamina.cli.context import Context
from lamina.cli.output import ByteProgress, emit_json, record, table
from lamina.client import image_filename
from lamina.errors import Conflict, InvalidRequest

BRIEF = ["id", "name", "architecture", "access", "type", "format", "size", "store", "status"]
#: Query keys that are not filters but the listing's own parameters.
LISTING = ("sort", "dir", "limit", "marker")


def parse_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """``["name=Debian 12", "format=qcow2"]`` -> ``{"name": "Debian 12", "format": "qcow2"}``
    (names lower-cased; a value may hold ``=``)."""
    meta: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise click.BadParameter(
                f'{pair!r} is not key=value (e.g. name="Debian 12")', param_hint="METADATA"
            )
        meta[key] = value
    return meta


def parse_query(query: str | None) -> dict[str, str]:
    """An HTTP query string (``architecture=x86_64&format=iso``) as a dict; each key once."""
    if not query:
        return {}
    try:
        pairs = parse_qsl(query.lstrip("?"), keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise click.BadParameter(
            f"{query!r} is not an HTTP query string such as 'architecture=x86_64&format=iso'",
            param_hint="--query",
        ) from None
    found: dict[str, str] = {}
    for key, value in pairs:
        if key in found:
            raise click.BadParameter(f"{key!r} is given twice", param_hint="--query")
        found[key] = value
    return found


def listing_args(
    query: str | None, sort: str | None, direction: str | None
) -> tuple[dict[str, str], dict[str, Any]]:
    """(filters, listing parameters) from ``--query`` and the options; options win."""
    filters = parse_query(query)
    params: dict[str, Any] = {k: filters.pop(k) for k in LISTING if k in filters}
    if "limit" in params:
        if not params["limit"].isdigit():
            raise click.BadParameter("limit must be a number", param_hint="--query")
        params["limit"] = int(params["limit"])
    if sort:
        params["sort"] = sort
    if direction:
        params["dir"] = direction
    return filters, params


def _query_options(command: Any) -> Any:
    for option in (
        click.option(
            "--dir", "-d", "direction", type=click.Choice(["asc", "desc"]), help="Sort direction."
        ),
        click.option("--sort", "-s", help="Attribute to sort by (default created_at)."),
        click.option(
            "--query", "-q", help="HTTP query string to filter on, e.g. 'format=iso&access=public'."
        ),
    ):
        command = option(command)
    return command


@click.group("image")
def image() -> None:
    """VM images and appliance layers (the image repository)."""


@image.command("brief")
@_query_options
@click.pass_obj
def brief(obj: Context, query: str | None, sort: str | None, direction: str | None) -> None:
    """Brief metadata of the images you may see."""
    filters, params = listing_args(query, sort, direction)
    rows = obj.client.images(where=filters, **params)
    emit_json(rows) if obj.json else table(rows, BRIEF)


@image.command("detail")
@_query_options
@click.pass_obj
def detail(obj: Context, query: str | None, sort: str | None, direction: str | None) -> None:
    """Full metadata of the images you may see."""
    filters, params = listing_args(query, sort, direction)
    rows = obj.client.images(detail=True, where=filters, **params)
    if obj.json:
        emit_json(rows)
        return
    if not rows:
        click.echo("(none)")
    for n, row in enumerate(rows):
        if n:
            click.echo("")
        record(row)


@image.command("head")
@click.argument("image_id")
@click.pass_obj
def head(obj: Context, image_id: str) -> None:
    """An image's metadata (no file)."""
    data = obj.client.head_image(image_id)
    emit_json(data) if obj.json else record(data)


@image.command("get")
@click.argument("image_id")
@click.option(
    "--save",
    "-s",
    "save",
    type=click.Path(path_type=Path),
    default=Path("."),
    help="File or directory to save to (default: <id>.<format> in the current directory).",
)
@click.option(
    "--continue",
    "-c",
    "resume",
    is_flag=True,
    help="Resume a partial download at the end of the existing file.",
)
@click.pass_obj
def get(obj: Context, image_id: str, save: Path, resume: bool) -> None:
    """Download an image's file (checked against its SHA-256)."""
    meta = obj.client.head_image(image_id)
    target = save / image_filename(meta) if save.is_dir() else save
    if target.exists() and not resume:
        raise Conflict(
            f"image file already downloaded to {target}: add --continue to resume a partial "
            "download, or remove the file",
            path=str(target),
        )
    bar = ByteProgress(f"get {meta.get('name') or image_id}")
    try:
        data = obj.client.get_image(image_id, target, progress=bar, resume=resume)
    finally:
        bar.done()
    if obj.json:
        emit_json({"image": data, "path": str(target)})
    else:
        record(data)
        click.echo(f"saved to {target}")


def _file_or_location(file: Path | None, location: str | None, meta: dict[str, str]) -> None:
    if location and meta.get("location") and meta["location"] != location:
        raise click.UsageError("location= and --location disagree")
    if file is not None and (location or meta.get("location")):
        raise InvalidRequest("give the image's file (--file) or its location, not both")


@image.command("add")
@click.argument("metadata", nargs=-1)
@click.option(
    "--file",
    "-f",
    "file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The image file to upload.",
)
@click.option("--location", "-l", help="URL of a file kept elsewhere (the http store).")
@click.pass_obj
def add(obj: Context, metadata: tuple[str, ...], file: Path | None, location: str | None) -> None:
    """Register an image from key=value metadata, with its file or location (or neither:
    it stays locked until one is given)."""
    meta = parse_pairs(metadata)
    _file_or_location(file, location, meta)
    bar = ByteProgress(f"add {file.name}") if file else None
    try:
        data = obj.client.add_image(meta, file, location, progress=bar)
    finally:
        if bar:
            bar.done()
    emit_json(data) if obj.json else record(data)


@image.command("update")
@click.argument("image_id")
@click.argument("metadata", nargs=-1)
@click.option(
    "--file",
    "-f",
    "file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Upload this file (only to a locked or error image).",
)
@click.option("--location", "-l", help="Give the image this URL as its file (http store).")
@click.pass_obj
def update(
    obj: Context,
    image_id: str,
    metadata: tuple[str, ...],
    file: Path | None,
    location: str | None,
) -> None:
    """Change an image's metadata and/or give it its file."""
    meta = parse_pairs(metadata)
    _file_or_location(file, location, meta)
    if not meta and file is None and not location:
        raise click.UsageError("nothing to update: give key=value metadata, --file or --location")
    bar = ByteProgress(f"update {file.name}") if file else None
    try:
        data = obj.client.update_image(image_id, meta, file, location, progress=bar)
    finally:
        if bar:
            bar.done()
    emit_json(data) if obj.json else record(data)


@image.command("delete")
@click.argument("image_ids", nargs=-1)
@click.option("--query", "-q", help="Delete every image matching this HTTP query string.")
@click.pass_obj
def delete(obj: Context, image_ids: tuple[str, ...], query: str | None) -> None:
    """Remove images (metadata and file) by id, or every one matching --query."""
    ids = list(image_ids)
    if query is not None:
        filters, _ = listing_args(query, None, None)
        if not filters:
            raise click.UsageError("--query needs at least one filter (it would match every image)")
        ids += [row["id"] for row in obj.client.images(where=filters) if row["id"] not in ids]
    if not ids and query is None:
        raise click.UsageError("give image ids or --query")
    deleted = []
    for image_id in ids:
        data = obj.client.delete_image(image_id)
        deleted.append(data)
        if not obj.json:
            click.echo(f"deleted {data['id']} ({data.get('name')})")
    if obj.json:
        emit_json(deleted)
    elif not ids:
        click.echo("no image matches")


@image.command("history")
@click.argument("image_id")
@click.pass_obj
def history(obj: Context, image_id: str) -> None:
    """Who did what to an image, and when."""
    rows = obj.client.image_history(image_id)
    emit_json(rows) if obj.json else table(rows, ["at", "user", "action", "detail"])


def register(cli: click.Group) -> None:
    cli.add_command(image)
