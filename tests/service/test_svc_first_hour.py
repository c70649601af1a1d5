"""A new user's path (issue 13), over real HTTP and through the CLI, with PostgreSQL, Redis and a
Celery worker: a 0/255 binary dataset made from CamVid frames (road vs not road, grayscale images)
with a label map, validated, searched and retrained; the suggested map of an unmapped upload; a
re-upload with other parameters; setup warnings (empty class, mostly ignored); search warnings at
submission; the CLI's tables, exit codes and closed pipes; cancel of a running search within a step."""
from __future__ import annotations

import io
import json
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client import GasClient
from svc_helpers import CAMVID, PY, REPO, TINY_BUDGET, TINY_SEARCH, running_stack, wait_dataset, wait_until

pytestmark = pytest.mark.services
UPLOAD = "/api/v1/datasets/uploads"
ROAD = 3  # CamVid class id of road
SIZE = (96, 72)  # width, height of the made-up dataset (low resolution keeps the tests fast)


def gas(stack, *args, json_out: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "client.cli", "--url", stack.url, *(["--json"] if json_out else []), *args],
                          cwd=str(REPO), capture_output=True, text=True, timeout=300, env=stack.env)


def binary_road_dataset(dst: Path, per_split: int = 8, no_road_in_train: bool = False) -> Path:
    """folder layout: grayscale PNG frames and 0/255 masks (255 = road), from the shared CamVid."""
    for split, n in (("train", per_split), ("val", per_split // 2)):
        (dst / split / "images").mkdir(parents=True)
        (dst / split / "masks").mkdir(parents=True)
        stems = (CAMVID / f"{split}.txt").read_text().split()[:n]
        for stem in stems:
            with Image.open(CAMVID / split / f"{stem}.jpg") as im:
                im.convert("L").resize(SIZE, Image.BILINEAR).save(dst / split / "images" / f"{stem}.png")
            with Image.open(CAMVID / f"{split}annot" / f"{stem}.png") as m:
                lab = np.asarray(m.resize(SIZE, Image.NEAREST))
            mask = np.where(lab == ROAD, 255, 0).astype(np.uint8)
            if no_road_in_train and split == "train":
                mask[:] = 0  # road never occurs in the training split
            Image.fromarray(mask, mode="L").save(dst / split / "masks" / f"{stem}.png")
    return dst


def zipped(src: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, f"roads/{p.relative_to(src)}")
    return buf.getvalue()


def upload(http, data: bytes, **params):
    return http.post(UPLOAD, params={"name": "roads", "num_classes": 2, **params}, content=data,
                     headers={"Content-Type": "application/octet-stream"})


def test_binary_0_255_dataset_with_a_label_map_validates_searches_and_retrains(real_stack, tmp_path):
    stack, http = real_stack, real_stack.http
    data = zipped(binary_road_dataset(tmp_path / "roads"))
    (tmp_path / "roads.zip").write_bytes(data)

    # without a label map the 0/255 masks are invalid, and the report says which map would make them valid
    r = upload(http, data, class_names=["other", "road"])
    assert r.status_code == 201, r.text
    bad = wait_dataset(http, r.json()["id"], want="invalid")
    assert bad["report"]["suggested_label_map"] == {"values": {"0": 0, "255": 1}}
    assert any("--label-map 0=0,255=1" in w for w in bad["warnings"]), bad["warnings"]
    reason = bad["report"]["bad_files"]["mask_values"][0]["reason"]
    assert "label_map" in reason and "255" in reason
    out = gas(stack, "datasets", "show", bad["id"])  # human output, exit code 3 for an invalid dataset
    assert out.returncode == 3 and "--label-map 0=0,255=1" in out.stderr + out.stdout, out

    # the same archive uploaded again through the CLI with the label map: a new dataset over the same files
    out = gas(stack, "datasets", "upload", "roads", str(tmp_path / "roads.zip"), "--num-classes", "2",
              "--class-names", "other,road", "--label-map", "0=0,255=1")
    assert out.returncode == 0, out.stderr
    assert "label map   0->0, 255->1" in out.stdout and "status      ready" in out.stdout, out.stdout
    ds = http.get("/api/v1/datasets", params={"limit": 5}).json()["items"][0]
    assert ds["id"] != bad["id"] and ds["status"] == "ready" and ds["same_archive_as"] == [bad["id"]]
    assert ds["label_map"] == {"values": {"0": 0, "255": 1}, "ignore": [], "unlisted": "error"}
    px = ds["report"]["class_pixels"]
    assert px["road"] > 0 and px["other"] > 0 and ds["report"]["raw_values"].keys() == {"0", "255"}
    assert ds["report"]["splits"]["train"]["grayscale_images"] == 8 and ds["warnings"] == []
    # the same archive with the same parameters is the same dataset
    again = upload(http, data, class_names=["other", "road"], label_map='{"values": {"0": 0, "255": 1}}')
    assert again.status_code == 200 and again.json()["id"] == ds["id"], again.text
    # a label map naming a class the dataset does not have is a 422 naming label_map, nothing created
    r = upload(http, data, label_map="0=0,255=2")
    assert r.status_code == 422 and "label_map" in r.text and "not a class id" in r.text, r.text

    with GasClient(stack.url, api_key=stack.api_key) as c:
        job = c.submit_search(ds["id"], settings=TINY_SEARCH, **TINY_BUDGET)
        # 4 training images a half, batches of 2: the 202 body warns and names the settings to change
        assert any("architecture step" in w and "settings.epochs" in w for w in job["warnings"]), job["warnings"]
        done = c.wait(job["id"], timeout=300, poll=0.5)
        assert done["status"] == "succeeded", (done, stack.log_tail("worker"))
        assert done["warnings"] == job["warnings"]
        assert [e for e in c.iter_events(job["id"]) if e["type"] == "warning"]
        rt = c.submit_retrain(ds["id"], search_job_id=job["id"],
                              settings={"epochs": 1, "batch_size": 2, "dataset_limit": 8, "advanced": {"fps_iters": 5}})
        rdone = c.wait(rt["id"], timeout=300, poll=0.5)
        assert rdone["status"] == "succeeded", (rdone, stack.log_tail("worker"))
        res = rdone["result"]
        assert 0.0 <= res["miou"] <= 1.0 and 0.0 < res["trivial_baseline_miou"] < 1.0
        assert res["miou_split"] == "val" and res["miou_selection"] == "last epoch"
        report = json.loads(c.download(rt["id"], "report.json", tmp_path).read_text())
        # the model was trained and evaluated on the mapped classes (0/1), never on raw 255s
        assert report["class_names"] == ["other", "road"] and report["miou_split"] == "val"


def test_empty_class_and_mostly_ignored_warnings(fake_stack, tmp_path):
    http = fake_stack.http
    src = binary_road_dataset(tmp_path / "noroad", per_split=4, no_road_in_train=True)
    r = upload(http, zipped(src), name="no road in train", label_map="0=0,255=1")
    assert r.status_code == 201, r.text
    ds = wait_dataset(http, r.json()["id"])  # still usable: ready, with a warning
    kinds = {w["kind"]: w for w in ds["report"]["warnings"]}
    assert kinds["empty_class"]["classes"] == [1] and kinds["empty_class"]["split"] == "train"
    assert any("no pixels in the train split" in w for w in ds["warnings"])
    out = gas(fake_stack, "datasets", "show", ds["id"])
    assert out.returncode == 0 and "warnings:\n  - class(es) 1 (class_1) have no pixels" in out.stdout, out
    # with 0 ignored, the training split (no road) is all ignore: flagged, and both classes are empty there
    r = upload(http, zipped(src), name="mostly ignored", label_map="0=ignore,255=1")
    ds = wait_dataset(http, r.json()["id"])
    kinds = {w["kind"]: w for w in ds["report"]["warnings"]}
    assert kinds["mostly_ignored"]["split"] == "train" and kinds["mostly_ignored"]["ignored_fraction"] == 1.0
    assert kinds["empty_class"]["classes"] == [0, 1], ds["report"]["warnings"]


def test_search_warnings_and_a_small_epoch_count_adapts_the_warmup(fake_stack, dataset_id):
    http = fake_stack.http
    body = {"dataset_id": dataset_id, "budget": {"latency_ms": 50.0, "height": 64, "width": 96},
            "settings": {"epochs": 1, "batch_size": 8}}
    r = http.post("/api/v1/jobs/search", json=body)  # one epoch: the warm-up default (15) adapts, no 422
    assert r.status_code == 202, r.text
    w = r.json()["warnings"]
    assert any("warmup_epochs was not given" in x and "--warmup-epochs" in x for x in w), w
    assert any("fewer than a batch" in x and "settings.batch_size" in x for x in w), w
    assert http.get(f"/api/v1/jobs/{r.json()['id']}").json()["warnings"] == w
    body["settings"] = {"epochs": 2, "warmup_epochs": 5}
    r = http.post("/api/v1/jobs/search", json=body)
    assert r.status_code == 422 and "settings.warmup_epochs" in r.text and "settings.epochs" in r.text, r.text
    body["settings"] = {"warmup_epochs": 50}
    r = http.post("/api/v1/jobs/search", json=body)
    assert r.status_code == 422 and "default of 40 epochs" in r.text, r.text
    # issue 9: compiling the steps is accepted with what it costs said; an unknown mode is a 422 naming the field
    body["settings"] = {"epochs": 4, "warmup_epochs": 1, "advanced": {"search": {"compile": "reduce-overhead"}}}
    r = http.post("/api/v1/jobs/search", json=body)
    assert r.status_code == 202, r.text
    assert any("compile=reduce-overhead" in x and "10 minutes" in x and '"off"' in x for x in r.json()["warnings"])
    body["settings"]["advanced"]["search"]["compile"] = "turbo"
    r = http.post("/api/v1/jobs/search", json=body)
    assert r.status_code == 422 and "settings.advanced.search.compile" in r.text and "reduce-overhead" in r.text, r.text


def test_cli_reads_like_a_tool(fake_stack, dataset_id):
    out = gas(fake_stack, "jobs", "list", "--kind", "validate")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "KIND", "STATUS"] and any(" validate " in ln for ln in lines[1:]), out.stdout
    out = gas(fake_stack, "jobs", "list", "--kind", "validate", json_out=True)
    assert {j["kind"] for j in json.loads(out.stdout)["items"]} == {"validate"}
    out = gas(fake_stack, "datasets", "list")
    assert out.returncode == 0 and out.stdout.split()[:3] == ["ID", "NAME", "STATUS"] and dataset_id in out.stdout
    out = gas(fake_stack, "jobs", "list", "--kind", "nonsense")
    assert out.returncode == 2 and "invalid choice" in out.stderr
    helptext = gas(fake_stack, "datasets", "upload", "--help").stdout
    for flag in ("--label-map", "--ignore-index", "--num-classes", "--class-names", "--layout"):
        assert flag in helptext
    assert "exit codes" in helptext and "default:" in helptext
    # a reader that goes away (| head) is not a traceback
    for args in ("--json jobs list --limit 200", "jobs list", "datasets list"):  # the reader is gone before the output
        out = subprocess.run(["bash", "-c", f"{PY} -m client.cli --url {fake_stack.url} {args} | true"], cwd=str(REPO),
                             capture_output=True, text=True, timeout=120, env=fake_stack.env)
        assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr
    out = subprocess.run([PY, "-m", "client.cli", "--url", "http://127.0.0.1:9", "jobs", "list"], cwd=str(REPO),
                         capture_output=True, text=True, timeout=60, env=fake_stack.env)
    assert out.returncode == 4 and "cannot reach the service" in out.stderr and "Traceback" not in out.stderr


@pytest.fixture(scope="module")
def patient_stack(tmp_path_factory, datasets_root, shared_lut_dir):
    """A real-core stack whose cancel grace (60 s) is far longer than a step, so a cancel is seen
    stopping the search cooperatively (the session's real stack kills after 3 s)."""
    yield from running_stack("patient", tmp_path_factory, datasets_root, shared_lut_dir, cancel_grace_s=60)


def test_cancel_of_a_running_search_stops_within_a_step(patient_stack):
    stack, http = patient_stack, patient_stack.http
    ds = wait_dataset(http, http.post("/api/v1/datasets", json={"name": "tiny", "path": "camvid_tiny"}).json()["id"])
    settings = json.loads(json.dumps(TINY_SEARCH))
    settings.update(epochs=20, warmup_epochs=1)
    settings["advanced"]["search"] = {"steps_per_epoch": 50}
    job = http.post("/api/v1/jobs/search", json={"dataset_id": ds["id"], "budget": TINY_BUDGET,
                                                  "settings": settings}).json()
    box: dict = {}

    def stepping() -> bool:
        box["j"] = http.get(f"/api/v1/jobs/{job['id']}").json()
        p = box["j"]["progress"]
        return p.get("phase") in ("warmup", "search") and (p.get("step") or 0) >= 2

    wait_until(stepping, 400, "the search to take steps", lambda: box.get("j"))
    assert box["j"]["progress"].get("elapsed_s") is not None  # the progress carries its clock
    at = box["j"]["progress"]
    t0 = time.monotonic()
    assert http.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 202
    done = stack.wait_status(job["id"], ("cancelled", "succeeded", "failed"), timeout=60)
    took = time.monotonic() - t0
    events = stack.events(job["id"])
    assert done["status"] == "cancelled", done
    last = [e for e in events if e["type"] == "cancelled"][-1]
    assert "step boundary" in last["message"], [(e["type"], e["message"]) for e in events[-8:]]
    # within one step: still in the epoch it was in (20 epochs of 50 steps were asked for), no epoch ended after
    # the request, and in far less time than the 60 s grace
    assert done["progress"]["epoch"] == at["epoch"], (at, done["progress"])
    after = events[[e["type"] for e in events].index("cancel_requested"):]
    assert not [e for e in after if "done" in e["message"] and e["type"] == "progress"], after
    assert took < 45, took


def test_a_cancel_that_lands_after_the_last_step_never_ends_succeeded(fake_stack, dataset_id):
    """The fake core's seed 1001 never polls should_cancel: it runs to the end after the cancel request,
    inside the 3 s grace. The job must end cancelled (it used to end succeeded)."""
    http = fake_stack.http
    body = {"dataset_id": dataset_id, "budget": {"latency_ms": 50.0, "height": 64, "width": 96},
            "settings": {"epochs": 1, "warmup_epochs": 0, "batch_size": 2, "seed": 1001,
                         "advanced": {"search": {"steps_per_epoch": 15}}}}
    job = http.post("/api/v1/jobs/search", json=body).json()
    wait_until(lambda: (http.get(f"/api/v1/jobs/{job['id']}").json()["progress"].get("step") or 0) >= 1, 60,
               "the fake search to step")
    assert http.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 202
    done = fake_stack.wait_status(job["id"], ("cancelled", "succeeded", "failed"), timeout=60)
    assert done["status"] == "cancelled", done
    msgs = [e["message"] for e in fake_stack.events(job["id"]) if e["type"] == "cancelled"]
    assert msgs and ("results are discarded" in msgs[-1] or "grace" in msgs[-1]), msgs
