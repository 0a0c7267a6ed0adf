"""``/channels`` and ``/appliances``: subscriptions and the catalog, over the channels and
appliances domains (administrators subscribe, refresh, remove and install)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from lamina.api.auth import admin, principal
from lamina.api.deps import services
from lamina.api.routes.instances import NicBody, nics_of
from lamina.appliances import capture as capturer
from lamina.appliances import catalog as appliance_catalog
from lamina.appliances import deploy as deployer
from lamina.appliances import detail as appliance_detail
from lamina.appliances import install as installer
from lamina.channels import service
from lamina.identity.principal import Principal
from lamina.services import Services

channels = APIRouter(prefix="/channels", tags=["channels"])
appliances = APIRouter(prefix="/appliances", tags=["appliances"])


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Subscription(Body):
    url: str = Field(min_length=8, max_length=2048)
    key: str = Field(min_length=8, max_length=200)


@channels.post("", status_code=201)
def add_channel(
    body: Subscription, svc: Services = Depends(services), who: Principal = Depends(admin)
) -> Any:
    """Subscribe: fetch the feed and its signature, verify them with the pinned key, store."""
    return {"channel": service.subscribe(svc, who, body.url, body.key)}


@channels.get("")
def list_channels(svc: Services = Depends(services), who: Principal = Depends(principal)) -> Any:
    return {"channels": service.list_channels(svc, who)}


@channels.get("/{channel_ref:path}")
def show_channel(
    channel_ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    """One channel (id, feed URL or title) with the appliances its feed lists."""
    return {"channel": service.show_channel(svc, who, channel_ref)}


@channels.post("/{channel_ref:path}/refresh")
def refresh_channel(
    channel_ref: str, svc: Services = Depends(services), who: Principal = Depends(admin)
) -> Any:
    """Fetch the feed again (conditionally); answers the channel and what is new."""
    described, changes = service.refresh_channel(svc, who, channel_ref)
    return {"channel": described, "changes": changes}


@channels.delete("/{channel_ref:path}")
def remove_channel(
    channel_ref: str, svc: Services = Depends(services), who: Principal = Depends(admin)
) -> Any:
    """Unsubscribe (id, feed URL or title); 409 while appliances installed from it remain."""
    return {"channel": appliance_catalog.remove_channel(svc, who, channel_ref)}


@appliances.get("")
def list_appliances(
    installed: bool = False, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Any:
    """The catalog: every channel's appliances and the installed ones."""
    return {"appliances": appliance_catalog.list_appliances(svc, who, installed)}


class Install(Body):
    name: str = Field(min_length=1, max_length=64)
    version: str | None = Field(None, max_length=128)


@appliances.post("/install", status_code=202)
def install_appliance(
    body: Install, svc: Services = Depends(services), who: Principal = Depends(admin)
) -> Any:
    """Install an appliance and what it needs: 202 with the job and the appliances."""
    return installer.start_install(svc, who, body.name, body.version)


@appliances.get("/{appliance_ref}")
def show_appliance(
    appliance_ref: str,
    version: str | None = Query(None, max_length=128, description="Default: the newest"),
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """One appliance by name (or an installed one's id): its versions, and what the
    definition of one version holds (variables, dependencies, hardware, webpanel)."""
    return {"appliance": appliance_detail.show_appliance(svc, who, appliance_ref, version)}


@appliances.delete("/{appliance_ref}")
def remove_appliance(
    appliance_ref: str,
    version: str | None = Query(None, max_length=128, description="When several installed"),
    svc: Services = Depends(services),
    who: Principal = Depends(admin),
) -> Any:
    """Remove an installed appliance (id, or name and version) and the images only it used;
    409 while in use; 400 ambiguous_name when several versions are installed."""
    return {"appliance": installer.remove_appliance(svc, who, appliance_ref, version)}


class Capture(Body):
    instance: str = Field(min_length=1, max_length=64, description="A stopped layered instance")
    name: str = Field(min_length=1, max_length=64, description="The new appliance's name")
    version: str | None = Field(None, max_length=128, description="Default 1.0.0")


@appliances.post("/capture", status_code=202)
def capture_appliance(
    body: Capture, svc: Services = Depends(services), who: Principal = Depends(admin)
) -> Any:
    """Turn a stopped layered instance's configuration into a deployment layer: 202 with the
    job and the new appliance (``installing`` until the job is done)."""
    return capturer.start_capture(svc, who, body.instance, body.name, body.version)


class Deploy(Body):
    name: str = Field(min_length=1, max_length=63, description="The instance's name")
    vars: dict[str, str] = Field(default_factory=dict, description="Instance variables")
    memory_mib: int | None = Field(None, ge=32, le=1024 * 1024)
    vcpus: int | None = Field(None, ge=1, le=64)
    #: In order, the first being the primary; None: the default network (if any).
    networks: list[NicBody] | None = Field(None, max_length=8)
    group: str | None = Field(None, max_length=63)
    version: str | None = Field(None, max_length=128, description="Default: the newest installed")


@appliances.post("/{appliance_ref}/deploy", status_code=202)
def deploy_appliance(
    appliance_ref: str,
    body: Deploy,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Any:
    """Create an instance of an installed appliance (id or name): 202 with the instance, its
    job and the resolved variables; 400 naming every bad variable before anything is made."""
    return deployer.deploy(
        svc,
        who,
        appliance_ref,
        name=body.name,
        variables=body.vars,
        memory_mib=body.memory_mib,
        vcpus=body.vcpus,
        networks=nics_of(body.networks),
        group=body.group,
        version=body.version,
    )
