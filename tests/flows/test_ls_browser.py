"""A person's path through the Label Studio UI, in Debian's headless chromium driven by Playwright.

Log in, open a pushed task, see the image and the student's pre-annotations, click one more nucleus,
submit; the pulled points are the kept pre-annotations (origin ``prediction``) plus the click (origin
``manual``) within 1 px of where it was made. Never ``playwright install``: the browser is the
distribution's ``chromium`` package (CI: apt-get install chromium).
"""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pytest

from flows.ls_client import Adapter
from flows.ls_connection import resolve_connection
from flows.ls_push import push, render_images
from nucleate.annotations import collect_points

LABELS = ("nucleus", "micronucleus")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian chromium is not installed: apt-get install chromium (see .ci/run)")
    return path


def _open_task(page, base: str, creds: dict, pid: int, task_id: int) -> None:
    """Log in, then open the project's task list and the task's editor, as a person does. (Opening the task URL
    directly on a project nobody has opened yet races the Data Manager's first-view creation and the editor
    sometimes comes up without the pre-annotations.)"""
    page.set_default_timeout(120_000)                         # a loaded 2-core CI machine is slow
    page.goto(base + "/user/login/")
    page.fill("#email", creds["email"])
    page.fill("#password", creds["password"])
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert "/user/login" not in page.url, "login failed"
    page.goto(f"{base}/projects/{pid}/data")
    row = page.locator("[data-testid=table-row]").first
    row.wait_for()
    row.locator(".lsf-table__cell").nth(1).click()
    page.wait_for_selector(".lsf-annotation-button")
    assert f"task={task_id}" in page.url
    page.wait_for_selector("canvas")


