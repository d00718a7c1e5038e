"""`nestar serve`: request validation, the HTTP endpoint, and the page driven in headless Chromium."""
from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request

import pytest
import torch
from PIL import Image

from nestar.app.cdp import Browser, find_chromium
from nestar.app.server import DemoService, Limits, RequestError, make_server, parse_classes
from nestar.data import CLASS_NAMES
from nestar.pipeline import Pipeline
from nestar.registry import build_model, get_preset, resolve
from nestar.tokenizers import build_tokenizer


def tiny_pipeline() -> Pipeline:
    """An untrained nestar-tiny (built in well under a second: the page only needs images to show)."""
    torch.manual_seed(0)
    cfg = resolve(get_preset("nestar-tiny"))
    cfg.sample.precision = "fp32"
    tok = build_tokenizer(cfg.tokenizer, cfg.data.image_size, cfg.data.channels)
    return Pipeline(build_model(cfg), tok.eval(), cfg)


@pytest.fixture(scope="module")
def server():
    service = DemoService(tiny_pipeline(), Limits(max_images=16, max_head_steps=8, wait_s=0.5), source="tiny")
    srv = make_server(service, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def post(url: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + "/api/generate", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def png(data_url: str) -> Image.Image:
    assert data_url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))


def test_classes_by_name_or_id():
    names = list(CLASS_NAMES)
    assert parse_classes("Sneaker, bag,0", names) == [7, 8, 0]
    assert parse_classes(["T-shirt", "ankle boot", "7", "Sneaker"], names) == [0, 9, 7]  # deduplicated
    assert parse_classes("", names) == list(range(10))
    for bad in ("Sneakr", "10", "-1"):
        with pytest.raises(RequestError, match="unknown class"):
            parse_classes(bad, names)


def test_http_generate(server):
    _, url = server
    status, out = post(url, {"classes": "Sneaker,Bag", "per_class": "3", "num_steps": 2, "seed": 5,
                             "cfg": 1.5, "cfg_schedule": "constant", "temperature": 0.9})
    assert status == 200, out
    assert out["sequential_steps"] == 10 and out["num_images"] == 6 and out["seconds"] > 0
    assert out["class_names"] == ["Sneaker", "Bag"] and out["strip_stages"] == 3
    grid, strip = png(out["grid"]), png(out["strip"])
    scale, cell = 3, 32 * 3 + 2 * 3  # 32x32 images upscaled 3x; 2-pixel padding, also upscaled
    assert grid.size == (3 * cell + 2 * scale, 2 * cell + 2 * scale)  # 3 per class, one row per class
    # 3 modules, one row per class, under a caption band ('module 1' / '4 tokens' over each column)
    assert strip.size[0] == 3 * cell + 2 * scale and strip.size[1] > 2 * cell + 2 * scale
    again = post(url, {"classes": "7,8", "per_class": 3, "num_steps": 2, "seed": 5, "cfg": 1.5,
                       "cfg_schedule": "constant", "temperature": 0.9})[1]
    assert again["grid"] == out["grid"]  # same seed and settings, same images


@pytest.mark.parametrize("body, message", [
    ({"classes": "Sneakr"}, "unknown class 'Sneakr'"),
    ({"num_steps": -3}, "head steps must be between 1 and 8, got -3"),
    ({"num_steps": 2.5}, "head steps must be a whole number"),
    ({"per_class": 100000}, "samples per class must be between 1 and 16"),
    ({"classes": "", "per_class": 2}, "10 classes x 2 samples = 20 images is over this server's limit of 16"),
    ({"cfg": "nan"}, "guidance scale must be a finite number"),
    ({"temperature": "hot"}, "temperature must be a number"),
    ({"cfg_schedule": "cosine"}, "guidance schedule must be 'constant' or 'linear'"),
    ([1, 2], "must be a JSON object"),
    (b"{not json", "not valid JSON"),
])
def test_http_bad_input_is_a_400_with_a_message(server, body, message):
    status, out = post(server[1], body)
    assert status == 400 and message in out["error"] and "Traceback" not in out["error"]


