#!/usr/bin/env python3
"""Measures (not a test) what the dashboard's overview and `/metrics` cost on a farm
with a long history.

It runs one real 4 s job through `drake up`, stops the farm, copies that job's rows
(job, tasks) N times into the same SQLite database with earlier timestamps (one a
second back, so the last hour holds 3,600 of them), adds a failed attempt for every
third, then starts `drake coordinator` on it and times, with curl, the overview
fragment a signed-in dashboard refreshes and a Prometheus scrape of `/metrics`: the
first request of each, then the median of the next ones.

Usage: bench/history.py DRAKE [JOBS] [WORK_DIR]
  e.g. bench/history.py target/release/drake 300000 /tmp/history
"""
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def start(cmd, log):
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def wait_up(url):
    for _ in range(200):
        try:
            sh("curl", "-sf", "-o", "/dev/null", f"{url}/healthz")
            return
        except subprocess.CalledProcessError:
            time.sleep(0.1)
    sys.exit(f"{url} did not come up")


def grow(db, jobs):
    """Copies the database's one job `jobs` times, each a second earlier."""
    c = sqlite3.connect(db)
    cols = lambda t: [r[1] for r in c.execute(f"PRAGMA table_info({t})")]
    c.execute(f"CREATE TEMP TABLE n AS WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < {jobs}) SELECT i FROM k")
    suffix = "printf('-%07d', n.i)"

    def copy(table, alias, changes, where=""):
        names = cols(table)
        select = ", ".join(changes.get(name, f"{alias}.{name}") for name in names)
        c.execute(f"INSERT INTO {table} ({', '.join(names)}) SELECT {select} FROM {table} {alias}, n {where}")

    earlier = lambda col, alias: f"{alias}.{col} - n.i * 1000"
    copy("jobs", "j", {"id": f"j.id || {suffix}", "idempotency_key": "NULL",
                       "created_at": earlier("created_at", "j"), "updated_at": earlier("updated_at", "j")})
    copy("tasks", "t", {"id": f"t.id || {suffix}", "job_id": f"t.job_id || {suffix}",
                        **{col: earlier(col, "t") for col in ("finished_at", "leased_at", "queued_at")}},
         "WHERE length(t.job_id) = 36")
    now = int(time.time() * 1000)
    c.execute(f"INSERT INTO task_failures (task_id, job_id, kind, error, at) SELECT 'x', 'y', 'failed', 'injected', {now} - n.i * 1000 FROM n WHERE n.i % 3 = 0")
    c.commit()
    counts = [c.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("jobs", "tasks", "task_failures")]
    c.close()
    return counts


def timed(url, cookie, path):
    out = sh("curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "-b", cookie, f"{url}{path}")
    status, seconds = out.split()
    assert status == "200", f"{path}: {status}"
    return float(seconds)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    drake = os.path.abspath(sys.argv[1])
    jobs = int(sys.argv[2]) if len(sys.argv) > 2 else 300_000
    work = sys.argv[3] if len(sys.argv) > 3 else "/tmp/drake-history"
    shutil.rmtree(work, ignore_errors=True)
    data = os.path.join(work, "data")
    os.makedirs(data)
    clip = os.path.join(work, "clip.mp4")
    sh("ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=320x180:r=25:d=4", "-f", "lavfi", "-i", "sine=d=4",
       "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest", clip)
    url = "http://127.0.0.1:18659"
    farm = start([drake, "up", "--data", data, "--listen", url[7:]], os.path.join(work, "up.log"))
    try:
        wait_up(url)
        token = open(os.path.join(data, "admin-token")).read().strip()
        sh(drake, "submit", clip, "--coordinator", url, "--token", token, "--wait")
    finally:
        farm.terminate()
        farm.wait()
    started = time.time()
    counts = grow(os.path.join(data, "drake.db"), jobs)
    print(f"history: {counts[0]} jobs, {counts[1]} tasks, {counts[2]} failed attempts ({time.time() - started:.0f} s to write)")
    coordinator = start([drake, "coordinator", "--data", data, "--listen", url[7:]], os.path.join(work, "coordinator.log"))
    try:
        wait_up(url)
        link = re.search(r"http\S+", open(os.path.join(data, "login-link")).read()).group(0)
        cookie = os.path.join(work, "cookies")
        sh("curl", "-s", "-o", "/dev/null", "-c", cookie, "-b", cookie, link)
        for path in ["/ui/fragment/overview", "/metrics"]:
            first = timed(url, cookie, path)
            rest = [timed(url, cookie, path) for _ in range(7)]
            print(f"{path}: first {first * 1000:.0f} ms, then median {statistics.median(rest) * 1000:.0f} ms "
                  f"(min {min(rest) * 1000:.0f}, max {max(rest) * 1000:.0f})")
    finally:
        coordinator.terminate()
        coordinator.wait()


if __name__ == "__main__":
    main()