def _guard(base: str, outside: list[str]):
    """A Playwright route handler that lets the page reach only ``base`` (and data:/blob: URLs), recording the rest."""
    def guard(route):
        if route.request.url.startswith((base, "data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()
    return guard


@pytest.mark.slow
def test_annotator_sees_pre_annotations_clicks_and_submits(ls_server, sample_manifest, tmp_path):
    from playwright.sync_api import sync_playwright

    chromium = _chromium()
    manifest, _ = sample_manifest
    row = next(r for r in manifest.to_pylist() if r["width"] != r["height"])
    image_id, w, h = row["image_id"], row["width"], row["height"]
    conn = resolve_connection(ls_server.data_dir, env={})
    adapter = Adapter(conn, retries=1, backoff_s=0.2)
    pid = adapter.ensure_project("nucleate ui", LABELS, model_version="round-001")
    adapter.ensure_storage(pid, conn.files_root / "images")
    rec = render_images(manifest, [image_id], conn.files_root)[image_id]
    pred_xy = np.array([[0.2 * w, 0.25 * h], [0.75 * w, 0.3 * h], [0.5 * w, 0.8 * h]])
    preds = pa.table({"image_id": [image_id] * 3, "x": pred_xy[:, 0], "y": pred_xy[:, 1],
                      "label": ["nucleus"] * 3, "score": [0.9, 0.8, 0.7]})
    report = push(adapter, pid, [rec], round=1, predictions=preds, model_version="round-001", labels=LABELS,
                  marker_pct=0.6)
    task_id = report.created[image_id]
    target = (0.4 * w + 0.3, 0.55 * h + 0.7)                      # far from the pre-annotations
    creds = ls_server.credentials()
    base = conn.url
    outside: list[str] = []

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
        try:
            ctx = browser.new_context(viewport={"width": 1400, "height": 900})
            ctx.route("**/*", _guard(base, outside))
            page = ctx.new_page()
            _open_task(page, base, creds, pid, task_id)
            page.screenshot(path=str(tmp_path / "opened.png"))
            page.wait_for_selector(".lsf-outliner-item")               # regions are drawn a moment later
            page.wait_for_timeout(1000)
            image = page.locator("img[src^='blob:']").first
            natural = image.evaluate("e => [e.naturalWidth, e.naturalHeight, e.complete]")
            assert natural == [w, h, True]                             # the image really loaded
            assert page.locator(".lsf-outliner-item").count() == 3     # the three pre-annotations
            page.screenshot(path=str(tmp_path / "before.png"))
            box = image.bounding_box()
            page.keyboard.press("1")                                   # label hotkey: nucleus
            page.mouse.click(box["x"] + target[0] * box["width"] / w, box["y"] + target[1] * box["height"] / h)
            page.wait_for_timeout(500)
            assert page.locator(".lsf-outliner-item").count() == 4
            page.get_by_role("button", name="Submit").click()
            page.wait_for_selector("button:has-text('Update')")        # saved: Submit became Update
            page.screenshot(path=str(tmp_path / "after.png"))
        finally:
            browser.close()
    assert outside == []                                               # the UI called nothing outside the server

    result = collect_points(adapter.export(pid, [task_id]), labels=LABELS, users=adapter.users())
    rows = result.points.to_pylist()
    assert len(rows) == 4 and {r["annotator"] for r in rows} == {creds["email"]}
    manual = [r for r in rows if r["origin"] == "manual"]
    kept = np.array(sorted((r["x"], r["y"]) for r in rows if r["origin"] == "prediction"))
    assert len(manual) == 1 and manual[0]["label"] == "nucleus"
    assert np.hypot(manual[0]["x"] - target[0], manual[0]["y"] - target[1]) < 1.0
    np.testing.assert_allclose(kept, np.array(sorted(map(tuple, pred_xy))), atol=0.01)


@pytest.mark.slow
def test_an_s3_backed_task_opens_in_the_ui_and_a_click_pulls_back_in_pixels(s3_env, ls_server, rounds, tmp_path):
    """The image lives only in S3 (moto on 127.0.0.1); Label Studio streams it to the browser (s3_presign false),
    so the page still reaches nothing but Label Studio."""
    from playwright.sync_api import sync_playwright

    from flows.ls_push import push_round
    from nucleate.config import params_from_dict

    chromium = _chromium()
    s3_env.client().create_bucket(Bucket="nucleate-ui")
    params = params_from_dict({"labels": list(LABELS), "labelstudio": {
        "project_title": "nucleate s3 ui", "image_storage": "s3", "s3_bucket": "nucleate-ui", "s3_prefix": "img"}})
    image_id = rounds.pick(1)[0]
    w, h = rounds.sizes[image_id]
    conn = resolve_connection(ls_server.data_dir, env={})
    adapter = Adapter(conn, retries=1, backoff_s=0.2)
    report = push_round(adapter, params, rounds.manifest, [image_id], round=1)
    pid, task_id = report.project_id, report.created[image_id]
    assert adapter.export(pid, [task_id])[0]["data"]["image"] == f"s3://nucleate-ui/img/{image_id}.png"
    target = (0.35 * w + 0.2, 0.6 * h + 0.4)
    creds = ls_server.credentials()
    outside: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
        try:
            ctx = browser.new_context(viewport={"width": 1400, "height": 900})
            ctx.route("**/*", _guard(conn.url, outside))
            page = ctx.new_page()
            _open_task(page, conn.url, creds, pid, task_id)
            image = page.locator("img[src^='blob:']").first
            image.wait_for()
            page.wait_for_function("() => { const i = document.querySelector(\"img[src^='blob:']\"); "
                                   "return i && i.complete && i.naturalWidth > 0; }")
            assert image.evaluate("e => [e.naturalWidth, e.naturalHeight]") == [w, h]   # the S3 image loaded
            page.screenshot(path=str(tmp_path / "s3-opened.png"))
            box = image.bounding_box()
            page.keyboard.press("1")                                   # label hotkey: nucleus
            page.mouse.click(box["x"] + target[0] * box["width"] / w, box["y"] + target[1] * box["height"] / h)
            page.wait_for_timeout(500)
            assert page.locator(".lsf-outliner-item").count() == 1
            page.get_by_role("button", name="Submit").click()
            page.wait_for_selector("button:has-text('Update')")
        finally:
            browser.close()
    assert outside == []
    rows = collect_points(adapter.export(pid, [task_id]), labels=LABELS, users=adapter.users()).points.to_pylist()
    assert len(rows) == 1 and rows[0]["image_id"] == image_id and rows[0]["origin"] == "manual"
    assert np.hypot(rows[0]["x"] - target[0], rows[0]["y"] - target[1]) < 1.0
    adapter.close()
