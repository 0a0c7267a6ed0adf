"""Image stores, chosen by name (the image's ``store`` attribute)."""

from __future__ import annotations

from lamina.config import Settings
from lamina.errors import ConfigError, InvalidRequest
from lamina.stores.base import ImageStore

KNOWN = ("file", "s3", "http")


def load_stores(settings: Settings) -> dict[str, ImageStore]:
    """Every store the settings enable, built once per manager."""
    cfg = settings.images
    stores: dict[str, ImageStore] = {}
    for name in cfg.stores:
        if name == "file":
            from lamina.stores.file import FileImageStore

            stores[name] = FileImageStore(settings.image_root)
        elif name == "s3":
            from lamina.stores.s3 import S3ImageStore

            if not (cfg.s3_endpoint and cfg.s3_access_key and cfg.s3_secret_key):
                raise ConfigError(
                    "the s3 image store needs images.s3_endpoint, images.s3_access_key and "
                    "images.s3_secret_key"
                )
            stores[name] = S3ImageStore(
                cfg.s3_endpoint,
                cfg.s3_bucket,
                cfg.s3_access_key,
                cfg.s3_secret_key.get_secret_value(),
                region=cfg.s3_region,
            )
        elif name == "http":
            from lamina.stores.http import HttpImageStore

            stores[name] = HttpImageStore(
                max_redirects=cfg.http_max_redirects, allow_private=cfg.http_allow_private
            )
    if cfg.default_store not in stores:
        raise ConfigError(f"images.default_store {cfg.default_store!r} is not in images.stores")
    return stores


def pick(stores: dict[str, ImageStore], name: str) -> ImageStore:
    """The store named ``name``, or VISOR's 400 "Unsupported store backend"."""
    if name not in stores:
        known = ", ".join(sorted(stores))
        if name in KNOWN:
            raise InvalidRequest(f"store {name!r} is not enabled here (enabled: {known})")
        raise InvalidRequest(f"unsupported store backend {name!r} (enabled: {known})")
    return stores[name]
