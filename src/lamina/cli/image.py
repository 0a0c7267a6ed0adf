"""``lamina image``: the image repository. ``list`` and ``show`` as in every group, with
VISOR's verbs (its tables 4.10 and 4.11) kept as aliases (``brief``, ``detail``, ``head``),
and get, add, update, delete, history. Every command that takes an image takes its id or its
name."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import click

from lamina.cli.context import Context
from lamina.cli.output import ByteProgress, emit_json, human_bytes, record, table
from lamina.cli.verbs import alias
from lamina.client import image_filename
from lamina.errors import Conflict, InvalidRequest

BRIEF = ["id", "name", "architecture", "access", "type", "format", "size", "store", "status"]
#: Query keys that are not filters but the listing's own parameters.
LISTING = ("sort", "dir", "limit", "marker")
#: The values the API takes (``lamina.images.models``, which a unit test holds these to).
STATUSES = ("locked", "uploading", "available", "error")
TYPES = ("kernel", "ramdisk", "machine", "layer")
FORMATS = (
    "iso", "raw", "qcow2", "vmdk", "vdi", "vhd", "ami", "aki", "ari", "squashfs", "erofs",
    "tar", "ova",
)  # fmt: skip
ARCHITECTURES = ("i386", "x86_64", "aarch64", "armv7l", "ppc64le", "s390x", "riscv64")
ACCESS = ("public", "private")
SORTABLE = (
    "name", "architecture", "access", "status", "size", "type", "format", "store", "owner",
    "created_at", "updated_at", "uploaded_at", "accessed_at", "access_count", "id",
)  # fmt: skip


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
            "--dir", "-d", "direction", type=click.Choice(["asc", "desc"]),
            help="Sort direction (default asc).",
        ),
        click.option(
            "--sort", "-s", type=click.Choice(SORTABLE),
            help="Attribute to sort by (default created_at).",
        ),
        click.option(
            "--query", "-q",
            help="HTTP query string to filter on any attribute, extra ones too, e.g. "
            "'format=iso&os=debian'.",
        ),
    ):  # fmt: skip
        command = option(command)
    return command


def _filter_options(command: Any) -> Any:
    """The common filters as options with their allowed values (``--query`` takes any)."""
    for option in (
        click.option("--type", "type_", type=click.Choice(TYPES), help="Only images of this type."),
        click.option(
            "--architecture", type=click.Choice(ARCHITECTURES),
            help="Only images for this architecture.",
        ),
        click.option("--access", type=click.Choice(ACCESS), help="Only public or private images."),
        click.option("--format", "format_", type=click.Choice(FORMATS), help="Only this format."),
        click.option("--status", type=click.Choice(STATUSES), help="Only images in this state."),
        click.option("--name", help="Only images of this name (exactly)."),
    ):  # fmt: skip
        command = option(command)
    return command


def image_row(data: dict[str, Any]) -> dict[str, Any]:
    """An image as a table or record shows it: its size readable (JSON keeps bytes)."""
    size = data.get("size")
    return {**data, "size": human_bytes(size) if isinstance(size, int) else size}


def _shown(data: dict[str, Any]) -> dict[str, Any]:
    size = data.get("size")
    if not isinstance(size, int):
        return data
    return {**data, "size": f"{human_bytes(size)} ({size} bytes)"}


@click.group("image")
def image() -> None:
    """VM images and appliance layers (the image repository).

    Every command that takes an IMAGE takes its id or its name (your own image of that name
    first; a name several images carry is an error listing their ids). VISOR's verbs
    brief, detail and head are aliases of list and show.

    \b
    Examples:
      lamina image list
      lamina image show debian-12
    """


@image.command("list")
@_query_options
@_filter_options
@click.option(
    "--long", "-l", "long", is_flag=True,
    help="Every attribute of each image (VISOR's `detail`), not one line each.",
)  # fmt: skip
@click.pass_obj
def list_(
    obj: Context,
    query: str | None,
    sort: str | None,
    direction: str | None,
    long: bool,
    name: str | None,
    status: str | None,
    format_: str | None,
    access: str | None,
    architecture: str | None,
    type_: str | None,
) -> None:
    """List the images you may see: yours, public ones and those shared with you.

    Sizes are shown in binary units; --json prints every image as JSON (sizes in bytes)
    for scripts.

    \b
    Examples:
      lamina image list --format qcow2 --access public
      lamina image list -q 'os=debian' --sort size --dir desc
    """
    filters, params = listing_args(query, sort, direction)
    chosen = {
        "name": name, "status": status, "format": format_, "access": access,
        "architecture": architecture, "type": type_,
    }  # fmt: skip
    filters.update({key: value for key, value in chosen.items() if value is not None})
    # ``lamina image detail`` (VISOR's name) is this command with --long.
    long = long or click.get_current_context().info_name == "detail"
    rows = obj.client.images(detail=long, where=filters, **params)
    if obj.json:
        emit_json(rows)
    elif not long:
        table([image_row(r) for r in rows], BRIEF)
    elif not rows:
        click.echo("(none)")
    else:
        for n, row in enumerate(rows):
            if n:
                click.echo("")
            record(_shown(row))


@image.command("show")
@click.argument("image_ref", metavar="IMAGE")
@click.pass_obj
def show(obj: Context, image_ref: str) -> None:
    """Show an image's metadata (id or name; its file is not fetched).

    --json prints it as JSON for scripts (the size in bytes).

    \b
    Examples:
      lamina image show debian-12
      lamina --json image show 7c0b3f5e-...
    """
    data = obj.client.head_image(image_ref)
    emit_json(data) if obj.json else record(_shown(data))


@image.command("get")
@click.argument("image_ref", metavar="IMAGE")
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
def get(obj: Context, image_ref: str, save: Path, resume: bool) -> None:
    """Download an image's file (by id or name), checked against its SHA-256.

    --json prints the image's metadata and where it was saved.

    \b
    Examples:
      lamina image get debian-12 --save ~/images/
      lamina image get debian-12 --save debian.qcow2 --continue
    """
    meta = obj.client.head_image(image_ref)
    image_id = str(meta.get("id") or image_ref)
    target = save / image_filename(meta) if save.is_dir() else save
    if target.exists() and not resume:
        raise Conflict(
            f"image file already downloaded to {target}: add --continue to resume a partial "
            "download, or remove the file",
            path=str(target),
        )
    bar = ByteProgress(f"get {meta.get('name') or image_id}")
    try:
        # By id: the name was resolved once, so the file is the image just shown.
        data = obj.client.get_image(image_id, target, progress=bar, resume=resume)
    finally:
        bar.done()
    if obj.json:
        emit_json({"image": data, "path": str(target)})
    else:
        record(_shown(data))
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
    """Register an image from key=value METADATA (name= is required), with its file or
    location (or neither: it stays locked until one is given).

    An image is private unless you add access=public (the manager's
    images.default_access). --json prints the new image's metadata.

    \b
    Examples:
      lamina image add name=debian-12 architecture=x86_64 format=qcow2 -f debian.qcow2
      lamina image add name=rescue format=iso access=public -l https://example.org/r.iso
    """
    meta = parse_pairs(metadata)
    _file_or_location(file, location, meta)
    bar = ByteProgress(f"add {file.name}") if file else None
    try:
        data = obj.client.add_image(meta, file, location, progress=bar)
    finally:
        if bar:
            bar.done()
    emit_json(data) if obj.json else record(_shown(data))


@image.command("update")
@click.argument("image_ref", metavar="IMAGE")
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
    image_ref: str,
    metadata: tuple[str, ...],
    file: Path | None,
    location: str | None,
) -> None:
    """Change an image's metadata (key=value) and/or give it its file; IMAGE is its id or
    name. --json prints the changed metadata.

    \b
    Examples:
      lamina image update debian-12 access=public os_version=12.5
      lamina image update later --file later.raw
    """
    meta = parse_pairs(metadata)
    _file_or_location(file, location, meta)
    if not meta and file is None and not location:
        raise click.UsageError("nothing to update: give key=value metadata, --file or --location")
    bar = ByteProgress(f"update {file.name}") if file else None
    try:
        data = obj.client.update_image(image_ref, meta, file, location, progress=bar)
    finally:
        if bar:
            bar.done()
    emit_json(data) if obj.json else record(_shown(data))


@image.command("delete")
@click.argument("image_refs", nargs=-1, metavar="[IMAGE]...")
@click.option("--query", "-q", help="Delete every image matching this HTTP query string.")
@click.pass_obj
def delete(obj: Context, image_refs: tuple[str, ...], query: str | None) -> None:
    """Remove images (metadata and file) by id or name, or every one matching --query.

    --json prints the removed images' metadata (which can be registered again).

    \b
    Examples:
      lamina image delete debian-12
      lamina image delete --query 'format=iso&status=error'
    """
    refs = list(image_refs)
    if query is not None:
        filters, _ = listing_args(query, None, None)
        if not filters:
            raise click.UsageError("--query needs at least one filter (it would match every image)")
        refs += [row["id"] for row in obj.client.images(where=filters) if row["id"] not in refs]
    if not refs and query is None:
        raise click.UsageError("give image ids or names, or --query")
    deleted = []
    for ref in refs:
        data = obj.client.delete_image(ref)
        deleted.append(data)
        if not obj.json:
            click.echo(f"deleted {data['id']} ({data.get('name')})")
    if obj.json:
        emit_json(deleted)
    elif not refs:
        click.echo("no image matches")


@image.command("history")
@click.argument("image_ref", metavar="IMAGE")
@click.pass_obj
def history(obj: Context, image_ref: str) -> None:
    """Who did what to an image (id or name), and when, oldest first.

    --json prints the events as JSON for scripts.

    \b
    Examples:
      lamina image history debian-12
      lamina --json image history debian-12
    """
    rows = obj.client.image_history(image_ref)
    emit_json(rows) if obj.json else table(rows, ["at", "user", "action", "detail"])


alias(image, "brief", of="list", why="VISOR's name")
alias(image, "detail", of="list", why="VISOR's name; every attribute, as with --long")
alias(image, "head", of="show", why="VISOR's name")


def register(cli: click.Group) -> None:
    cli.add_command(image)
