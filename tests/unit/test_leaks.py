"""Saying less to whoever may not know (issue 12, item 10): a member learns nothing of another
user's private network from a refusal, nor whose a public image, instance, network, channel or
job is, nor another user's access key from an image's history, nor another user's port
forward from a taken port. Administrators and owners still get the detail."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_limits import Cloud
from test_networks import ADMIN, ALICE, BOB, make_instance, make_network, svc  # noqa: F401

from lamina.compute.lifecycle import NicRequest
from lamina.compute.models import Instance
from lamina.db.types import utcnow
from lamina.errors import Conflict
from lamina.identity.principal import Principal
from lamina.jobs.models import Job
from lamina.jobs.views import describe_job
from lamina.network import forwards
from lamina.network.service import create_network
from lamina.services import Services


def refusal(services: Services, who: Any, **fields: Any) -> Conflict:
    with pytest.raises(Conflict) as caught:
        create_network(services, who, **fields)
    return caught.value


# -- networks -----------------------------------------------------------------------------


def test_a_member_is_not_told_the_range_or_name_of_a_private_network(
    svc: Services,  # noqa: F811 - the fixture imported above
) -> None:
    make_network(svc, ADMIN, name="backstage", cidr="10.99.0.0/24")

    overlap = refusal(svc, ALICE, name="mine", cidr="10.99.0.128/25")
    assert "10.99.0.0/24" not in str(overlap) and "backstage" not in str(overlap)
    assert "not available" in str(overlap) and "overlaps" not in overlap.details

    name = refusal(svc, ALICE, name="backstage", cidr="10.50.0.0/24")
    assert str(name) == "the network name 'backstage' is not available"

    # The administrator, and a member whose own network it is, get the detail.
    detail = refusal(svc, ADMIN, name="other", cidr="10.99.0.128/25")
    assert "10.99.0.0/24" in str(detail) and detail.details["overlaps"] == "10.99.0.0/24"
    assert "already exists" in str(refusal(svc, ADMIN, name="backstage", cidr="10.51.0.0/24"))
    make_network(svc, ALICE, name="alices", cidr="10.60.0.0/24")
    assert "10.60.0.0/24" in str(refusal(svc, ALICE, name="x", cidr="10.60.0.0/16"))

    # A public network is everyone's to see: its range is named.
    make_network(svc, ADMIN, name="shared", cidr="10.70.0.0/24", visibility="public")
    assert "10.70.0.0/24" in str(refusal(svc, BOB, name="y", cidr="10.70.0.0/23"))


def test_a_taken_host_port_does_not_name_another_user_forward(
    svc: Services,  # noqa: F811
) -> None:
    make_network(svc, ADMIN, name="shared", cidr="10.70.0.0/24", visibility="public")
    theirs = make_instance(svc, "theirs", [NicRequest("shared")], BOB, host="one")
    mine = make_instance(svc, "mine", [NicRequest("shared")], ALICE, host="one")
    also_mine = make_instance(svc, "again", [NicRequest("shared")], ALICE, host="one")
    with svc.db.write() as s:
        for instance, who in ((theirs, BOB), (mine, ALICE), (also_mine, ALICE)):
            _get(s, instance).owner = who.user_id
    with svc.db.write() as s:
        forward, _ = forwards.expose(s, svc.jobs, _get(s, theirs), guest_port=80, host_port=8080)
        held = forward.id
        mine_forward, _ = forwards.expose(s, svc.jobs, _get(s, mine), guest_port=80, host_port=9090)
        own_id = mine_forward.id
    with pytest.raises(Conflict) as caught, svc.db.write() as s:
        forwards.expose(s, svc.jobs, _get(s, mine), guest_port=22, host_port=8080)
    assert held not in str(caught.value) and "forward" not in caught.value.details
    with pytest.raises(Conflict, match=own_id), svc.db.write() as s:
        forwards.expose(s, svc.jobs, _get(s, also_mine), guest_port=22, host_port=9090)


def _get(session: Any, instance: Instance) -> Instance:
    found = session.get(Instance, instance.id)
    assert found is not None
    return found


# -- images and channels, through the app --------------------------------------------------


@pytest.fixture
def cloud(svc: Services) -> Iterator[Cloud]:  # noqa: F811
    c = Cloud(svc)
    c.user("admin", "admin")
    c.user("alice")
    with c.http:
        yield c


def test_a_public_image_history_and_metadata_do_not_show_its_owner(cloud: Cloud) -> None:
    data = os.urandom(4096)
    headers = {
        "Content-Type": "application/octet-stream",
        "X-Image-Meta-Sha256": hashlib.sha256(data).hexdigest(),
        "X-Image-Meta-Name": "base",
        "X-Image-Meta-Access": "public",
    }
    made = cloud.call("admin", "POST", "/images", headers=headers, content=data)
    assert made.status_code == 201, made.text
    image_id = made.json()["image"]["id"]
    assert cloud.call("alice", "GET", f"/images/{image_id}").status_code == 200

    history = cloud.call("alice", "GET", f"/images/{image_id}/history").json()["history"]
    users = {e["user"] for e in history}
    assert "admin" not in users and users == {"another user"}, history
    theirs = cloud.call("admin", "GET", f"/images/{image_id}/history").json()["history"]
    assert {e["user"] for e in theirs} == {"admin"}

    owner_id = cloud.ids["admin"]
    detail = cloud.call("alice", "GET", "/images/detail").json()["images"]
    assert [i["owner"] for i in detail] == [None]
    head = cloud.call("alice", "HEAD", f"/images/{image_id}")
    assert head.headers.get("x-image-meta-owner") is None
    download = cloud.call("alice", "GET", f"/images/{image_id}")
    assert owner_id not in str(download.headers)
    assert cloud.call("admin", "GET", "/images/detail").json()["images"][0]["owner"] == owner_id


def test_public_networks_instances_and_jobs_do_not_say_whose_they_are(cloud: Cloud) -> None:
    admin, alice = cloud.ids["admin"], cloud.ids["alice"]
    boss = Principal(admin, "admin", "admin")
    make_network(cloud.svc, boss, name="shared", cidr="10.70.0.0/24", visibility="public")
    with cloud.svc.db.write() as s:
        s.add(Instance(id="i-web", name="web", owner=admin, visibility="public", host_id="h-1",
                       status="running", vcpus=1, memory_mib=64))  # fmt: skip
        s.flush()
        # A job a grantee (alice) started on the owner's (admin's) instance, and one of admin's.
        for job_id, owner in (("j-alice", alice), ("j-admin", admin)):
            s.add(Job(id=job_id, kind="instance.start", target_type="instance",
                      target_id="i-web", owner=owner, deadline=utcnow()))  # fmt: skip

    [network] = cloud.call("alice", "GET", "/networks").json()["networks"]
    assert network["owner"] is None
    assert cloud.call("admin", "GET", "/networks/shared").json()["network"]["owner"] == admin
    assert cloud.call("alice", "GET", "/instances/i-web").json()["instance"]["owner"] is None
    [shown] = cloud.call("alice", "GET", "/instances/detail").json()["instances"]
    assert shown["owner"] is None
    assert cloud.call("admin", "GET", "/instances/i-web").json()["instance"]["owner"] == admin

    mine = cloud.call("alice", "GET", "/jobs/j-alice").json()["job"]
    assert mine["owner"] == alice
    assert cloud.call("alice", "GET", "/jobs/j-admin").status_code == 404


def test_a_job_shows_its_owner_only_to_them_and_administrators() -> None:
    job = Job(id="j-1", kind="instance.start", status="queued", owner=BOB.user_id, progress=0.0)
    # The owner of the instance a grantee (bob) acted on reads the job without bob's id.
    assert describe_job(job, steps=False, viewer=ALICE)["owner"] is None
    assert describe_job(job, steps=False, viewer=BOB)["owner"] == BOB.user_id
    assert describe_job(job, steps=False, viewer=ADMIN)["owner"] == BOB.user_id


def test_a_channel_listing_does_not_show_its_subscriber_to_members(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lamina.channels import service as channels

    row = {"id": "c-1", "url": "https://example.org/feed", "owner": cloud.ids["admin"]}
    monkeypatch.setattr(channels, "all_channels", lambda session: [dict(row)])
    http: TestClient = cloud.http
    assert http.get("/channels", auth=cloud.auth["alice"]).json()["channels"][0]["owner"] is None
    shown = http.get("/channels", auth=cloud.auth["admin"]).json()["channels"][0]["owner"]
    assert shown == cloud.ids["admin"]
