"""Access control: API keys with roles, the browser guard (Host, Origin, Sec-Fetch-Site), security headers,
the failed-attempt limit, and 5xx bodies that carry a request id but never a backend's words."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from facerec import api_keys
from facerec.backend import open_data_tier
from facerec.cli import main
from facerec.testing import jpeg_bytes
from tests.web.harness import Switch, flaky_data_tier, running_web, upload

PHOTO = jpeg_bytes((10, 120, 200))
FOREIGN = "http://evil.example"


def photos(*names: str) -> dict[str, object]:
    return {"files": [("photos", (name, PHOTO, "image/jpeg")) for name in names]}


async def stored_objects(web: object) -> int:
    data = web.data  # type: ignore[attr-defined]
    return await data.inputs.count() + await data.gallery.count()


async def test_a_foreign_page_cannot_enroll_or_delete_on_a_keyless_loopback_server() -> None:
    async with running_web() as web:
        cross_origin = await web.client.post("/v1/people/Ada/photos", headers={"Origin": FOREIGN}, **photos("a.jpg"))
        cross_site = await web.client.post(
            "/v1/people/Ada/photos", headers={"Sec-Fetch-Site": "cross-site"}, **photos("a.jpg")
        )
        null_origin = await web.client.post("/v1/people/Ada/photos", headers={"Origin": "null"}, **photos("a.jpg"))
        delete = await web.client.delete("/v1/people/Ada", headers={"Origin": FOREIGN})
        nothing_stored = await stored_objects(web)
        # The same page's own requests (and scripts with no Origin at all) still work.
        same_origin = await web.client.post(
            "/v1/people/Ada/photos",
            headers={"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"},
            **photos("a.jpg"),
        )
    for refused in (cross_origin, cross_site, null_origin, delete):
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "cross_origin"
    assert nothing_stored == 0
    assert same_origin.status_code == 200, same_origin.text


async def test_dns_rebinding_host_names_are_refused_on_loopback() -> None:
    async with running_web() as web:
        rebound = await web.client.get("/v1/people", headers={"Host": "attacker.example:8000"})
        rebound_delete = await web.client.delete("/v1/people/Ada", headers={"Host": "attacker.example"})
        loopback = [
            await web.client.get("/v1/people", headers={"Host": host})
            for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000")
        ]
    assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "host_not_allowed"
    assert rebound_delete.status_code == 403
    assert [reply.status_code for reply in loopback] == [200, 200, 200]


async def test_the_course_contract_needs_no_key_and_no_origin() -> None:
    async with running_web() as web:
        reply = await web.client.post("/", **upload(PHOTO))
    assert reply.status_code == 200 and reply.text.startswith("test_00:")


async def test_html_answers_carry_security_headers() -> None:
    async with running_web() as web:
        page = await web.client.get("/", headers={"Accept": "text/html"})
        docs = await web.client.get("/docs")
        api = await web.client.get("/healthz")
    for reply in (page, docs):
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["referrer-policy"] == "no-referrer"
        assert reply.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in reply.headers["content-security-policy"]
    assert api.headers["x-content-type-options"] == "nosniff"


async def keys_cli(data_dir: Path, *args: str) -> str:
    """`facerec keys ...` as an operator runs it, beside the server (in a thread: it runs its own event loop)."""
    result = await asyncio.to_thread(CliRunner().invoke, main, ["keys", *args, "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return result.stdout


async def test_a_public_server_needs_a_manage_key_made_by_the_cli_and_revocation_is_immediate(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with running_web(data_tier=open_data_tier, backend="local", data_dir=data_dir, host="0.0.0.0") as web:
        before = await web.client.post("/v1/people/Ada/photos", **photos("a.jpg"))
        recognized = await web.client.post("/", **upload(PHOTO))  # recognition stays open
        manage = (await keys_cli(data_dir, "create", "--role", "manage", "--name", "ops")).splitlines()[-1]
        recognize = (await keys_cli(data_dir, "create", "--role", "recognize")).splitlines()[-1]
        listed = await keys_cli(data_dir, "list")
        without = await web.client.post("/v1/people/Ada/photos", **photos("a.jpg"))
        wrong_role = await web.client.delete("/v1/people/Ada", headers={"Authorization": f"Bearer {recognize}"})
        enrolled = await web.client.post(
            "/v1/people/Ada/photos", headers={"Authorization": f"Bearer {manage}"}, **photos("a.jpg")
        )
        await keys_cli(data_dir, "revoke", manage.split("_")[1])
        revoked = await web.client.delete("/v1/people/Ada", headers={"Authorization": f"Bearer {manage}"})
    assert before.status_code == 403 and "facerec keys create --role manage" in before.json()["error"]["message"]
    assert recognized.status_code == 200
    assert re.fullmatch(r"frk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", manage)
    assert manage not in listed and "manage" in listed and "ops" in listed and "recognize" in listed
    assert without.status_code == 401 and without.headers["www-authenticate"] == "Bearer"
    assert wrong_role.status_code == 403
    assert enrolled.status_code == 200, enrolled.text
    assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "invalid_key"
    # Only the hash is stored: the key itself is in no file.
    assert not any(manage.encode() in path.read_bytes() for path in data_dir.rglob("*") if path.is_file())


async def test_require_key_recognize_guards_recognition_and_accepts_both_roles() -> None:
    async with running_web(require_key="recognize") as web:
        assert web.data.gallery is not None
        recognize, _ = await api_keys.create_key(web.data.gallery, "recognize")
        manage, _ = await api_keys.create_key(web.data.gallery, "manage")
        without = await web.client.post("/", **upload(PHOTO))
        json_without = await web.client.post("/v1/recognitions", **upload(PHOTO))
        with_keys = [
            await web.client.post("/", headers={"Authorization": f"Bearer {key}"}, **upload(PHOTO))
            for key in (recognize, manage)
        ]
        scheme = await web.client.post("/", headers={"Authorization": f"bearer {recognize}"}, **upload(PHOTO))
    assert without.status_code == 401 and "API key" in without.text
    assert json_without.status_code == 401 and json_without.json()["error"]["code"] == "key_required"
    assert [reply.status_code for reply in with_keys] == [200, 200]
    assert scheme.status_code == 200


async def test_duplicate_or_malformed_authorization_is_4xx() -> None:
    async with running_web() as web:
        assert web.data.gallery is not None
        key, _ = await api_keys.create_key(web.data.gallery, "manage")
        twice = await web.client.delete(
            "/v1/people/Ada", headers=[("Authorization", f"Bearer {key}"), ("Authorization", f"Bearer {key}")]
        )
        basic = await web.client.delete("/v1/people/Ada", headers={"Authorization": "Basic YTpi"})
        empty = await web.client.delete("/v1/people/Ada", headers={"Authorization": "Bearer "})
    assert twice.status_code == 400
    assert basic.status_code == 401 and empty.status_code == 401


async def test_failed_key_attempts_are_rate_limited_per_address_and_counted() -> None:
    async with running_web(auth_failures_per_minute=3) as web:
        assert web.data.gallery is not None
        key, _ = await api_keys.create_key(web.data.gallery, "manage")
        guesses = [
            (await web.client.delete("/v1/people/Ada", headers={"Authorization": f"Bearer frk_{i:012x}_{'x' * 43}"}))
            for i in range(4)
        ]
        # Once limited, even the right key waits: a guesser cannot tell a hit from the limit.
        right_key = await web.client.delete("/v1/people/Ada", headers={"Authorization": f"Bearer {key}"})
        metrics = (await web.client.get("/metrics")).text
    assert [reply.status_code for reply in guesses] == [401, 401, 401, 429]
    assert "retry-after" in guesses[-1].headers
    assert right_key.status_code == 429
    assert 'facerec_auth_failures_total{reason="invalid"} 3.0' in metrics
    assert 'facerec_auth_failures_total{reason="rate_limited"} 2.0' in metrics


LEAKY = "arn:aws:iam::123456789012:role/facerec-web AccessDenied on /var/lib/facerec/blobs/secret"


@pytest.mark.parametrize("down", ["store", "queue"])
async def test_no_5xx_body_names_a_path_an_arn_or_an_account_id(down: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from facerec.ports import PortError

    store, queue = Switch(), Switch()
    async with running_web(data_tier=flaky_data_tier(store, queue)) as web:
        (store if down == "store" else queue).failing = True
        monkeypatch.setattr("tests.web.harness.PortError", lambda _: PortError(LEAKY))
        replies = [
            await web.client.post("/", **upload(PHOTO)),
            await web.client.post("/v1/recognitions", **upload(PHOTO)),
            await web.client.get("/readyz"),
        ]
    for reply in replies:
        assert reply.status_code == 503, reply.text
        for secret in ("arn:", "123456789012", "/var/lib", "AccessDenied"):
            assert secret not in reply.text
    assert replies[0].headers["x-request-id"] in replies[0].text
    assert replies[1].json()["error"]["request_id"] == replies[1].headers["x-request-id"]


async def test_gallery_store_errors_do_not_leak_either(monkeypatch: pytest.MonkeyPatch) -> None:
    from facerec.ports import PortError

    async with running_web() as web:
        assert web.data.gallery is not None

        async def broken(*args: object, **kwargs: object) -> None:
            raise PortError(LEAKY)

        monkeypatch.setattr(web.data.gallery, "list", broken)
        replies = [await web.client.get("/v1/people"), await web.client.delete("/v1/people/Ada")]
    for reply in replies:
        assert reply.status_code == 503, reply.text
        assert "123456789012" not in reply.text and "/var/lib" not in reply.text
        assert reply.json()["error"]["request_id"] == reply.headers["x-request-id"]


async def test_a_loopback_server_behind_a_proxy_for_public_names_also_needs_a_manage_key() -> None:
    async with running_web(allowed_hosts=["faces.example.org"]) as web:
        refused = await web.client.delete("/v1/people/Ada", headers={"Host": "faces.example.org"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "no_manage_key"
