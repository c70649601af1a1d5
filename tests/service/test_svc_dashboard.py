"""The dashboard's pages over real HTTP (no browser) against the fake-core stack: sessions (signed,
expiring, HttpOnly, SameSite=Strict cookie; Secure over https; revocation ends them), the /ui route
table walked for sign-in and tenant isolation (another tenant's objects are 404 pages), CSRF on
every form that changes something, the new-search form's errors, the SSE stream and its polling form.
The browser itself is driven in test_svc_dashboard_browser.py."""
from __future__ import annotations

import json
import re
import subprocess
import time
import uuid

import httpx
import pytest
from fastapi.routing import APIRoute

from api.dashboard import session as dash_session
from svc_helpers import (PY, REPO, fake_search_body, settings_of, ui_client, ui_csrf, wait_until)

pytestmark = pytest.mark.services
UI = "/ui"


@pytest.fixture(scope="module")
def ui_routes(fake_stack) -> list[tuple[str, APIRoute]]:
    from api.app import create_app

    out = []
    for r in create_app(settings_of(fake_stack)).routes:
        if hasattr(r, "effective_route_contexts"):
            out += [(ctx.path, ctx.original_route) for ctx in r.effective_route_contexts()]
        elif isinstance(r, APIRoute):
            out.append((r.path, r))
    return [(p, r) for p, r in out if p.startswith(UI) and isinstance(r, APIRoute)]


@pytest.fixture(scope="module")
def ui(fake_stack, owner):
    with ui_client(fake_stack) as c:
        yield c


def _concrete(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: values[m.group(1)], path)


def _methods(route) -> list[str]:
    return sorted(m for m in route.methods if m not in ("HEAD", "OPTIONS"))


def test_every_page_needs_a_session_and_a_key_header_is_not_one(fake_stack, ui_routes, owner):
    checked = 0
    with httpx.Client(base_url=fake_stack.url, timeout=30) as anon:
        for path, route in ui_routes:
            if path in ("/ui/signin", "/ui", "/ui/"):
                continue
            url = _concrete(path, owner)
            for method in _methods(route):
                for headers in ({}, {"Authorization": f"Bearer {fake_stack.api_key}"}, {"Cookie": "gas_session=forged.x"}):
                    r = anon.request(method, url, headers=headers)
                    assert r.status_code == 303 and "/ui/signin" in r.headers["location"], (method, path, r.status_code)
                    checked += 1
        r = anon.get("/ui/jobs", headers={"HX-Request": "true"})  # htmx: redirect the whole page
        assert r.status_code == 204 and r.headers["hx-redirect"].startswith("/ui/signin")
    assert checked >= 3 * 12, checked


def test_sign_in_sets_a_strict_httponly_expiring_cookie_and_sign_out_clears_it(fake_stack, owner):
    with httpx.Client(base_url=fake_stack.url, timeout=30) as c:
        page = c.get("/ui/signin")
        token = ui_csrf(page.text)
        r = c.post("/ui/signin", data={"api_key": "gas_0123456789ab_" + "x" * 43, "csrf": token})
        assert r.status_code == 401 and "unknown or revoked" in r.text and "gas_session" not in r.headers.get("set-cookie", "")
        r = c.post("/ui/signin", data={"api_key": "not a key", "csrf": token})
        assert r.status_code == 401 and "not an API key" in r.text
        r = c.post("/ui/signin", data={"api_key": fake_stack.api_key, "csrf": "wrong"})
        assert r.status_code == 403 and "CSRF" in r.text  # login CSRF: the double-submit token must match
        r = c.post("/ui/signin", data={"api_key": fake_stack.api_key, "csrf": token, "next": "https://evil.example/x"})
        assert r.status_code == 303 and r.headers["location"] == "/ui/jobs"  # no open redirect
        cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("gas_session="))
        attrs = {a.strip().split("=")[0].lower(): a for a in cookie.split(";")}
        assert "httponly" in attrs and attrs["samesite"].strip().lower() == "samesite=strict"
        assert attrs["path"].strip() == "Path=/ui" and "secure" not in attrs  # plain http here
        assert int(attrs["max-age"].split("=")[1]) == settings_of(fake_stack).dashboard_session_ttl_s
        assert fake_stack.api_key not in cookie
        page = c.get("/ui/jobs")
        assert page.status_code == 200 and "Jobs" in page.text and owner["job_id"][:8] in page.text
        r = c.post("/ui/signout", data={"csrf": "wrong"})
        assert r.status_code == 403 and c.get("/ui/jobs").status_code == 200  # not signed out by a forged form
        r = c.post("/ui/signout", data={"csrf": ui_csrf(page.text)})
        assert r.status_code == 303 and r.headers["location"] == "/ui/signin"
        assert c.get("/ui/jobs").status_code == 303
    # over https (the proxy says so), the cookie is Secure
    with httpx.Client(base_url=fake_stack.url, timeout=30, headers={"X-Forwarded-Proto": "https"}) as c:
        page = c.get("/ui/signin")
        r = c.post("/ui/signin", data={"api_key": fake_stack.api_key, "csrf": ui_csrf(page.text)},
                   headers={"Cookie": f"gas_csrf={page.cookies['gas_csrf']}"})
        cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("gas_session="))
        assert "secure" in cookie.lower()


