"""The driver of bench/chunked.sh: a coordinator and W workers (each in CPU and
cpuacct cgroups of its own, quota 2/W cores), one job per (W, mode), timed from
the job's own record. Modes (`BENCH_MODES`, default both): `chunked` (the built-in
web profile, which cuts sources of 3 minutes and more in 60 s chunks) and `whole`
(web with chunking off). `BENCH_TIMELINE=DIR` also writes each run's tasks, where
and when each ran, to DIR/timeline-W-MODE.txt.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

drake, src, work = sys.argv[1], sys.argv[2], sys.argv[3]
counts = [int(w) for w in sys.argv[4:]] or [1, 2, 4, 8]
PERIOD_US = 100_000
CORES = 2

profiles = os.path.join(work, "profiles")
os.makedirs(profiles, exist_ok=True)
web = open(os.path.join(os.path.dirname(__file__), "..", "profiles", "web.toml")).read()
with open(os.path.join(profiles, "whole.toml"), "w") as f:
    f.write(web.replace('name = "web"', 'name = "whole"') + "\n[chunking]\nmin_duration_s = 86400\n")
env = dict(os.environ, DRAKE_PROFILES_DIR=profiles)


def call(base, token, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers={"Authorization": f"Bearer {token}"})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def cgroup(kind, name):
    return f"/sys/fs/cgroup/{kind}/{name}"


def run(w, mode):
    procs, groups = [], []
    try:
        return timed_job(w, mode, procs, groups)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for g in groups:
            for kind in ("cpu", "cpuacct"):
                for _ in range(100):  # the workers' children die with them, a moment later
                    try:
                        os.rmdir(cgroup(kind, g))
                        break
                    except OSError:
                        time.sleep(0.1)


def timed_job(w, mode, procs, groups):
    data = os.path.join(work, f"farm-{w}-{mode}")
    shutil.rmtree(data, ignore_errors=True)
    coord = subprocess.Popen([drake, "coordinator", "--data", data, "--listen", "127.0.0.1:0"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = coord.stdout.readline().split()[-1]
    procs.append(coord)
    threading_drain(coord.stdout)
    token = open(os.path.join(data, "admin-token")).read().strip()
    join = call(url, token, "POST", "/api/v1/join-tokens", {"uses": w, "ttl_seconds": 3600})["token"]
    for i in range(w):
        name = f"drake-bench-{os.getpid()}-{i}"
        for kind in ("cpu", "cpuacct"):
            os.makedirs(cgroup(kind, name), exist_ok=True)
        groups.append(name)
        with open(cgroup("cpu", name) + "/cpu.cfs_period_us", "w") as f:
            f.write(str(PERIOD_US))
        with open(cgroup("cpu", name) + "/cpu.cfs_quota_us", "w") as f:
            f.write(str(PERIOD_US * CORES // w))
        p = subprocess.Popen([drake, "worker", "--coordinator", url, "--name", f"w{i}", "--slots", "1",
                              "--scratch", os.path.join(data, f"scratch-{i}")],
                             env=dict(env, DRAKE_TOKEN=join), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for kind in ("cpu", "cpuacct"):
            with open(cgroup(kind, name) + "/cgroup.procs", "w") as f:
                f.write(str(p.pid))
        procs.append(p)
    while len(call(url, token, "GET", "/api/v1/workers")["workers"]) < w:
        time.sleep(0.2)
    used_before = sum(int(open(cgroup("cpuacct", g) + "/cpuacct.usage").read()) for g in groups)
    sampler = Sampler(groups)
    out = subprocess.run(["curl", "-sf", "-H", f"Authorization: Bearer {token}", "-F", f"file=@{src}", "-F",
                          f"profile={'web' if mode == 'chunked' else 'whole'}", url + "/api/v1/jobs"],
                         check=True, capture_output=True, text=True)
    job_id = json.loads(out.stdout)["id"]
    while True:
        job = call(url, token, "GET", f"/api/v1/jobs/{job_id}")
        if job["state"] in ("succeeded", "failed", "canceled"):
            break
        time.sleep(1)
    cpu_s = (sum(int(open(cgroup("cpuacct", g) + "/cpuacct.usage").read()) for g in groups) - used_before) / 1e9
    sampler.stop()
    if job["state"] != "succeeded":
        sys.exit(f"W={w} {mode}: the job {job['state']}: {job.get('error')}")
    tasks = job["tasks"]
    if os.environ.get("BENCH_TIMELINE"):
        # Where each task ran, and when (seconds from the job's creation): what the
        # scheduler did, to read beside the table.
        t0 = job["created_at"]
        os.makedirs(os.environ["BENCH_TIMELINE"], exist_ok=True)
        with open(os.path.join(os.environ["BENCH_TIMELINE"], f"timeline-{w}-{mode}.txt"), "w") as f:
            for t in sorted(tasks, key=lambda t: t["timing"].get("leased_at") or 0):
                at = lambda k: (t["timing"].get(k) or t0) / 1000 - t0 / 1000
                f.write(f"{t['name']:>12} {t['worker'] or '-':>4} {at('leased_at'):8.1f} {at('finished_at'):8.1f}\n")
    # Timed from the job's record: created (upload stored) to the first rendition
    # published, and to the job's success (finalize included).
    playable = min(t["timing"]["finished_at"] for t in tasks if t["kind"] in ("transcode", "join")) - job["created_at"]
    done = job["updated_at"] - job["created_at"]
    chunks = job.get("chunks") or {}
    names = {x["id"]: x["name"] for x in call(url, token, "GET", "/api/v1/workers")["workers"]}
    return {"done": done / 1000, "playable": playable / 1000, "cpu": cpu_s, "ideal": cpu_s / CORES,
            "chunks": chunks.get("count", 0), "tasks": len(tasks),
            "floor": playable_floor(w, tasks, lambda t: sampler.cpu(groups[int(names[t["worker"]][1:])], t))}


class Sampler:
    """Each worker's cgroup CPU time, read every 0.2 s, so a task's CPU seconds are
    its worker's between the task's child starting and exiting (one slot each)."""

    def __init__(self, groups):
        import threading
        self.samples = {g: [] for g in groups}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.done.is_set():
            for g, xs in self.samples.items():
                xs.append((time.time() * 1000, int(open(cgroup("cpuacct", g) + "/cpuacct.usage").read()) / 1e9))
            self.done.wait(0.2)

    def stop(self):
        self.done.set()
        self.thread.join()

    def cpu(self, group, task):
        xs = self.samples[group]

        def at(ms):  # linear between the samples either side
            for (t0, c0), (t1, c1) in zip(xs, xs[1:]):
                if t0 <= ms <= t1:
                    return c0 + (c1 - c0) * (ms - t0) / max(t1 - t0, 1e-9)
            return xs[-1][1] if ms > xs[-1][0] else xs[0][1]

        timing = task["timing"]
        return at(timing["child_exited_at"]) - at(timing["child_started_at"])


def playable_floor(w, tasks, cpu):
    """The earliest the lowest rung could be published with the CPU its tasks took in
    this run: the job's audio and the rung's chunks, each whole on one worker of 2/W
    cores (and all together on no more than 2 cores), then its join. Returns (floor s,
    what it is made of)."""
    first = min((t for t in tasks if t["kind"] in ("transcode", "join")), key=lambda t: t["timing"]["finished_at"])
    if first["kind"] != "join":
        return None
    quota = CORES / w
    chunks = [cpu(t) for t in tasks if t["kind"] == "chunk" and t["name"].startswith(first["rendition"] + ".")]
    audio = sum(cpu(t) for t in tasks if t["kind"] == "audio")
    join = cpu(first)
    # A chunk is not split: on W machines, the audio on one and the chunks each on
    # the first machine free (longest first), the rung waits for its last wave.
    free = [audio / quota] + [0.0] * (w - 1)
    for c in sorted(chunks, reverse=True):
        free[free.index(min(free))] += c / quota
    floor = max(max(free), (audio + sum(chunks)) / CORES) + join / quota
    audio_task = next((t for t in tasks if t["kind"] == "audio"), None)
    audio_share = audio / ((audio_task["timing"]["child_exited_at"] - audio_task["timing"]["child_started_at"]) / 1000) if audio_task else 0
    return floor, (f"audio {audio:.1f} CPU s (it got {audio_share:.2f} cores), {len(chunks)} {first['rendition']} chunks "
                   f"{sum(chunks):.1f} CPU s (largest {max(chunks):.1f}), join {join:.1f} CPU s")


def threading_drain(stream):
    import threading
    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()


print(f"source: {src} ({os.path.getsize(src)} bytes), web ladder, CPU quota {CORES}/W cores per worker")
print(f"{'W':>2} {'mode':>8} {'chunks':>6} {'done s':>8} {'playable s':>10} {'CPU s':>8} {'ideal s':>8} "
      f"{'done/ideal':>10} {'playable/done':>13} {'whole/chunked':>13}")
modes = os.environ.get("BENCH_MODES", "chunked whole").split()
for w in counts:
    r = {mode: run(w, mode) for mode in modes}
    for mode in modes:
        x = r[mode]
        speedup = r["whole"]["done"] / r["chunked"]["done"] if mode == "chunked" and "whole" in r else float("nan")
        print(f"{w:>2} {mode:>8} {x['chunks']:>6} {x['done']:>8.1f} {x['playable']:>10.1f} {x['cpu']:>8.1f} {x['ideal']:>8.1f} "
              f"{x['done'] / x['ideal']:>10.3f} {x['playable'] / x['done']:>13.3f} {speedup:>13.2f}", flush=True)
    for mode in modes:
        if r[mode]["floor"]:
            floor, parts = r[mode]["floor"]
            print(f"   W={w} {mode}: first playable {r[mode]['playable']:.1f} s, its floor {floor:.1f} s "
                  f"(playable/floor {r[mode]['playable'] / floor:.2f}; floor/done {floor / r[mode]['done']:.3f}): {parts}", flush=True)
