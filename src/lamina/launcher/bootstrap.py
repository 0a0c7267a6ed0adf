"""``lamina user bootstrap``: on the manager's machine, the first administrator, straight into
the database (no manager need run), and its keys into the credentials file."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from lamina.config import Settings


@click.command("bootstrap")
@click.option(
    "--access-key", default="admin", show_default=True, help="The administrator's access key."
)
@click.option(
    "--email", default="admin@localhost", show_default=True, help="The administrator's email."
)
def bootstrap(access_key: str, email: str) -> None:
    """On the manager's machine: make the first administrator.

    Makes sure an administrator exists, straight in the database (no manager need run), and
    writes its keys to the credentials file (~/.config/lamina/credentials, or
    $LAMINA_CREDENTIALS), in the profile $LAMINA_PROFILE (default "default"). `make up`
    runs it.

    \b
    Examples:
      lamina user bootstrap
      LAMINA_PROFILE=root lamina user bootstrap --access-key root
    """
    from lamina.client.credentials import (
        Credentials,
        credentials_path,
        profile_name,
        read_profiles,
        write_credentials,
    )
    from lamina.config import load_settings
    from lamina.db import Database
    from lamina.identity.bootstrap import bootstrap_admin
    from lamina.identity.secretbox import SecretBox

    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path, profile = credentials_path(), profile_name()
    known = read_profiles(path).get(profile, {})
    db = Database(settings.database_url)
    try:
        new = bootstrap_admin(
            db,
            SecretBox(settings.data_dir.resolve()),
            access_key,
            email,
            known.get("secret_key") if known.get("access_key") == access_key else None,
        )
    finally:
        db.dispose()
    url, ca_file = settings.manager.url, _ca_file(settings)
    if new is None and (known.get("url"), known.get("ca_file")) == (url, ca_file):
        click.echo(f"administrator {access_key} already in {path} [{profile}]")
        return
    # A known key is kept; the manager's URL and CA are brought up to date (TLS turned on).
    secret = new.secret if new is not None else known["secret_key"]
    write_credentials(path, profile, Credentials(access_key, secret, url, ca_file))
    click.echo(f"administrator {access_key} written to {path} [{profile}]")


def _ca_file(settings: Settings) -> str | None:
    """The CA certificate clients must trust: Lamina's own for ``manager.tls = "ca"``,
    ``manager.tls_ca_file`` for "files" (unset: the system's trust store decides)."""
    if settings.manager.tls == "ca":
        from lamina.identity.ca import CertificateAuthority

        # Made now if `lamina serve` has not run yet, so the file the credentials name exists.
        return str(CertificateAuthority(settings.data_dir.resolve() / "ca").cert_path)
    if settings.manager.tls == "files" and settings.manager.tls_ca_file is not None:
        return str(settings.manager.tls_ca_file.resolve())
    return None
