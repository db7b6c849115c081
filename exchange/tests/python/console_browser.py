"""The web console in headless Chromium (selenium + chromedriver), driven by
exchange/tests/console.rs.

Usage: console_browser.py CONFIG.json

CONFIG names the console (http://host:port), the Postgres address (to make the records
the pages must show), the passwords, and the folder for screenshots. Exits non-zero,
naming the check, on the first failure; prints a JSON summary of what it saw.
"""

import json
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psycopg
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.support.ui import WebDriverWait

CONFIG = json.loads(Path(sys.argv[1]).read_text())
BASE = CONFIG["console"]
PG_HOST, PG_PORT = CONFIG["pg"].rsplit(":", 1)
PASSWORDS = CONFIG["passwords"]
SHOTS = Path(CONFIG["screenshots"])
SHOTS.mkdir(parents=True, exist_ok=True)
SEEN = {}

# Selenium must not try to download a driver or a browser: the machine's own are used.
os.environ.setdefault("SE_OFFLINE", "true")
os.environ.setdefault("SE_AVOID_STATS", "true")


def check(ok, what):
    if not ok:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


# --- Records for the pages to show: one allowed query, two refused ones (one with markup).
def pg(user, purpose):
    return psycopg.connect(
        host=PG_HOST,
        port=PG_PORT,
        user=user,
        dbname="exchange",
        password=PASSWORDS[user],
        options=f"-c exchange.purpose={purpose}",
        connect_timeout=20,
        autocommit=True,
    )


ALLOWED_SQL = "SELECT gender, count(*) AS n FROM police.residents GROUP BY gender ORDER BY gender"
with pg("civil_analyst", "elderly_care_planning") as c:
    rows = c.execute(ALLOWED_SQL).fetchall()
    check(len(rows) > 0, "civil_analyst's allowed query returns rows")
REFUSED_SQL = "SELECT phone, '<script>alert(1)</script>' AS x FROM police.residents"
with pg("hotline_analyst", "complaint_handling") as c:
    try:
        c.execute(REFUSED_SQL)
        check(False, "hotline_analyst may not see police.residents.phone, a join key")
    except psycopg.errors.InsufficientPrivilege:
        pass


# --- Raw HTTP: status codes, headers, cookies, CSRF.
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def http(path, method="GET", data=None, cookies=None, headers=None):
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    req = urllib.request.Request(BASE + path, data=body, method=method)
    if cookies:
        req.add_header("Cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()))
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        r = OPENER.open(req, timeout=20)
        return r.status, r.headers, r.headers.get_all("Set-Cookie") or [], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.headers.get_all("Set-Cookie") or [], e.read().decode()


status, headers, _, _ = http("/audit/activity")
check(status == 303 and headers.get("Location") == "/login", f"no session: redirected to /login ({status})")
status, headers, set_cookies, body = http("/login")
check(status == 200, "login form")
csp = headers.get("Content-Security-Policy", "")
check("default-src 'none'" in csp and "frame-ancestors 'none'" in csp, f"content security policy: {csp}")
check(headers.get("X-Frame-Options") == "DENY", "X-Frame-Options")
check(headers.get("X-Content-Type-Options") == "nosniff", "nosniff")
check(any("HttpOnly" in c and "SameSite=Strict" in c for c in set_cookies), f"login cookie flags: {set_cookies}")
nonce_cookie = set_cookies[0].split(";")[0].split("=", 1)
nonce = body.split('name="nonce" value="')[1].split('"')[0]
# A login posted from another site has no nonce cookie.
status, _, _, _ = http("/login", "POST", {"user": "auditor", "password": PASSWORDS["auditor"], "nonce": nonce})
check(status == 403, f"login without the form's cookie refused ({status})")
status, _, _, _ = http(
    "/login", "POST", {"user": "auditor", "password": "wrong", "nonce": nonce}, cookies={nonce_cookie[0]: nonce_cookie[1]}
)
check(status == 401, f"wrong password: 401 ({status})")
status, headers, set_cookies, _ = http(
    "/login",
    "POST",
    {"user": "auditor", "password": PASSWORDS["auditor"], "nonce": nonce},
    cookies={nonce_cookie[0]: nonce_cookie[1]},
)
check(status == 303, f"auditor logs in over plain HTTP ({status})")
session = [c for c in set_cookies if c.startswith("exchange=")]
check(session and "HttpOnly" in session[0] and "SameSite=Strict" in session[0], f"session cookie flags: {set_cookies}")
auditor_cookie = {"exchange": session[0].split(";")[0].split("=", 1)[1]}
status, _, _, _ = http("/audit/verify", "POST", {"csrf": "forged"}, cookies=auditor_cookie)
check(status == 403, f"verify with a forged CSRF token refused ({status})")
status, _, _, page = http("/", cookies=auditor_cookie)
csrf = page.split('name="csrf" value="')[1].split('"')[0]
status, _, _, _ = http(
    "/audit/verify", "POST", {"csrf": csrf}, cookies=auditor_cookie, headers={"Origin": "http://evil.example"}
)
check(status == 403, f"verify posted from another origin refused ({status})")
status, headers, _, csv = http("/audit/refusals?format=csv&table=refusals", cookies=auditor_cookie)
check(status == 200 and headers.get("Content-Type", "").startswith("text/csv"), "refusals as CSV")
check("hotline_analyst" in csv and csv.startswith('"record","time","principal"'), f"CSV names the refusal: {csv[:300]}")
status, _, _, page = http("/audit/refusals", cookies=auditor_cookie)
check("<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page, "statement text escaped")
SEEN["csv_rows"] = csv.count("\r\n") - 1


# --- The browser.
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CONFIG.get("chromium", "/usr/bin/chromium")
    for a in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1300",
        f"--user-data-dir={tempfile.mkdtemp(prefix='exchange-chromium-')}",
    ]:
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(executable_path=CONFIG.get("chromedriver", "/usr/bin/chromedriver")), options=opts)


