"""The web console in a real headless Chromium (Debian's), driven by Playwright.

Run by console_browser.rs against a live `rampart server`:
    python browser_test.py BASE_URL OUT_DIR ADMIN_PASSWORD ANALYST_PASSWORD DEVICE_ID
Exit status 0 when every check passed; screenshots of each page in OUT_DIR.
Never downloads a browser: it launches /usr/bin/chromium.
"""

import os
import re
import sys

from playwright.sync_api import expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def shot(page, out, name):
    path = os.path.join(out, f"{name}.png")
    page.screenshot(path=path, full_page=True)
    print(f"screenshot {path}")


def login(page, base, user, password):
    page.goto(f"{base}/login")
    page.get_by_label("User").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page).not_to_have_url(re.compile(r"/login"))


def logout(page):
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login$"))


def main():
    base, out, admin_pw, analyst_pw, device = sys.argv[1:6]
    os.makedirs(out, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        # The isolate and release buttons ask for a confirmation: say yes.
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))

        # No session: any page goes to the login form.
        page.goto(f"{base}/events")
        expect(page).to_have_url(re.compile(r"/login\?next=%2Fevents"))
        shot(page, out, "01-login")

        # Log in, search with the keyboard ("/" focuses the box), check the rows.
        login(page, base, "root", admin_pw)
        # Logged in at `/`: the overview, with counts that link to their searches.
        expect(page).to_have_url(re.compile(r"/$"))
        expect(page.locator("svg.chart")).to_be_visible()
        expect(page.locator("a.total").nth(1)).to_contain_text("1 blocks")
        shot(page, out, "00-overview")
        page.locator("a.total").nth(1).click()
        expect(page.locator("main table tbody tr")).to_have_count(1)
        page.keyboard.press("/")
        expect(page.locator("input[name=q]")).to_be_focused()
        page.keyboard.press("Control+a")
        page.keyboard.type("action = block")
        page.keyboard.press("Enter")
        rows = page.locator("main table tbody tr")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("blocked.test")
        expect(rows.first).to_contain_text("blocked hosts")
        shot(page, out, "02-events-search")

        # Choose a column with the keyboard: open "Columns", tick "Bytes out",
        # apply. The table gets it last, the URL keeps it, the CSV link too.
        page.locator("details.cols summary").focus()
        page.keyboard.press("Enter")
        box = page.get_by_role("checkbox", name="Bytes out")
        expect(box).to_be_visible()
        box.focus()
        page.keyboard.press("Space")
        expect(box).to_be_checked()
        page.get_by_role("button", name="Apply columns").click()
        expect(page).to_have_url(re.compile(r"[?&]cols=bytes_out(&|$)"))
        headers = page.locator("main table thead th")
        expect(headers).to_have_count(8)
        expect(headers.last).to_have_text("Bytes out")
        expect(rows).to_have_count(1)
        expect(rows.first.locator("td").last).to_have_text(re.compile(r"^[0-9]+$"))
        expect(rows.first).to_contain_text("blocked.test")
        expect(page.get_by_role("link", name="CSV")).to_have_attribute(
            "href", re.compile(r"cols=time%2Ctype%2Caction%2Cuser%2Cdevice%2Ctarget%2Crule%2Cbytes_out$"))
        page.locator("details.cols summary").click()
        shot(page, out, "02b-events-columns")
        page.emulate_media(color_scheme="dark")
        shot(page, out, "02c-events-columns-dark")
        page.emulate_media(color_scheme="light")

        # A bad query shows the caret.
        page.locator("input[name=q]").fill("user = alice and")
        page.locator("input[name=q]").press("Enter")
        expect(page.locator("pre.error")).to_contain_text("^")
        shot(page, out, "03-query-error")

        # Detail of the blocked request, with its OCSF record and a value search.
        page.goto(f"{base}/events?q=action+%3D+block")
        page.locator("main table tbody tr a").first.click()
        expect(page.locator("pre.ocsf")).to_contain_text('"class_uid": 4002')
        shot(page, out, "04-event-detail")
        page.get_by_title("Search for host = this value").click()
        expect(page.locator("main table tbody tr").first).to_contain_text("blocked.test")

        # Alerts.
        page.get_by_role("link", name="Alerts").click()
        expect(page.locator("main table tbody tr").first).to_contain_text("watched.test")
        page.get_by_label("Acknowledgement note").first.fill("looked at it")
        page.get_by_role("button", name="Acknowledge").first.click()
        expect(page.locator("main table tbody tr").first).to_contain_text("by root")
        expect(page.locator("main table tbody tr").first).to_contain_text("looked at it")
        shot(page, out, "05-alerts")

        # Devices: the enrolled device is listed, offline and released.
        page.get_by_role("link", name="Devices").click()
        row = page.locator("table.devices tbody tr", has_text=device)
        expect(row).to_contain_text("offline")
        expect(row).to_contain_text("released")
        shot(page, out, "08-devices")

        # Isolate it with a reason: the device page shows the request, pending
        # until an agent confirms (this device runs no agent).
        row.get_by_role("link", name=device).click()
        expect(page.locator("h1")).to_contain_text(device)
        # The isolation form: the page also has the revoke form, with its own
        # reason and confirmation.
        isolation = page.locator("form.isolation")
        isolation.get_by_label("Reason").fill("beaconing to a C2 host")
        isolation.get_by_role("checkbox").check()
        page.get_by_role("button", name="Isolate device").click()
        expect(page.locator("#isolation-desired")).to_have_text("isolated")
        expect(page.locator("#isolation-state")).to_have_text("pending")
        expect(page.get_by_role("status")).to_contain_text("isolated requested")
        assert any("Isolate" in m for m in dialogs), f"no confirmation asked: {dialogs}"
        shot(page, out, "09-device-isolated")
        page.goto(f"{base}/devices?state=isolated")
        expect(page.locator("table.devices tbody tr", has_text=device)).to_have_count(1)

        # Release it.
        page.goto(f"{base}/devices/{device}")
        isolation = page.locator("form.isolation")
        isolation.get_by_label("Reason").fill("false positive")
        isolation.get_by_role("checkbox").check()
        page.get_by_role("button", name="Release device").click()
        expect(page.locator("#isolation-desired")).to_have_text("released")
        shot(page, out, "10-device-released")

        # Both actions are audit events in the event search. The store commits
        # in groups (up to a few hundred ms, longer on a loaded machine): search
        # again until both are there, as a user would press Enter again.
        rows = page.locator("main table tbody tr")
        for _ in range(40):
            page.goto(f"{base}/events")
            page.locator("input[name=q]").fill(f'type = audit and device = "{device}"')
            page.locator("select[name=range]").select_option("1h")
            page.locator("input[name=q]").press("Enter")
            page.wait_for_load_state()
            if (rows.filter(has_text="device.isolate").count() == 1
                    and rows.filter(has_text="device.release").count() == 1):
                break
            page.wait_for_timeout(500)
        expect(rows.filter(has_text="device.isolate")).to_have_count(1)
        expect(rows.filter(has_text="device.release")).to_have_count(1)
        expect(rows.filter(has_text="device.isolate")).to_contain_text("beaconing to a C2 host")
        shot(page, out, "11-audit-events")

        # The device page's timeline (5 minutes either side of now) has them too.
        page.goto(f"{base}/devices/{device}")
        timeline = page.locator("main table.events tbody tr")
        expect(timeline.filter(has_text="device.isolate").first).to_be_visible()
        expect(timeline.filter(has_text="device.release").first).to_be_visible()
        shot(page, out, "11b-device-timeline")

        # Explain, the same text as `rampart policy explain`.
        page.get_by_role("link", name="Policy").click()
        page.get_by_label("URL").fill("http://blocked.test/")
        page.get_by_label("User", exact=True).fill("alice")
        page.get_by_role("button", name="Explain").click()
        expect(page.locator("pre.explain")).to_contain_text("blocked hosts")
        expect(page.get_by_role("button", name="Reload policy")).to_be_visible()
        expect(page.locator("#stage-access")).to_contain_text("blocked hosts")
        shot(page, out, "06-policy-explain")

        # A state-changing form posted without its CSRF token is refused.
        refused = context.request.post(f"{base}/policy/reload", form={"x": "1"}, max_redirects=0)
        assert refused.status == 403, f"reload without CSRF token: {refused.status}"
        logout(page)

        # The analyst reads but has no admin action, and posting one is refused.
        login(page, base, "ana", analyst_pw)
        page.goto(f"{base}/policy")
        expect(page.get_by_role("button", name="Reload policy")).to_have_count(0)
        token = page.locator("input[name=csrf]").first.get_attribute("value")
        denied = context.request.post(f"{base}/policy/reload", form={"csrf": token}, max_redirects=0)
        assert denied.status == 403, f"analyst reload: {denied.status}"
        shot(page, out, "07-policy-analyst")
        page.goto(f"{base}/devices/{device}")
        expect(page.get_by_role("button", name="Isolate device")).to_have_count(0)
        denied = context.request.post(
            f"{base}/devices/{device}/isolate",
            form={"csrf": token, "reason": "curious", "confirm": "yes"},
            max_redirects=0,
        )
        assert denied.status == 403, f"analyst isolate: {denied.status}"
        shot(page, out, "12-device-analyst")
        logout(page)

        # After logout the pages are closed again.
        page.goto(f"{base}/alerts")
        expect(page).to_have_url(re.compile(r"/login\?next="))
        browser.close()
    print("console browser checks passed")


if __name__ == "__main__":
    main()
