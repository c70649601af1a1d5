"""Datasets over real HTTP with PostgreSQL, Redis and a Celery worker: archive uploads (zip, tar,
tar.gz) of CamVid, folder and Cityscapes layouts, validation as a worker job, content addressing,
hostile archives refused with nothing left behind, the upload cap, and deletion rules."""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from svc_helpers import drop_pg_db, fake_search_body, make_stack, redis_cleanup, wait_dataset, wait_until

pytestmark = pytest.mark.services
UPLOAD = "/api/v1/datasets/uploads"


def zip_dir(src: Path, arcroot: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, f"{arcroot}/{p.relative_to(src)}")
    return buf.getvalue()


def tar_dir(src: Path, arcroot: str, mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        tf.add(src, arcname=arcroot)
    return buf.getvalue()


def folder_layout(camvid_tiny: Path, dst: Path) -> Path:
    for split in ("train", "val"):
        (dst / split / "images").mkdir(parents=True)
        (dst / split / "masks").mkdir(parents=True)
        for img in sorted((camvid_tiny / split).glob("*.jpg"))[:4]:
            shutil.copy(img, dst / split / "images" / img.name)
            shutil.copy(camvid_tiny / f"{split}annot" / f"{img.stem}.png", dst / split / "masks" / f"{img.stem}.png")
    return dst


def cityscapes_layout(dst: Path, n: int = 2) -> Path:
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for i in range(n):
            img_dir, gt_dir = dst / "leftImg8bit" / split / "ulm", dst / "gtFine" / split / "ulm"
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            ident = f"ulm_{i:06d}_000019"
            Image.fromarray(rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)).save(img_dir / f"{ident}_leftImg8bit.png")
            labels = np.array([7, 26, 0, 23], np.uint8)[rng.integers(0, 4, (32, 64))]
            Image.fromarray(labels, mode="L").save(gt_dir / f"{ident}_gtFine_labelIds.png")
    return dst


def upload(http: httpx.Client, data: bytes, **params) -> httpx.Response:
    return http.post(UPLOAD, params={"name": "up", **params}, content=data,
                     headers={"Content-Type": "application/octet-stream"})


@pytest.fixture(scope="module")
def stack(fake_stack):
    return fake_stack


@pytest.fixture(scope="module")
def camvid_tiny(datasets_root) -> Path:
    return datasets_root / "camvid_tiny"


def uploads_dir(stack) -> Path:
    return stack.base / "data" / "uploads"


def test_upload_zip_of_camvid_validates_and_runs_a_job(stack, camvid_tiny):
    http = stack.http
    data = zip_dir(camvid_tiny, "camvid_tiny")
    r = upload(http, data)
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["status"] == "validating" and ds["source"] == "upload" and ds["layout"] == "camvid"
    assert ds["size_bytes"] == len(data) and len(ds["sha256"]) == 64 and ds["path"] == f"upload:{ds['sha256']}"
    assert r.headers["location"] == f"/api/v1/datasets/{ds['id']}"
    ready = wait_dataset(http, ds["id"])
    rep = ready["report"]
    assert rep["ok"] and rep["splits"]["train"]["images"] == 8 and rep["splits"]["test"]["valid"] == 8
    assert rep["splits"]["train"]["sizes"] == {"480x360": 8}
    assert abs(sum(rep["class_frequency"].values()) - 1.0) < 1e-6 and len(rep["channel_mean"]) == 3
    # validation ran as a job on the worker
    vjob = http.get(f"/api/v1/jobs/{ready['validation_job_id']}").json()
    assert vjob["kind"] == "validate" and vjob["status"] == "succeeded"
    # the same archive with the same parameters is the same dataset (content addressing), nothing extracted twice
    again = upload(http, data)
    assert again.status_code == 200 and again.json()["id"] == ds["id"]
    # with other parameters it is a new dataset over the same stored files, never silently the old one (issue 13)
    other = upload(http, data, name="other name")
    assert other.status_code == 201 and other.json()["id"] != ds["id"], other.text
    assert other.json()["name"] == "other name" and other.json()["same_archive_as"] == [ds["id"]]
    assert len([p for p in (uploads_dir(stack) / "default").iterdir() if p.name == ds["sha256"]]) == 1
    wait_dataset(http, other.json()["id"])
    assert http.delete(f"/api/v1/datasets/{other.json()['id']}").status_code == 204
    assert (uploads_dir(stack) / "default" / ds["sha256"]).is_dir()  # still used by the first dataset
    # and a job runs on it
    job = http.post("/api/v1/jobs/search", json=fake_search_body(ds["id"])).json()
    wait_until(lambda: http.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "succeeded", 60, "search on upload")


