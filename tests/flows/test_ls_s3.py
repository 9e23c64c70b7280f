"""Display images in S3 (``labelstudio.image_storage: s3``) against a real Label Studio 1.23.2 and a real S3 API
(moto_server on 127.0.0.1, ``s3_server``): push uploads the PNGs and connects the project's S3 source storage,
Label Studio streams (or presigns) the image for the browser, the points pull back in pixels, and wrong S3
credentials are one line without the secret, creating nothing."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from flows.ls_client import Adapter
from flows.ls_connection import LabelStudioError, resolve_connection
from flows.ls_pull import pull
from flows.ls_push import load_inflight, push_round
from flows.ls_server import server_env
from flows.s3 import s3_location
from nucleate.annotations import keypoint_results
from nucleate.config import Params, ParamsError, params_from_dict
from nucleate.io import read_table, write_table
from tasks import points as points_stage

BUCKET, PREFIX = "nucleate-ls", "lab/images"


def s3_params(bucket: str = BUCKET, presign: bool = False) -> Params:
    return params_from_dict({"labels": ["nucleus", "micronucleus"], "labelstudio": {
        "project_title": "nucleate s3", "image_storage": "s3", "s3_bucket": bucket, "s3_prefix": PREFIX,
        "s3_presign": presign}})


def test_s3_settings_come_from_params_and_the_environment_only():
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
           "AWS_SECRET_ACCESS_KEY": "s3cr3t-value", "AWS_DEFAULT_REGION": "eu-west-3"}
    loc = s3_location(BUCKET, "/lab/images/", env)
    assert (loc.bucket, loc.prefix, loc.endpoint, loc.region) == (BUCKET, PREFIX, "http://127.0.0.1:9000", "eu-west-3")
    assert loc.uri("a.png") == f"s3://{BUCKET}/{PREFIX}/a.png" and loc.secret_access_key.reveal() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(loc) + loc.where()
    with pytest.raises(ValueError, match=r"labelstudio.s3_bucket is empty: set it in params.yaml"):
        s3_location("", PREFIX, env)
    with pytest.raises(ParamsError, match=r"labelstudio.image_storage: .*s3"):
        params_from_dict({"labelstudio": {"image_storage": "gcs"}})
    assert Params().labelstudio.image_storage == "local" and Params().labelstudio.s3_presign is False


def test_the_local_server_lets_label_studio_reach_a_private_s3_endpoint():
    def ssrf(endpoint):
        base = {"AWS_ENDPOINT_URL": endpoint} if endpoint else {}
        return server_env(Path("d"), Path("f"), email="e", password="p", token="t", base=base).get(
            "SSRF_PROTECTION_ENABLED")
    assert ssrf("http://127.0.0.1:9000") == ssrf("http://10.1.2.3:9000") == "false"   # moto here, a lab's MinIO
    assert ssrf("https://8.8.8.8") is None and ssrf(None) is None                       # AWS itself: guard stays on


@pytest.mark.slow
def test_s3_images_are_pushed_resolved_for_the_browser_and_pulled_in_pixels(s3_env, ls_server, rounds, tmp_path,
                                                                             monkeypatch):
    s3 = s3_env.client()
    s3.create_bucket(Bucket=BUCKET)
    conn = dataclasses.replace(resolve_connection(ls_server.data_dir, env={}), files_root=None)  # a remote server
    params = s3_params()
    ids = rounds.pick(2)
    inflight = tmp_path / "inflight.parquet"
    with Adapter(conn, retries=1, backoff_s=0.2) as adapter:
        report = push_round(adapter, params, rounds.manifest, ids, round=1, inflight=inflight)
        pid = report.project_id
        assert sorted(report.created) == sorted(ids)
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"])
        assert keys == sorted(f"{PREFIX}/{i}.png" for i in ids)
        exported = {t["data"]["image_id"]: t["data"]["image"] for t in adapter.export(pid, report.created.values())}
        assert exported == {i: f"s3://{BUCKET}/{PREFIX}/{i}.png" for i in ids}          # what the task stores

        # what the browser gets: Label Studio resolves the task's s3:// URI to its own proxy URL and streams the
        # object (presign false), or redirects to a presigned URL on the S3 endpoint (presign true)
        image_id, task_id = ids[0], report.created[ids[0]]
        stored = s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{image_id}.png")["Body"].read()
        assert Image.open(io.BytesIO(stored)).size == rounds.sizes[image_id]
        auth = {"Authorization": f"Token {conn.token.reveal()}"}
        with httpx.Client(base_url=conn.url, headers=auth, timeout=60) as http:
            url = http.get(f"/api/tasks/{task_id}").json()["data"]["image"]
            assert url.startswith(f"/tasks/{task_id}/resolve/?fileuri=")
            got = http.get(url)
            assert got.status_code == 200 and got.content == stored
            loc = s3_location(BUCKET, PREFIX)
            adapter.ensure_s3_storage(pid, loc, presign=True)
            redirect = http.get(url)
            # (not fetched: moto's credential checks do not cover presigned query strings, it answers 500)
            location = redirect.headers["location"]
            assert redirect.status_code == 303
            assert location.startswith(f"{s3_env.url}/{BUCKET}/{PREFIX}/{image_id}.png?")
            assert "Signature=" in location and s3_env.secret not in location
            listed = http.get("/api/storages/s3", params={"project": pid}).text
        assert len(adapter._ls.import_storage.s3.list(project=pid)) == 1     # ensure is idempotent

        # an annotation on the S3-backed task pulls back in pixels, as for local-files tasks
        w, h = rounds.sizes[image_id]
        xy = np.array([[0.0, 0.0], [w, h], [0.31 * w, 0.62 * h]])
        adapter.annotate(task_id, keypoint_results(xy, ["nucleus", "micronucleus", "nucleus"], w, h))
        pulled = pull(adapter, pid, annotations=tmp_path / "annotations", rounds=[1], inflight=inflight)
        assert pulled.inflight_cleared == 1
        write_table("manifest", rounds.manifest, tmp_path / "manifest.parquet")
        points_stage.run(params.labelstudio, params.labels, annotations=tmp_path / "annotations",
                         manifest=tmp_path / "manifest.parquet", out=tmp_path / "points.parquet",
                         consensus=tmp_path / "consensus.parquet", report=tmp_path / "report.json")
        points = read_table("points", tmp_path / "points.parquet").to_pylist()
        assert {p["image_id"] for p in points} == {image_id}
        np.testing.assert_allclose(sorted((p["x"], p["y"]) for p in points), sorted(map(tuple, xy)), atol=1e-6)

        # wrong S3 credentials: `nucleate ls push` prints one line naming the bucket and the fix, no secret, and
        # creates or records nothing
        wrong = "wrong" + s3_env.secret[5:]
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
        before = load_inflight(inflight).to_pylist()
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(dataclasses.asdict(params)))
        write_table("selection", {"round": [2], "rank": [0], "image_id": rounds.pick(3)[2:],
                                  "strategy": ["random"], "min_distance": [0.0]}, tmp_path / "selection.parquet")
        result = CliRunner().invoke(app, ["ls", "push", "--selection", str(tmp_path / "selection.parquet"),
                                          "--manifest", str(tmp_path / "manifest.parquet"), "--inflight",
                                          str(inflight), "--params", str(tmp_path / "params.yaml"),
                                          "--data-dir", str(ls_server.data_dir)])
        message = result.output.strip()
        assert result.exit_code == 1 and message.startswith("error: S3 ") and "\n" not in message, result.output
        assert f"s3://{BUCKET}/{PREFIX}" in message and "credentials were rejected" in message
        assert "AWS_SECRET_ACCESS_KEY" in message and wrong not in message
        assert len(adapter.tasks(pid)) == 2 and load_inflight(inflight).to_pylist() == before
        with pytest.raises(LabelStudioError) as info:                  # Label Studio refuses the wrong key too
            adapter.ensure_s3_storage(pid, s3_location(BUCKET, PREFIX))
        assert "\n" not in str(info.value) and wrong not in str(info.value) and BUCKET in str(info.value)
        assert wrong not in repr(adapter) + repr(s3_location(BUCKET, PREFIX))
    assert s3_env.secret not in listed + (ls_server.data_dir / "server.log").read_text(errors="replace")