def click(d, element):
    """Click, then wait until the page it leads to has replaced this one."""
    old = d.find_element(By.TAG_NAME, "html")
    element.click()
    def gone(_):
        try:
            old.is_enabled()
            return False
        except WebDriverException:
            # Stale, or (chromedriver, mid-navigation) "node does not belong to the document".
            return True

    WebDriverWait(d, 20).until(gone)
    WebDriverWait(d, 20).until(lambda d: d.execute_script("return document.readyState") == "complete")


def login(d, user):
    d.delete_all_cookies()
    d.get(BASE + "/login")
    d.find_element(By.ID, "user").send_keys(user)
    d.find_element(By.ID, "password").send_keys(PASSWORDS[user])
    click(d, d.find_element(By.CSS_SELECTOR, "form.login button"))
    found = d.find_elements(By.ID, "principal")
    check(found and found[0].text == user, f"{user} logged in: {d.current_url} {d.find_element(By.TAG_NAME, 'body').text[:300]}")


def shot(d, name):
    # The window as tall as the page (within reason), so the screenshot shows all of it.
    height = d.execute_script("return document.documentElement.scrollHeight")
    d.set_window_size(1400, max(700, min(height + 140, 3000)))
    d.save_screenshot(str(SHOTS / f"{name}.png"))


def cookie_of(d):
    return {"exchange": d.get_cookie("exchange")["value"]}