def test_http_bounds_and_routes(server):
    srv, url = server
    status, out = post(url, b"x" * (64 * 1024 + 1))
    assert status == 400 and "bytes of JSON" in out["error"]
    form = urllib.request.Request(url + "/api/generate", data=b"classes=Bag")  # a plain form post, as from another site
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(form, timeout=10)
    assert e.value.code == 415
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url + "/nope", timeout=10)
    assert e.value.code == 404
    page = urllib.request.urlopen(url + "/", timeout=10).read().decode()
    assert 'id="form"' in page and 'id="grid"' in page
    info = json.loads(urllib.request.urlopen(url + "/api/info", timeout=10).read())
    assert info["classes"] == list(CLASS_NAMES) and info["sequential_steps"] == 10
    service = srv.RequestHandlerClass.service
    with service._lock:  # a generation in progress: the next request waits wait_s, then gets a 503
        status, out = post(url, {"classes": "Bag", "per_class": 1})
    assert status == 503 and "another generation" in out["error"]


# The page's state once a request has been answered and the button is enabled again: 'done' or 'error'.
FINISHED = ("!document.getElementById('go').disabled && ['done', 'error'].includes(document.body.dataset.state) "
            "&& document.body.dataset.state")


def test_page_in_headless_chromium(server, tmp_path, require):
    """The real page in a real browser: pick classes by name, generate, see the images; then bad input."""
    require(find_chromium() is not None, "no Chromium (sudo apt-get install -y chromium-headless-shell)")
    _, url = server
    with Browser(timeout=60) as browser:
        page = browser.page(1200, 900)
        page.goto(url + "/")
        page.wait_for("document.body.dataset.ready === '1'")
        page.evaluate("""(() => {
            for (const b of document.querySelectorAll('#class-buttons .chip'))
                if (['Sneaker', 'Bag'].includes(b.textContent)) b.click();
            document.getElementById('per_class').value = '2';
            document.getElementById('num_steps').value = '2';
            document.getElementById('go').click();
        })()""")
        assert page.wait_for(FINISHED, 60) == "done", page.evaluate("document.getElementById('error').textContent")
        shown = page.evaluate("""(() => {
            const g = document.getElementById('grid'), s = document.getElementById('strip');
            return {grid: [g.complete, g.naturalWidth, g.naturalHeight, g.getBoundingClientRect().width],
                    strip: [s.complete, s.naturalWidth], steps: document.getElementById('stat-steps').textContent,
                    secs: document.getElementById('stat-time').textContent,
                    caption: document.getElementById('grid-caption').textContent,
                    classes: document.getElementById('classes').value}; })()""")
        assert shown["grid"][0] and shown["grid"][1:3] == [2 * 102 + 6, 2 * 102 + 6] and shown["grid"][3] > 0
        assert shown["strip"] == [True, 3 * 102 + 6]
        assert shown["steps"] == "10" and float(shown["secs"]) > 0
        assert shown["classes"] == "Sneaker, Bag" and "Sneaker, Bag" in shown["caption"]
        shot = page.screenshot(tmp_path / "page.png")
        assert Image.open(shot).size[0] == 1200

        page.evaluate("document.getElementById('num_steps').value = '-1'; document.getElementById('go').click()")
        assert page.wait_for(FINISHED, 60) == "error"
        error = page.evaluate("document.getElementById('error').textContent")
        assert "head steps must be between 1 and 8, got -1" in error
        assert page.evaluate("getComputedStyle(document.getElementById('error')).display") != "none"


def test_cli_serve_binds_loopback_and_answers(tmp_path):
    """The real command: `nestar serve DIR --port 0` prints its URL on 127.0.0.1 and serves the page."""
    import os
    import re
    import subprocess
    import sys

    model_dir = tiny_pipeline().save_pretrained(tmp_path / "model")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "nestar.cli.main", "serve", str(model_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("open "):
                break
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", "".join(lines))
        assert match, "".join(lines)
        info = json.loads(urllib.request.urlopen(match.group(0) + "api/info", timeout=30).read())
        assert info["preset"] == "nestar-tiny" and info["source"] == str(model_dir)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_cli_serve_port_in_use(tmp_path, capsys):
    import socket

    from nestar.cli.main import main

    model_dir = tiny_pipeline().save_pretrained(tmp_path / "model")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert main(["serve", str(model_dir), "--port", str(s.getsockname()[1])]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_class_names_of_an_image_folder(tmp_path):
    from nestar.app.server import class_names
    from nestar.data import DataConfig

    for name in ("zebra", "apple"):
        (tmp_path / name).mkdir()
    assert class_names(DataConfig(name="folder", data_dir=str(tmp_path), num_classes=2)) == ["apple", "zebra"]
    gone = DataConfig(name="folder", data_dir=str(tmp_path / "elsewhere"), num_classes=3)
    assert class_names(gone) == ["class 0", "class 1", "class 2"]  # the folder is not on this machine
