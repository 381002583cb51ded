"""The README's screenshot of `streamcad view` (docs/images/viewer.png), taken as tests/test_viewer.py
looks at the page.

    python -m streamcad.benchmarks.viewer_screenshot --out docs/images/viewer.png

    sweep: (the repo's BUS-BRA sample, looped) -> Pipeline (the shipped model, preview on)
      -> ZeroMQ on 127.0.0.1 -> ViewerServer on 127.0.0.1 -> headless Chromium, driven over the
         DevTools protocol by tests/test_viewer.py's Browser; saliency heat-map and lesion box on
      -> once the trace spans --settle-s seconds and the picture shown has a lesion box:
         a PNG of the page down to the panel's bottom edge, --width CSS pixels wide

Needs a checkout (the Browser lives in tests/), Chromium and the viewer extra (aiohttp).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import threading
from pathlib import Path

import cv2

from streamcad.extras import missing_module_message

REPO = Path(__file__).resolve().parents[1]
# the trace has filled (the page keeps its last traceS seconds), a score is shown, and the picture shown is a scored frame with a lesion box
_READY = ("(p => !!(p && p.score && p.trace.length > 1 && p.preview && p.preview.lesion"
          " && p.trace[p.trace.length - 1][0] - p.trace[0][0] >= Math.min({settle}, traceS - 1) * 1e9))(panels.get('probe0'))")
_PAGE = ("(() => { const r = document.querySelector('.panel').getBoundingClientRect();"
         " return {x: 0, y: 0, width: document.documentElement.clientWidth, height: Math.ceil(r.bottom) + 12}; })()")


def take(out: Path, width: int, settle_s: float) -> tuple[int, int]:
    """Run the pipeline, the viewer and Chromium; write the screenshot to `out`. -> (width, height) px."""
    sys.path.insert(0, str(REPO))
    from streamcad.config import config_from_dict
    from streamcad.pipeline import Pipeline
    from streamcad.viewer.server import ViewerServer
    from tests.helpers_stream import free_port
    from tests.test_viewer import Browser

    ep = f"tcp://127.0.0.1:{free_port()}"
    cfg = config_from_dict({"dashboard": False, "source": {"uri": "sweep:", "loop": True},
                            "publish": {"endpoint": ep, "stream": "probe0"}, "preview": {"enabled": True, "fps": 10}})
    with Pipeline(cfg) as pipe:
        server = ViewerServer([ep], host="127.0.0.1", port=free_port())
        server.serve_in_thread()
        run = threading.Thread(target=pipe.run, daemon=True)
        run.start()
        browser = Browser(server.url, size=(width, 900))
        try:
            browser.wait_js("document.getElementById('show-saliency') !== null")
            browser.js("document.getElementById('show-lesion').checked = true;"
                       " const s = document.getElementById('show-saliency'); if (!s.checked) s.click();")
            ready = _READY.format(settle=settle_s)
            for _ in range(20):  # the next preview may come between the check and the picture
                browser.wait_js(ready, timeout=settle_s + 60)
                png = browser.screenshot(browser.js(_PAGE))
                if browser.js(ready):
                    break
            else:
                raise TimeoutError("the page never held a lesion box long enough for a screenshot")
        finally:
            browser.close()
            server.stop()
            pipe.stop()
            run.join(10)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), png, [cv2.IMWRITE_PNG_COMPRESSION, 9]):  # lossless; the smallest file
        raise OSError(f"--out {out}: could not write the PNG")
    return png.shape[1], png.shape[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "viewer.png")
    ap.add_argument("--width", type=int, default=1000, help="page width in CSS pixels (= PNG pixels)")
    ap.add_argument("--settle-s", type=float, default=30.0,
                    help="seconds of score trace before the picture (30: the page's whole trace window)")
    args = ap.parse_args(argv)
    if importlib.util.find_spec("aiohttp") is None:
        print(f"viewer_screenshot: {missing_module_message('aiohttp')}", file=sys.stderr)
        return 2
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        print("viewer_screenshot: no chromium on PATH (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    try:
        w, h = take(args.out, args.width, args.settle_s)
    except (TimeoutError, RuntimeError, OSError) as exc:  # Chromium or the page did not do what we waited for
        print(f"viewer_screenshot: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: {w}x{h}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
