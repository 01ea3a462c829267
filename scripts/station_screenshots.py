"""Screenshots of the review station for the README, from a running `linecheck up`:

    .venv/bin/python scripts/station_screenshots.py http://127.0.0.1:8000 NAME PASSWORD docs/

Drives Debian's Chromium (/usr/bin/chromium) with Playwright: the queue, the first board,
and the quality page."""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def main(url: str, name: str, password: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(f"{url}/queue")
        page.fill("input[name=name]", name)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_selector("#queue tbody tr[data-event-id]")
        page.screenshot(path=out / "station-queue.png")
        page.keyboard.press("Enter")
        page.wait_for_selector("#decide")
        page.wait_for_timeout(500)  # the board image and its regions drawn
        page.screenshot(path=out / "station-board.png")
        page.goto(f"{url}/quality?hours=0")
        page.screenshot(path=out / "station-quality.png")
        browser.close()
    print(f"wrote {out}/station-{{queue,board,quality}}.png")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]))