d = browser()
try:
    # Auditor.
    login(d, "auditor")
    shot(d, "home-auditor")
    d.get(BASE + "/audit/activity")
    chart = d.find_element(By.CSS_SELECTOR, "#activity-chart svg")
    total = int(chart.get_attribute("data-total"))
    series = {r.get_attribute("data-series") for r in chart.find_elements(By.CSS_SELECTOR, "rect[data-series]")}
    check(total >= 2, f"activity chart counts the statements just made ({total})")
    check({"civil_analyst", "hotline_analyst"} <= series, f"activity chart series: {series}")
    SEEN["activity_total"] = total
    shot(d, "audit-activity")
    d.get(BASE + "/audit/activity?by=purpose")
    purposes = {r.get_attribute("data-series") for r in d.find_elements(By.CSS_SELECTOR, "#activity-chart rect[data-series]")}
    check({"elderly_care_planning", "complaint_handling"} <= purposes, f"by purpose: {purposes}")
    d.get(BASE + "/audit/refusals")
    rows = d.find_elements(By.CSS_SELECTOR, "#refusals tbody tr")
    texts = [r.text for r in rows]
    check(any("hotline_analyst" in t and "police.residents" in t for t in texts), f"refusal table: {texts[:3]}")
    SEEN["refusals"] = len(rows)
    shot(d, "audit-refusals")
    # Drill down to the refusal's record.
    link = next(r for r in rows if "hotline_analyst" in r.text).find_element(By.CSS_SELECTOR, "a")
    click(d, link)
    fields = d.find_element(By.CSS_SELECTOR, "#fields").text
    check(REFUSED_SQL in fields and "refused" in fields, f"record page: {fields[:300]}")
    shot(d, "audit-record")
    d.get(BASE + "/audit/access")
    check("police.residents" in d.find_element(By.CSS_SELECTOR, "#tables").text, "per-table access")
    check("gender" in d.find_element(By.CSS_SELECTOR, "#columns").text, "per-column access")
    shot(d, "audit-access")
    d.get(BASE + "/audit/exports")
    shot(d, "audit-exports")
    d.get(BASE + "/audit/statements")
    shot(d, "audit-statements")
    d.get(BASE + "/audit/log")
    click(d, d.find_element(By.ID, "verify"))
    status = d.find_element(By.ID, "verify-status")
    check("ok" in status.get_attribute("class"), f"verify now: {status.text}")
    SEEN["verified_records"] = int(d.find_element(By.ID, "records").text)
    shot(d, "audit-log")
    click(d, d.find_element(By.CSS_SELECTOR, "header form button"))
    check(d.current_url.endswith("/login"), "logged out")
    d.get(BASE + "/audit/activity")
    check(d.current_url.endswith("/login"), "after logout the session is gone")

    # Analyst: no auditor pages; their own history; what they may see.
    login(d, "civil_analyst")
    d.get(BASE + "/audit/activity")
    check(d.find_element(By.TAG_NAME, "h1").text == "Not for your role", "analyst sees no auditor page")
    status, _, _, _ = http("/audit/activity", cookies=cookie_of(d))
    check(status == 403, f"analyst on an auditor page: 403 ({status})")
    status, _, _, _ = http("/steward/grants", cookies=cookie_of(d))
    check(status == 403, f"analyst on a steward page: 403 ({status})")
    d.get(BASE + "/me/history")
    history = d.find_element(By.CSS_SELECTOR, "#history").text
    check(ALLOWED_SQL in history and "<script>" not in history and "hotline" not in history, "own history only")
    shot(d, "me-history")
    d.get(BASE + "/me/access")
    access = d.find_element(By.CSS_SELECTOR, "#access").text
    check("police.residents" in access and "mask(name_cn)" in access, f"what I may see: {access[:300]}")
    check("principal.district" not in access and "filtered by the owner's row filter" in access, "another agency's row filter is named, not shown")
    shot(d, "me-access")

    # Steward: their agency's grants and reads, nothing else.
    login(d, "police_steward")
    d.get(BASE + "/steward/grants")
    titles = [h.text for h in d.find_elements(By.CSS_SELECTOR, "section h2")]
    check(titles and all(t.startswith("police.") for t in titles), f"steward's tables: {titles}")
    grants = d.find_element(By.TAG_NAME, "main").text
    check("residents-civil-elderly" in grants and "district = principal.district" in grants, "own grants, with their row filters")
    shot(d, "steward-grants")
    d.get(BASE + "/steward/reads")
    reads = d.find_element(By.TAG_NAME, "main").text
    check("civil_analyst" in reads and "police.residents" in reads, "who read our data")
    check("GROUP BY" not in reads, "no statement texts on the steward's page")
    shot(d, "steward-reads")
    status, _, _, _ = http("/audit/log", cookies=cookie_of(d))
    check(status == 403, f"steward on an auditor page: 403 ({status})")
    SEEN["steward_tables"] = titles
finally:
    d.quit()

# --- Bounds an unauthenticated client meets (review 45).
# HEAD is recorded as HEAD.
status, _, _, _ = http("/audit/activity", "HEAD", cookies=auditor_cookie)
check(status == 200, f"HEAD of a page ({status})")
# Failed logins of one name: recorded one by one up to a bound, then counted.
status, _, set_cookies, body = http("/login")
nonce_cookie = set_cookies[0].split(";")[0].split("=", 1)
nonce = body.split('name="nonce" value="')[1].split('"')[0]
for i in range(25):
    status, _, _, _ = http(
        "/login", "POST", {"user": f"nobody{i}", "password": "x", "nonce": nonce}, cookies={nonce_cookie[0]: nonce_cookie[1]}
    )
    check(status == 401, f"unknown user {i}: 401 ({status})")
# One address holds at most 16 connections: the 17th is closed at once, and the console
# answers again once they are gone.
import socket
import time

host, port = BASE.split("://")[1].split(":")
held = []
for _ in range(16):
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\na")
    held.append(sock)
time.sleep(0.3)
extra = socket.create_connection((host, int(port)), timeout=10)
extra.sendall(b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n")
try:
    refused = extra.recv(100) == b""
except ConnectionResetError:
    refused = True
check(refused, "a 17th connection of one address is closed")
# A body trickled in is cut 10 s after its headers: the slots come back without the
# client's help.
time.sleep(11)
for sock in held:
    sock.settimeout(5)
    answer = sock.recv(100)
    check(answer.startswith(b"HTTP/1.1 408"), f"a slow body is cut: {answer!r}")
    sock.close()
time.sleep(0.3)
status, _, _, _ = http("/login")
check(status == 200, f"the console answers once the slow connections are gone ({status})")

print(json.dumps(SEEN))