@pytest.mark.parametrize("mode", ["w:gz", "w"])
def test_upload_folder_layout_tar(stack, camvid_tiny, tmp_path, mode):
    src = folder_layout(camvid_tiny, tmp_path / "f")
    r = upload(stack.http, tar_dir(src, "mydata", mode), num_classes=11)
    assert r.status_code == 201, r.text
    ds = wait_dataset(stack.http, r.json()["id"])
    assert ds["layout"] == "folder" and ds["num_classes"] == 11 and ds["report"]["splits"]["val"]["images"] == 4


def test_upload_cityscapes_layout_maps_label_ids(stack, tmp_path):
    r = upload(stack.http, tar_dir(cityscapes_layout(tmp_path / "cs"), "cityscapes", "w"))
    assert r.status_code == 201, r.text
    ds = wait_dataset(stack.http, r.json()["id"])
    assert ds["layout"] == "cityscapes" and ds["num_classes"] == 19 and ds["ignore_index"] == 255
    px = ds["report"]["class_pixels"]
    assert px["road"] > 0 and px["car"] > 0 and px["sky"] > 0 and px["person"] == 0
    assert ds["report"]["ignored_pixels"] > 0  # label id 0 maps to 255


def test_upload_with_bad_files_is_invalid_and_refuses_jobs(stack, camvid_tiny, tmp_path):
    src = tmp_path / "bad"
    shutil.copytree(camvid_tiny, src)
    masks = sorted((src / "trainannot").glob("*.png"))
    m = np.array(Image.open(masks[0]))
    m[3, 3] = 99
    Image.fromarray(m).save(masks[0])
    Image.open(masks[1]).resize((48, 36)).save(masks[1])
    ds = wait_dataset(stack.http, upload(stack.http, zip_dir(src, "bad")).json()["id"], want="invalid")
    files = {k: [b["file"] for b in v] for k, v in ds["report"]["bad_files"].items()}
    assert files == {"mask_values": [f"trainannot/{masks[0].name}"], "size_mismatch": [f"trainannot/{masks[1].name}"]}
    r = stack.http.post("/api/v1/jobs/search", json=fake_search_body(ds["id"]))
    assert r.status_code == 409 and r.headers["content-type"].startswith("application/problem+json")


def _hostile():
    def z(members, attrs=None):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in members:
                info = zipfile.ZipInfo(name)
                if attrs and name in attrs:
                    info.external_attr = attrs[name] << 16
                zf.writestr(info, data)
        return buf.getvalue()

    def t(name, kind, linkname=""):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            ok = tarfile.TarInfo("train/a.txt")
            ok.size = 1
            tf.addfile(ok, io.BytesIO(b"1"))
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname = kind, linkname
            tf.addfile(ti)
        return buf.getvalue()

    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (30 * 2**20))
    inner = z([("a.txt", b"1")])
    return {
        "traversal": (z([("ok/a.txt", b"1"), ("../../evil.txt", b"x")]), "unsafe_path"),
        "absolute": (z([("/tmp/evil.txt", b"x")]), "unsafe_path"),
        "backslash": (z([("..\\evil.txt", b"x")]), "unsafe_path"),
        "zip_symlink": (z([("link", b"/etc/passwd")], {"link": 0o120777}), "link"),
        "tar_symlink": (t("train/link", tarfile.SYMTYPE, "/etc/passwd"), "link"),
        "tar_hardlink": (t("train/hard", tarfile.LNKTYPE, "train/a.txt"), "link"),
        "tar_device": (t("train/dev", tarfile.CHRTYPE), "special_file"),
        "bomb": (bomb.getvalue(), "compression_ratio"),
        "nested": (z([("data/inner.zip", inner)]), "nested_archive"),
        "not_an_archive": (os.urandom(4096), "unsupported_archive"),
    }


