"""Render docs/serve.png: `nestar serve`'s page for a model, driven in headless Chromium.

    python scripts/serve_screenshot.py MODEL [--out docs/serve.png] [--query 'classes=...&per_class=6']

MODEL is anything `nestar serve` takes (run directory, saved model, Hub id). Needs Chromium
(`sudo apt-get install -y chromium-headless-shell`).
"""
from __future__ import annotations

import argparse
import threading

from nestar.app.cdp import Browser
from nestar.app.server import DemoService, make_server
from nestar.pipeline import Pipeline


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--out", default="docs/serve.png")
    p.add_argument("--query", default="classes=Sneaker,Bag,Dress,Ankle boot&per_class=6&seed=0")
    p.add_argument("--width", type=int, default=1200)
    args = p.parse_args()

    service = DemoService(Pipeline.from_pretrained(args.model), source=args.model)
    server = make_server(service, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Browser(timeout=120) as browser:
            page = browser.page(args.width, 800)
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/?{args.query}&run=1")
            state = page.wait_for("!document.getElementById('go').disabled && document.body.dataset.state", 300)
            text = {k: page.evaluate(f"document.getElementById('{k}').textContent")
                    for k in ("error", "status", "stat-time")}
            if state != "done":
                raise SystemExit(f"the page shows an error: {text['error']}")
            print(f"{text['status']}; {text['stat-time']} s")
            print(f"wrote {page.screenshot(args.out)}")
    finally:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
