"""`nestar serve`: a local web page for sampling a trained model, on the standard library only.

`DemoService` validates a request (classes by name or id, guidance, schedule, temperature, head
steps, seed, samples per class), samples with the Pipeline under a lock (one generation at a time)
and returns the grid and the coarse-to-fine strip as base64 PNGs, with the sequential step count
and the time it took. `make_server` wraps it in a `ThreadingHTTPServer`:

    GET  /               the page (page.html: a form and a little JavaScript, no external resources)
    GET  /api/info       model description, class names, defaults and limits (JSON)
    POST /api/generate   JSON request -> JSON result; bad input -> HTTP 400 {"error": "..."}

Why not gradio: see docs/design.md ("nestar serve").
"""

from __future__ import annotations

import base64
import json
import math
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import torch

from nestar.pipeline import Pipeline
from nestar.utils.images import save_grid
from nestar.visualize import coarse_to_fine_strip

MAX_BODY_BYTES = 64 * 1024  # a request is a few numbers and class names


@dataclass
class Limits:
    """Bounds on one request, so that a single page cannot tie up the machine."""

    max_images: int = 64  # classes x samples per class
    max_head_steps: int = 200
    max_cfg: float = 20.0
    max_temperature: float = 5.0
    wait_s: float = (
        120.0  # how long a request queues for the (single) generation slot before HTTP 503
    )


class RequestError(ValueError):
    """Bad input in the form; the message is shown on the page (HTTP 400)."""


class BusyError(RuntimeError):
    """Another generation held the slot for longer than Limits.wait_s (HTTP 503)."""


@dataclass
class GenerateRequest:
    classes: list[int]
    per_class: int
    cfg: float
    cfg_schedule: str
    temperature: float
    num_steps: int
    seed: int


def class_names(data_cfg) -> list[str]:
    """Display names of the classes: Fashion-MNIST's names, an image folder's sub-folder names when
    the folder is on this machine, else 'class <id>'."""
    n = data_cfg.num_classes
    if data_cfg.name == "fashion_mnist":
        from nestar.data import CLASS_NAMES

        return list(CLASS_NAMES)
    root = Path(data_cfg.data_dir) if data_cfg.data_dir else None
    if root is not None and root.is_dir():
        names = sorted(d.name for d in root.iterdir() if d.is_dir())  # ImageFolderDataset's order
        if len(names) == n:
            return names
    return [f"class {i}" for i in range(n)]


def _class_lookup(names: list[str]) -> dict[str, int]:
    """Lower-cased name -> id; each '/'-separated part ('T-shirt' of 'T-shirt/top') also names it."""
    table: dict[str, int] = {}
    for i, name in enumerate(names):
        for key in [name, *name.split("/")]:
            table.setdefault(key.strip().lower(), i)
    return table


def parse_classes(value: Any, names: list[str]) -> list[int]:
    """A list or comma-separated string of class names or ids -> ids (empty: all classes), in order, deduplicated."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    items = [str(v).strip() for v in items if str(v).strip()]
    if not items:
        return list(range(len(names)))
    lookup, ids = _class_lookup(names), []
    for item in items:
        if item.isdigit() and int(item) < len(names):
            cid = int(item)
        elif item.lower() in lookup:
            cid = lookup[item.lower()]
        else:
            known = ", ".join(names) if len(names) <= 20 else f"{names[0]}, ..., {names[-1]}"
            raise RequestError(
                f"unknown class {item!r}: use a name ({known}) or an id from 0 to {len(names) - 1}"
            )
        if cid not in ids:
            ids.append(cid)
    return ids


def _number(form: dict, key: str, default, kind: type, lo, hi, label: str):
    """form[key] (or `default`) as int/float within [lo, hi], else RequestError naming the field."""
    raw = form.get(key)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raw = default
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = kind(raw.strip()) if isinstance(raw, str) else kind(raw)
        if kind is int and isinstance(raw, float) and raw != value:
            raise ValueError
    except (TypeError, ValueError):
        raise RequestError(
            f"{label} must be {'a whole number' if kind is int else 'a number'}, got {raw!r}"
        ) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(f"{label} must be a finite number, got {raw!r}")
    if not lo <= value <= hi:
        raise RequestError(f"{label} must be between {lo} and {hi}, got {value}")
    return value


def parse_request(form: dict, names: list[str], defaults, limits: Limits) -> GenerateRequest:
    """Validate a form (a JSON object); `defaults` is the run's SampleConfig. Raises RequestError."""
    if not isinstance(form, dict):
        raise RequestError("the request must be a JSON object")
    schedule = str(form.get("cfg_schedule") or defaults.cfg_schedule)
    if schedule not in ("constant", "linear"):
        raise RequestError(f"guidance schedule must be 'constant' or 'linear', got {schedule!r}")
    req = GenerateRequest(
        classes=parse_classes(form.get("classes"), names),
        cfg_schedule=schedule,
        per_class=_number(
            form,
            "per_class",
            min(4, limits.max_images),
            int,
            1,
            limits.max_images,
            "samples per class",
        ),
        cfg=_number(form, "cfg", defaults.cfg, float, 0.0, limits.max_cfg, "guidance scale"),
        temperature=_number(
            form,
            "temperature",
            defaults.temperature,
            float,
            0.01,
            limits.max_temperature,
            "temperature",
        ),
        num_steps=_number(
            form, "num_steps", defaults.num_steps, int, 1, limits.max_head_steps, "head steps"
        ),
        seed=_number(form, "seed", defaults.seed, int, 0, 2**31 - 1, "seed"),
    )
    total = len(req.classes) * req.per_class
    if total > limits.max_images:  # checked last: the fields' own messages are more specific
        raise RequestError(
            f"{len(req.classes)} classes x {req.per_class} samples = {total} images is over this "
            f"server's limit of {limits.max_images} per request: pick fewer classes or samples"
        )
    return req