@pytest.mark.parametrize("case", sorted(_hostile()))
def test_hostile_archives_are_refused_and_leave_nothing(stack, case):
    data, reason = _hostile()[case]
    root = stack.base / "data"
    snapshot = {p for p in root.rglob("*") if "cache" not in p.parts and "work" not in p.parts and "logs" not in p.parts}
    n = len(stack.http.get("/api/v1/datasets", params={"limit": 200}).json()["items"])
    r = upload(stack.http, data)
    assert r.status_code == 422, r.text
    body = r.json()
    assert r.headers["content-type"].startswith("application/problem+json")
    assert body["reason"] == reason and body["type"] == "/problems/archive-refused", body
    assert str(root) not in json.dumps(body)
    after = {p for p in root.rglob("*") if "cache" not in p.parts and "work" not in p.parts and "logs" not in p.parts}
    new = {p for p in after - snapshot if not p.name.endswith((".db-journal", ".db-wal", ".db-shm"))}
    assert new == set(), new
    assert not list((uploads_dir(stack) / ".incoming").iterdir())
    assert not (root.parent / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()
    assert len(stack.http.get("/api/v1/datasets", params={"limit": 200}).json()["items"]) == n


@pytest.fixture(scope="module")
def small_cap_stack(tmp_path_factory, datasets_root):
    """An API-only stack whose upload cap is 64 KiB (no worker needed: refusals happen in the request)."""
    st, db, prefix = make_stack("cap", tmp_path_factory, datasets_root, None, upload_max_bytes=65536)
    yield st
    st.stop()
    drop_pg_db(db)
    redis_cleanup(prefix)


def test_upload_over_the_cap_is_413_counted_while_streaming(small_cap_stack):
    http = small_cap_stack.http

    def body():  # chunked: no Content-Length, so the cap must be counted while streaming
        for _ in range(40):
            yield os.urandom(4096)

    r = http.post(UPLOAD, params={"name": "big"}, content=body(), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 413 and r.json()["type"] == "/problems/upload-too-large", r.text
    r = http.post(UPLOAD, params={"name": "big"}, content=os.urandom(70_000))  # declared length over the cap
    assert r.status_code == 413
    incoming = small_cap_stack.base / "data" / "uploads" / ".incoming"
    assert not incoming.exists() or not list(incoming.iterdir())
    assert http.get("/api/v1/datasets").json()["items"] == []


def test_bad_upload_parameters_are_422_naming_the_field(stack, camvid_tiny):
    r = stack.http.post(UPLOAD, params={"name": "x", "num_classes": 1}, content=b"x")
    assert r.status_code == 422 and any(e["field"].endswith("num_classes") for e in r.json()["errors"]), r.text
    r = stack.http.post(UPLOAD, params={"name": "x"}, content=b"")
    assert r.status_code == 422 and "empty upload" in r.json()["detail"]


def test_dataset_in_use_cannot_be_deleted(stack, camvid_tiny, tmp_path):
    http = stack.http
    src = folder_layout(camvid_tiny, tmp_path / "d")
    ds = wait_dataset(http, upload(http, zip_dir(src, "d"), num_classes=11).json()["id"])
    extracted = uploads_dir(stack) / "default" / ds["sha256"]
    assert extracted.is_dir()
    job = http.post("/api/v1/jobs/search", json=fake_search_body(ds["id"], epochs=30, steps=50)).json()
    r = http.delete(f"/api/v1/datasets/{ds['id']}")
    assert r.status_code == 409 and r.json()["jobs"] == [job["id"]], r.text
    assert http.get(f"/api/v1/datasets/{ds['id']}").status_code == 200 and extracted.is_dir()
    http.post(f"/api/v1/jobs/{job['id']}/cancel")
    wait_until(lambda: http.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "cancelled", 60, "cancel")
    assert http.delete(f"/api/v1/datasets/{ds['id']}").status_code == 204
    assert http.get(f"/api/v1/datasets/{ds['id']}").status_code == 404
    assert ds["id"] not in {d["id"] for d in http.get("/api/v1/datasets", params={"limit": 200}).json()["items"]}
    assert not extracted.exists()
    assert http.delete(f"/api/v1/datasets/{ds['id']}").status_code == 404


def test_cli_upload_show_delete(stack, camvid_tiny, tmp_path):
    import subprocess

    from svc_helpers import PY, REPO

    src = folder_layout(camvid_tiny, tmp_path / "c")
    (tmp_path / "c.tar.gz").write_bytes(tar_dir(src, "c", "w:gz"))

    def gas(*args):
        return subprocess.run([PY, "-m", "client.cli", "--url", stack.url, "--json", *args], cwd=str(REPO), capture_output=True,
                              text=True, timeout=120, env=stack.env)

    out = gas("datasets", "upload", "cli-up", str(tmp_path / "c.tar.gz"), "--num-classes", "11")
    assert out.returncode == 0, out.stderr
    ds = json.loads(out.stdout)
    assert ds["status"] == "ready" and ds["layout"] == "folder"  # the CLI waited for validation
    shown = json.loads(gas("datasets", "show", ds["id"]).stdout)
    assert shown["report"]["splits"]["train"]["images"] == 4
    assert gas("datasets", "delete", ds["id"]).returncode == 0
    assert gas("datasets", "show", ds["id"]).returncode != 0
