"""The real server: `twice serve` (gunicorn) on 127.0.0.1, spoken to over HTTP; gunicorn settings."""

from __future__ import annotations

import os
import runpy
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests
from flask import Flask
from gunicorn.config import Config

from conftest import ROOT, TEST_IMAGE_SIZE, make_options
from imagegen import image_bytes, make_image, write_images
from twice.indexer import reindex
from twice.web import app as api
from twice.web.serve import gunicorn_settings, settings_from_env

# The server and the reindex subprocesses must build the same model as the test fixture.
CHILD_ENV = {
    **os.environ,
    "TWICE_IMAGE_SIZE": str(TEST_IMAGE_SIZE),
    "TWICE_DEVICE": "cpu",
    "TWICE_ALLOW_DOWNLOAD": "0",
    "TWICE_WORKERS": "0",
    "TWICE_BATCH_SIZE": "8",
    "OMP_NUM_THREADS": "1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(base: str, process: subprocess.Popen, seconds: float = 120.0) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}: {process.stderr.read()[-3000:]}")
        try:
            response = requests.get(f"{base}/health", timeout=30)
            if response.status_code == 200:
                return response.json()
        except (requests.ConnectionError, requests.Timeout):  # not listening, or still loading
            pass
        time.sleep(0.3)
    pytest.fail(f"no healthy server at {base} after {seconds}s")


@pytest.fixture
def server(tmp_path, embedder):
    """`twice serve` over a small real index, one worker, on a free port; stopped with SIGTERM."""
    options = make_options(tmp_path / "data")
    paths = write_images(tmp_path / "images", 4)
    reindex([tmp_path / "images"], options, embedder, progress=False)
    port = free_port()
    command = [
        sys.executable, "-m", "twice", "--data-dir", str(options.data_dir), "serve",
        "--port", str(port), "--workers", "1", "--threads", "2", "--log-dir", str(tmp_path / "logs"),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=tmp_path, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        yield base, process, options, paths
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# `twice reindex` that waits for a line on stdin after its imports (started beside the server,
# so the two slow starts overlap).
REINDEX_ON_CUE = "import sys; from twice.cli import main; sys.stdin.readline(); sys.exit(main(sys.argv[1:]))"


def test_twice_serve_answers_over_http_and_picks_up_a_reindex(server, tmp_path, embedder):
    base, process, options, paths = server
    reindexer = subprocess.Popen(
        [sys.executable, "-c", REINDEX_ON_CUE, "-q", "--data-dir", str(options.data_dir),
         "reindex", str(tmp_path / "more")],
        env=CHILD_ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    health = wait_for_health(base, process)
    assert health["index"]["vectors"] == 4 and health["model"]["version"] == embedder.version

    with open(paths[1], "rb") as handle:
        response = requests.post(f"{base}/search", params={"k": 2}, files={"image": handle}, timeout=30)
    assert response.status_code == 200
    top = response.json()["results"][0]
    assert top["source"] == str(paths[1]) and top["exact"] and top["verdict"] == "duplicate"
    thumb = requests.get(base + top["thumb_url"], timeout=30)
    assert thumb.status_code == 200 and thumb.headers["Content-Type"] == "image/jpeg"
    page = requests.get(f"{base}/", timeout=30)
    assert page.status_code == 200 and '<form id="upload-form"' in page.text
    bad = requests.post(f"{base}/search", files={"image": ("x.jpg", b"not an image")}, timeout=30)
    assert bad.status_code == 415 and bad.json()["error"]["code"] == "not_image"

    # A reindex in another process: the running worker serves the new index, no restart.
    more = write_images(tmp_path / "more", 2, start=300)
    reindexer.stdin.write("go\n")
    reindexer.stdin.flush()
    out, err = reindexer.communicate(timeout=300)
    assert reindexer.returncode == 0, err[-3000:]
    health = requests.get(f"{base}/health", timeout=30).json()
    assert health["index"]["vectors"] == 6 and health["index"]["reloads"] == 1
    with open(more[1], "rb") as handle:
        top = requests.post(f"{base}/search", files={"image": handle}, timeout=30).json()["results"][0]
    assert top["source"] == str(more[1]) and top["exact"]

    added = requests.post(
        f"{base}/images", files={"image": ("new.png", image_bytes(make_image(900)))}, timeout=30
    )
    assert added.status_code == 201 and added.json()["created"]

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    access_log = (tmp_path / "logs" / "access.log").read_text()
    assert "POST /search" in access_log and "POST /images" in access_log
    assert not (tmp_path / "logs" / "gunicorn.pid").exists()  # removed on a clean stop


def test_gunicorn_conf_and_the_lazy_app(tmp_path, monkeypatch):
    monkeypatch.setenv("TWICE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TWICE_BIND", "127.0.0.1:8123")
    monkeypatch.setenv("TWICE_WEB_WORKERS", "2")
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    known = Config().settings
    given = {name: value for name, value in settings.items() if name in known}
    assert given["bind"] == ["127.0.0.1:8123"] and given["workers"] == 2
    assert given["accesslog"].startswith(str(tmp_path / "data" / "logs"))
    assert callable(given["post_worker_init"]) and given["preload_app"] is False
    monkeypatch.setattr(api, "_app", None)
    app = api.app  # what `gunicorn api:app` asks for: built now, with no model and no data dir
    assert isinstance(app, Flask) and api.app is app
    assert api.service_of(app).options.data_dir == tmp_path / "data"
    assert api.service_of(app)._embedder is None
    assert not (tmp_path / "data" / "index").exists()


def test_settings_from_the_environment(tmp_path):
    settings = settings_from_env(
        {
            "TWICE_DATA_DIR": str(tmp_path / "data"),
            "TWICE_BIND": "0.0.0.0:9001",
            "TWICE_API_TOKEN": "twice_settings-test",  # an open bind needs a token (test_api_auth.py)
            "TWICE_WEB_WORKERS": "3",
            "TWICE_WEB_THREADS": "5",
        }
    )
    assert settings["bind"] == ["0.0.0.0:9001"]
    assert (settings["workers"], settings["threads"], settings["worker_class"]) == (3, 5, "gthread")
    assert settings["accesslog"] == str(tmp_path / "data" / "logs" / "access.log")
    assert settings["errorlog"] == str(tmp_path / "data" / "logs" / "error.log")
    defaults = settings_from_env({"TWICE_DATA_DIR": str(tmp_path / "data"), "TWICE_LOG_DIR": "-"})
    assert defaults["bind"] == ["127.0.0.1:8000"] and defaults["accesslog"] == "-"
    assert 1 <= defaults["workers"] <= 4 and defaults["threads"] >= 2


@pytest.mark.parametrize(
    "environ, word",
    [
        ({"TWICE_BIND": "localhost"}, "TWICE_BIND"),
        ({"TWICE_WEB_WORKERS": "many"}, "TWICE_WEB_WORKERS"),
        ({"TWICE_WEB_THREADS": "0"}, "threads"),
    ],
)
def test_bad_settings_are_refused_by_name(tmp_path, environ, word):
    with pytest.raises(ValueError, match=word):
        settings_from_env({"TWICE_LOG_DIR": "-", **environ})


def test_bad_port_is_refused(tmp_path):
    with pytest.raises(ValueError, match="70000"):
        gunicorn_settings(make_options(tmp_path), port=70000, log_dir="-")