def test_expired_tampered_and_revoked_sessions_are_refused(fake_stack, owner):
    secret = (fake_stack.base / "data" / dash_session.SECRET_FILE).read_text().strip()
    key = fake_stack.create_key("default", name="ui-revoke")
    with ui_client(fake_stack, key) as c:
        value = c.cookies["gas_session"]
        assert c.get("/ui/jobs").status_code == 200
        doc = dash_session.unsign(bytes.fromhex(secret), value)
        expired = dash_session.sign(bytes.fromhex(secret), {**doc, "exp": int(time.time()) - 1})
        other_tenant = dash_session.sign(b"not the secret", {**doc, "t": "someone-else"})
        body, _, mac = value.partition(".")
        tampered = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + mac
        with httpx.Client(base_url=fake_stack.url, timeout=30) as anon:
            for bad in (expired, other_tenant, tampered):
                r = anon.get("/ui/jobs", headers={"Cookie": f"gas_session={bad}"})
                assert r.status_code == 303, bad
        out = subprocess.run([PY, "-m", "api.admin", "keys", "revoke", doc["p"]], env=fake_stack.env, cwd=str(REPO),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        wait_until(lambda: c.get("/ui/jobs").status_code == 303, 10, "the revoked key's session to end")


def test_another_tenants_objects_are_404_pages_on_every_route(fake_stack, ui_routes, owner):
    key = fake_stack.create_key(f"b-{uuid.uuid4().hex[:6]}")
    checked = []
    with ui_client(fake_stack, key) as other:
        token = ui_csrf(other.get("/ui/jobs").text)
        for path, route in ui_routes:
            if "{" not in path:
                continue
            url = _concrete(path, owner)
            for method in _methods(route):
                r = other.request(method, url, data={"csrf": token} if method == "POST" else None)
                assert r.status_code == 404, (method, path, r.status_code, r.text[:300])
                assert r.headers["content-type"].startswith("text/html") and "404" in r.text
                checked.append(f"{method} {path}")
        jobs = other.get("/ui/jobs").text
        assert owner["job_id"][:8] not in jobs and "No jobs" in jobs
        assert owner["dataset_id"] not in other.get("/ui/datasets").text
        assert other.get("/ui/compare", params={"dataset_id": owner["dataset_id"]}).status_code == 404
    assert len(checked) >= 8, checked
    assert fake_stack.job(owner["job_id"])["status"] == "succeeded"  # B's POST cancel changed nothing


def test_cancel_form_needs_the_csrf_token_and_the_same_origin(fake_stack, ui, owner):
    r = fake_stack.http.post("/api/v1/jobs/search", json=fake_search_body(owner["dataset_id"], epochs=50, steps=8))
    job_id = r.json()["id"]
    page = ui.get(f"/ui/jobs/{job_id}")
    assert page.status_code == 200 and 'id="cancel-btn"' in page.text
    token = ui_csrf(page.text)
    assert ui.post(f"/ui/jobs/{job_id}/cancel", data={}).status_code == 403
    assert ui.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": "x" + token}).status_code == 403
    r = ui.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": token}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert fake_stack.job(job_id)["cancel_requested"] is False
    r = ui.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": token}, headers={"Origin": fake_stack.url})
    assert r.status_code == 303 and r.headers["location"] == f"/ui/jobs/{job_id}"
    done = fake_stack.wait_status(job_id, "cancelled", 60)
    assert done["cancel_requested"] is True
    # cancelling a finished job again is harmless: back to its page
    assert ui.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": token}).status_code == 303


def test_new_search_form_shows_the_apis_field_errors_and_creates_one_job(fake_stack, ui, owner):
    form = ui.get("/ui/search/new")
    token = ui_csrf(form.text)
    idem = re.search(r'name="idem" value="([^"]+)"', form.text).group(1)
    base = {"csrf": token, "idem": idem, "dataset_id": owner["dataset_id"], "budget_kind": "latency_ms",
            "budget_value": "0", "height": "64", "width": "96", "epochs": "1",
            "settings_json": json.dumps({"warmup_epochs": 0, "advanced": {"search": {"steps_per_epoch": 1}}})}
    r = ui.post("/ui/search/new", data=base)
    assert r.status_code == 422
    err = re.search(r'data-field="budget_value">([^<]+)<', r.text)
    assert err and "budget.latency_ms" in err.group(1) and "0.1" in err.group(1)
    r = ui.post("/ui/search/new", data={**base, "budget_value": "50", "height": "8"})
    assert r.status_code == 422 and re.search(r'data-field="height">budget.height', r.text)
    r = ui.post("/ui/search/new", data={**base, "budget_value": "50", "settings_json": "[1"})
    assert r.status_code == 422 and 'data-field="settings"' in r.text
    r = ui.post("/ui/search/new", data={**base, "budget_value": "50", "settings_json": '{"advanced": {"workdir": "/"}}'})
    assert r.status_code == 422 and 'data-field="settings"' in r.text and "workdir" in r.text
    before = {j["id"] for j in fake_stack.http.get("/api/v1/jobs", params={"limit": 200}).json()["items"]}
    r = ui.post("/ui/search/new", data={**base, "budget_value": "50"})
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/jobs/")
    job_id = r.headers["location"].rsplit("/", 1)[1]
    again = ui.post("/ui/search/new", data={**base, "budget_value": "50"})  # double submit: the same job
    assert again.headers["location"] == r.headers["location"]
    after = {j["id"] for j in fake_stack.http.get("/api/v1/jobs", params={"limit": 200}).json()["items"]}
    assert after - before == {job_id}
    job = fake_stack.wait_status(job_id, "succeeded", 60)
    assert job["budget"]["latency_ms"] == 50 and (job["budget"]["height"], job["budget"]["width"]) == (64, 96)
    assert ui.post("/ui/search/new", data={**base, "csrf": "nope"}).status_code == 403


def _events(stream) -> list[tuple[str, str]]:
    out, name, data = [], None, []
    for line in stream.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and name:
            out.append((name, "\n".join(data)))
            name, data = None, []
    return out


def test_sse_stream_follows_a_job_to_its_end_and_polling_does_the_same(fake_stack, ui, owner):
    r = fake_stack.http.post("/api/v1/jobs/search", json=fake_search_body(owner["dataset_id"], epochs=3, steps=10))
    job_id = r.json()["id"]
    page = ui.get(f"/ui/jobs/{job_id}")
    assert f'sse-connect="/ui/jobs/{job_id}/live"' in page.text
    with ui.stream("GET", f"/ui/jobs/{job_id}/live", timeout=60) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        events = _events(s)
    names = [n for n, _ in events]
    assert names[0] == "progress" and names[-1] == "done" and names.count("done") == 1
    texts = {re.sub(r"\s+", " ", d) for n, d in events if n == "progress"}
    assert len(texts) >= 3, texts  # the progress block changed while the job ran
    assert any("epoch 2/3" in t for t in texts)
    assert 'data-status="succeeded"' in events[-1][1] and "hx-trigger=\"load" in events[-1][1]
    # the polling form: the fragment carries its own trigger while the job runs, none once it ended
    frag = ui.get(f"/ui/jobs/{job_id}/progress", params={"live": "poll"})
    assert frag.status_code == 200 and 'data-status="succeeded"' in frag.text and "every" not in frag.text
    page = ui.get(f"/ui/jobs/{job_id}", params={"live": "poll"})
    assert "sse-connect" not in page.text
    r = fake_stack.http.post("/api/v1/jobs/search", json=fake_search_body(owner["dataset_id"], epochs=20, steps=8))
    running = r.json()["id"]
    fake_stack.wait_status(running, "running", 30)
    page = ui.get(f"/ui/jobs/{running}", params={"live": "poll"})
    assert f'hx-get="/ui/jobs/{running}/progress?live=poll" hx-trigger="every' in page.text
    # the jobs table polls while a job is active (?live=poll), or follows an SSE stream of its rows
    assert ui.get("/ui/jobs", params={"live": "poll"}).text.count('hx-trigger="every') == 1
    page = ui.get("/ui/jobs", params={"live": "sse"}).text
    assert 'sse-connect="/ui/jobs/rows/live?kind=&amp;status=&amp;offset=0"' in page and 'sse-swap="rows"' in page
    assert 'hx-trigger="every' not in page
    seen: list[str] = []
    cancel_sent = False
    with ui.stream("GET", "/ui/jobs/rows/live", timeout=90) as st:
        assert st.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in st.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name == "rows":
                seen.append(line)
            elif line == "" and name == "rows":
                rows = "\n".join(seen)
                if not cancel_sent and f'class="job status-running" data-job="{running}"' in rows:
                    fake_stack.http.post(f"/api/v1/jobs/{running}/cancel")  # the stream must show it end
                    cancel_sent = True
                if re.search(rf'class="job status-cancelled" data-job="{running}"', rows):
                    break
                seen, name = [], None
        else:
            pytest.fail("the jobs stream ended without showing the cancelled job")
    fake_stack.wait_status(running, "cancelled", 60)
    with ui.stream("GET", "/ui/jobs/rows/live", params={"status": "cancelled"}, timeout=30) as st:
        events = _events(st)
    assert [n for n, _ in events] == ["rows", "done"] and f'data-job="{running}"' in events[0][1]


def test_pages_work_under_a_path_prefix(fake_stack, owner):
    """Behind a proxy that mounts the service under /gas (uvicorn --root-path), links, cookies and
    redirects carry the prefix."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    app = create_app(settings_of(fake_stack))
    with TestClient(app, root_path="/gas") as c:
        r = c.get("/gas/ui/jobs", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/gas/ui/signin?next=/gas/ui/jobs"
        page = c.get("/gas/ui/signin")
        assert 'href="/gas/ui/static/dashboard.css"' in page.text and 'action="/gas/ui/signin"' in page.text
        r = c.post("/gas/ui/signin", data={"api_key": fake_stack.api_key, "csrf": ui_csrf(page.text),
                                            "next": "/gas/ui/datasets"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/gas/ui/datasets"
        assert "Path=/gas/ui" in r.headers["set-cookie"]
        page = c.get("/gas/ui/jobs")
        assert f'href="/gas/ui/jobs/{owner["job_id"]}"' in page.text
        assert c.get("/gas/ui/static/vendor/htmx-2.0.11.min.js").status_code == 200


def test_an_open_sse_stream_holds_no_database_connection(fake_stack, owner):
    """The stream of a running job, served in process: between its checks no connection of the app's
    pool is checked out (each check opens a session and closes it), and a client disconnect ends it."""
    import asyncio

    from fastapi.testclient import TestClient

    from api.app import create_app
    from storage.db import get_engine

    settings = settings_of(fake_stack)
    app = create_app(settings)
    with TestClient(app) as c:
        page = c.get("/ui/signin")
        c.post("/ui/signin", data={"api_key": fake_stack.api_key, "csrf": ui_csrf(page.text)}, follow_redirects=False)
        cookie = c.cookies["gas_session"]
    r = fake_stack.http.post("/api/v1/jobs/search", json=fake_search_body(owner["dataset_id"], epochs=20, steps=8))
    job_id = r.json()["id"]
    fake_stack.wait_status(job_id, "running", 30)
    engine = get_engine(settings.db_url, settings.db_pool_size)

    async def run() -> tuple[list[bytes], list[int], bool]:
        chunks: list[bytes] = []
        gone = asyncio.Event()
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
                 "path": f"/ui/jobs/{job_id}/live", "raw_path": f"/ui/jobs/{job_id}/live".encode(), "query_string": b"",
                 "root_path": "", "headers": [(b"host", b"testserver"), (b"cookie", f"gas_session={cookie}".encode())],
                 "client": ("127.0.0.1", 1), "server": ("testserver", 80)}

        async def receive():
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.body" and message.get("body"):
                chunks.append(message["body"])

        task = asyncio.create_task(app(scope, receive, send))
        for _ in range(400):
            if len(chunks) >= 3:
                break
            await asyncio.sleep(0.05)
        samples = []
        for _ in range(40):  # 2 s: several checks (GAS_DASHBOARD_REFRESH_S=0.3)
            samples.append(engine.pool.checkedout())
            await asyncio.sleep(0.05)
        n_before = len(chunks)
        gone.set()
        try:
            await asyncio.wait_for(task, 10)
            ended = True
        except asyncio.TimeoutError:
            task.cancel()
            ended = False
        return chunks[:n_before], samples, ended

    chunks, samples, ended = asyncio.run(run())
    assert len(chunks) >= 4 and b"event: progress" in chunks[0], chunks[:2]
    assert sum(1 for n in samples if n > 0) <= 4, samples  # only the instant of a check, never the whole stream
    assert ended, "the stream did not end when the client went away"
    fake_stack.http.post(f"/api/v1/jobs/{job_id}/cancel")
    fake_stack.wait_status(job_id, "cancelled", 60)