def _png_data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


class DemoService:
    """Sampling behind the page: `info()` and `generate(form)`; one generation at a time."""

    def __init__(self, pipe: Pipeline, limits: Optional[Limits] = None, source: str = ""):
        self.pipe, self.limits, self.source = pipe, limits or Limits(), source
        self.names = class_names(pipe.config.data)
        self._lock = threading.Lock()

    def info(self) -> dict:
        cfg, model = self.pipe.config, self.pipe.model
        s = cfg.sample
        return {
            "source": self.source,
            "preset": cfg.preset,
            "model_type": cfg.model_type,
            "params": model.num_params(),
            "sequential_steps": model.sequential_steps(),
            "dataset": cfg.data.name,
            "image_size": cfg.data.image_size,
            "classes": self.names,
            "defaults": {
                "cfg": s.cfg,
                "cfg_schedule": s.cfg_schedule,
                "temperature": s.temperature,
                "num_steps": s.num_steps,
                "seed": s.seed,
                "per_class": min(4, self.limits.max_images),
            },
            "limits": asdict(self.limits),
            "precision": self.pipe.precision.name,
        }

    def generate(self, form: dict) -> dict:
        """Sample for a form; RequestError for bad input, BusyError when the slot stays taken."""
        req = parse_request(form, self.names, self.pipe.config.sample, self.limits)
        if not self._lock.acquire(timeout=self.limits.wait_s):
            raise BusyError(
                f"another generation has been running for over {self.limits.wait_s:.0f}s; try again later"
            )
        try:
            labels = torch.tensor(req.classes).repeat_interleave(req.per_class)
            t0 = time.perf_counter()
            out = self.pipe(
                labels,
                guidance_scale=req.cfg,
                cfg_schedule=req.cfg_schedule,
                temperature=req.temperature,
                num_steps=req.num_steps,
                generator=torch.Generator().manual_seed(req.seed),
                batch_size=self.limits.max_images,
            )
            seconds = time.perf_counter() - t0
        finally:
            self._lock.release()
        return {
            **self._render(out, req),
            "sequential_steps": out.sequential_steps,
            "seconds": round(seconds, 3),
            "num_images": len(labels),
            "class_names": [self.names[c] for c in req.classes],
            "settings": asdict(req),
        }

    def _render(self, out, req: GenerateRequest) -> dict:
        """The grid (one row per class) and the strip, through the same code as `nestar sample`."""
        scale = max(
            1, 96 // self.pipe.config.data.image_size
        )  # small images upscaled (nearest) for the screen
        with tempfile.TemporaryDirectory(prefix="nestar-serve-") as tmp:
            grid = save_grid(out.images, Path(tmp) / "grid.png", nrow=req.per_class, scale=scale)
            result = {
                "grid": _png_data_url(grid),
                "strip": None,
                "strip_stages": len(out.intermediates),
            }
            if out.intermediates:
                strip = coarse_to_fine_strip(
                    out,
                    rows=len(req.classes),
                    per_row=req.per_class,
                    path=Path(tmp) / "strip.png",
                    scale=scale,
                )
                result["strip"] = _png_data_url(strip)
        return result


def page_html() -> bytes:
    return resources.files("nestar.app").joinpath("page.html").read_bytes()


class _Handler(BaseHTTPRequestHandler):
    service: DemoService  # set on the subclass made by make_server
    server_version = "nestar-serve"

    def log_message(self, format: str, *args) -> None:  # one short line per request, on stderr
        sys.stderr.write(f"[serve] {self.address_string()} {format % args}\n")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, page_html(), "text/html; charset=utf-8")
        elif path == "/api/info":
            self._json(HTTPStatus.OK, self.service.info())
        elif path == "/api/generate":
            self._json(
                HTTPStatus.METHOD_NOT_ALLOWED, {"error": "POST a JSON object to /api/generate"}
            )
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {path}"})

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/api/generate":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {self.path}"})
            return
        if self.headers.get_content_type() != "application/json":
            # Also keeps other web sites out: a cross-origin JSON POST needs a CORS preflight, never granted here.
            self._json(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send the request as application/json"}
            )
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY_BYTES:
            self._json(
                HTTPStatus.BAD_REQUEST,
                {"error": f"the request body must be 1 to {MAX_BODY_BYTES} bytes of JSON"},
            )
            return
        try:
            form = json.loads(self.rfile.read(length))
            self._json(HTTPStatus.OK, self.service.generate(form))
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._json(HTTPStatus.BAD_REQUEST, {"error": "the request body is not valid JSON"})
        except RequestError as e:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except BusyError as e:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 -- a bug: the traceback goes to the server log, one line to the page
            traceback.print_exc()
            self._json(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                {
                    "error": f"generation failed ({type(e).__name__}: {e}); the server log has the details"
                },
            )


def make_server(
    service: DemoService, host: str = "127.0.0.1", port: int = 8000
) -> ThreadingHTTPServer:
    """A threaded HTTP server for `service` (port 0: any free port; see `server.server_address`)."""
    handler = type("Handler", (_Handler,), {"service": service})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True  # Ctrl+C does not wait for open connections
    return server
