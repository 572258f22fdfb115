#!/usr/bin/env python3
"""Wharf beside distribution 2.8.2 (Debian's docker-registry), in one run.

Starts both on loopback ports with their own data directories and the same
settings (access logs off, deletes on), measures each figure for both, and
prints medians and the ratio (Wharf / distribution, higher is better for
throughput and requests per second, lower for time and memory).

Scale with environment variables: BENCH_BLOB_MIB (1024), BENCH_REPOS (10000),
BENCH_REPS (3), BENCH_SECONDS (10, per wrk/ab run), BENCH_GC_MANIFESTS (10000),
BENCH_GC_QPS (2000, pulls per second while Wharf collects), BENCH_GC_REPS (5,
collections of each registry),
BENCH_IMPORT_REPOS (1000) and BENCH_IMPORT_TAGS (10, manifests per repository)
for the import of a distribution root, BENCH_STALLED (1000 stalled uploads),
BENCH_ONLY (blobs, requests, catalog, memory, auth, gc, import, stalled).

The auth section has no distribution counterpart (distribution issues no
tokens): it runs Wharf alone, pinned to one core, with and without
auth.builtin.
"""
import concurrent.futures as cf
import csv
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHARF = os.environ.get("WHARF", os.path.join(ROOT, "target/release/wharf"))
BLOB_MIB = int(os.environ.get("BENCH_BLOB_MIB", "1024"))
REPOS = int(os.environ.get("BENCH_REPOS", "10000"))
REPS = int(os.environ.get("BENCH_REPS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
GC_MANIFESTS = int(os.environ.get("BENCH_GC_MANIFESTS", "10000"))
# Pull rate held while Wharf collects (and before, for comparison).
GC_QPS = int(os.environ.get("BENCH_GC_QPS", "2000"))
# A collection's p99 rests on ~1,500 pulls and varies from one collection to
# the next (1.1-5.7x its quiet value on the same code): more of them than
# BENCH_REPS, for a median that holds from run to run.
GC_REPS = int(os.environ.get("BENCH_GC_REPS", "5"))
IMPORT_REPOS = int(os.environ.get("BENCH_IMPORT_REPOS", "1000"))
IMPORT_TAGS = int(os.environ.get("BENCH_IMPORT_TAGS", "10"))
STALLED = int(os.environ.get("BENCH_STALLED", "1000"))
# Comma-separated subset of: blobs, requests, catalog, memory, auth, gc, import, stalled (default: all).
ONLY = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))


def wanted(section):
    return not ONLY or section in ONLY
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
ADMIN_PASSWORD = "bench-admin-password"

results = []  # (name, unit, wharf, dist, better)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class Server:
    def __init__(self, kind, work, extra_config="", cpu=None):
        self.kind, self.work = kind, work
        self.extra_config, self.cpu = extra_config, cpu
        self.data = os.path.join(work, kind + "-data")
        os.makedirs(self.data, exist_ok=True)
        self.proc = None
        self.port = None

    def start(self):
        if self.kind == "wharf":
            cfg = os.path.join(self.work, "wharf.yml")
            with open(cfg, "w") as f:
                f.write("log:\n  level: error\n  accesslog:\n    disabled: true\n" + self.extra_config)
            t0 = time.monotonic()
            pin = ["taskset", "-c", str(self.cpu)] if self.cpu is not None else []
            env = dict(os.environ, WHARF_ADMIN_PASSWORD=ADMIN_PASSWORD)
            # In a session of its own, as a service manager starts it: `wharf
            # gc` then runs beside it as from a shell or cron, in another.
            self.proc = subprocess.Popen(
                pin + [WHARF, "serve", "--config", cfg, "--data", self.data, "--addr", "127.0.0.1:0"],
                stdout=subprocess.PIPE, stderr=open(os.path.join(self.work, "wharf.err"), "a"), text=True, env=env,
                start_new_session=True)
            line = self.proc.stdout.readline()
            self.startup = time.monotonic() - t0
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if not m:
                raise RuntimeError("wharf did not start: " + line)
            self.port = int(m.group(1))
        else:
            import socket
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
            s.close()
            cfg = os.path.join(self.work, "dist.yml")
            with open(cfg, "w") as f:
                f.write(f"""version: 0.1
log: {{level: error, accesslog: {{disabled: true}}}}
storage:
  cache: {{blobdescriptor: inmemory}}
  filesystem: {{rootdirectory: {self.data}}}
  delete: {{enabled: true}}
http: {{addr: 127.0.0.1:{self.port}}}
""")
            t0 = time.monotonic()
            self.proc = subprocess.Popen(["docker-registry", "serve", cfg],
                                         stdout=open(os.path.join(self.work, "dist.out"), "a"), stderr=subprocess.STDOUT)
            while True:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                    c.request("GET", "/v2/")
                    c.getresponse().read()
                    break
                except OSError:
                    if self.proc.poll() is not None:
                        raise RuntimeError("docker-registry exited")
                    time.sleep(0.02)
            self.startup = time.monotonic() - t0

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None

    def peak_rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    @property
    def base(self):
        return f"http://127.0.0.1:{self.port}"

    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 22)
            if not b:
                return "sha256:" + h.hexdigest()
            h.update(b)


def with_query(loc, q):
    return loc + ("&" if "?" in loc else "?") + q


def start_upload(c, repo, auth=None):
    c.request("POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0", **(auth or {})})
    r = c.getresponse()
    r.read()
    assert r.status == 202, r.status
    loc = r.getheader("Location")
    return re.sub(r"^https?://[^/]+", "", loc)


def push_bytes(srv, repo, data, c=None):
    c = c or srv.conn()
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    auth = getattr(srv, "auth_header", {})
    loc = start_upload(c, repo, auth)
    c.request("PUT", with_query(loc, "digest=" + d), body=data,
              headers={"Content-Type": "application/octet-stream", **auth})
    r = c.getresponse()
    r.read()
    assert r.status == 201, (r.status, srv.kind)
    return d


def curl_time(args):
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "-H", "Expect:"] + args,
                         check=True, capture_output=True, text=True).stdout.split()
    return int(out[0]), float(out[1])


def record(name, unit, w, d, better):
    results.append((name, unit, w, d, better))
    log(f"  {name}: wharf {w:.3f} {unit}, distribution {d:.3f} {unit}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk_cpu(srv, url, headers):
    """Requests per second and server CPU microseconds per request."""
    args = []
    for h in headers:
        args += ["-H", h]
    before = cpu_seconds(srv.proc.pid)
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{SECONDS}s", *args, url],
                         check=True, capture_output=True, text=True).stdout
    used = cpu_seconds(srv.proc.pid) - before
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert not non2xx, f"wrk saw errors on {url}: {out}"
    return total / SECONDS, used * 1e6 / total


def bench_auth(work):
    """Token issuance on one core, and what a valid token adds to a GET."""
    import base64
    nan = float("nan")
    basic = "Authorization: Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    acc = f"Accept: {DOCKER_V2}"
    open_srv = Server("wharf", os.path.join(work, "open"), cpu=0)
    auth_srv = Server("wharf", os.path.join(work, "auth"), "auth:\n  builtin: {}\n", cpu=0)
    for s in (open_srv, auth_srv):
        os.makedirs(s.work, exist_ok=True)
        s.start()
    try:
        make_image(open_srv, "bench/app", ["latest"])
        # Push to the auth server with a token, as a client would.
        c = auth_srv.conn()
        c.request("GET", "/auth/token?service=wharf&scope=repository:bench/app:pull,push", headers={"Authorization": basic[15:]})
        r = c.getresponse()
        token = json.loads(r.read())["token"]
        auth_srv.auth_header = {"Authorization": "Bearer " + token}
        make_image(auth_srv, "bench/app", ["latest"])
        issue = [wrk_cpu(auth_srv, auth_srv.base + "/auth/token?service=wharf&scope=repository:bench/app:pull", [basic])[0]
                 for _ in range(REPS)]
        record("tokens issued per second, server on one core", "tokens/s", statistics.median(issue), nan, "higher")
        path = "/v2/bench/app/manifests/latest"
        anon = [wrk_cpu(open_srv, open_srv.base + path, [acc]) for _ in range(REPS)]
        authd = [wrk_cpu(auth_srv, auth_srv.base + path, [acc, "Authorization: Bearer " + token]) for _ in range(REPS)]
        a_cpu = statistics.median(x[1] for x in anon)
        t_cpu = statistics.median(x[1] for x in authd)
        record("GET manifest, anonymous (auth off), CPU per request", "us", a_cpu, nan, "lower")
        record("GET manifest with a valid token, CPU per request", "us", t_cpu, nan, "lower")
        record("CPU a token adds to a GET", "%", (t_cpu / a_cpu - 1) * 100, nan, "lower")
    finally:
        for s in (open_srv, auth_srv):
            s.stop()


def bench_monolithic(servers, files):
    times = {s.kind: [] for s in servers}
    for i, (path, digest) in enumerate(files):
        for s in servers:
            loc = start_upload(s.conn(), f"bench/mono{i}")
            # Flush the other server's dirty pages first: distribution does not
            # fsync, and its writeback would otherwise be charged to whoever
            # runs next.
            os.sync()
            code, t = curl_time(["-X", "PUT", "-T", path, "-H", "Content-Type: application/octet-stream",
                                 s.base + with_query(loc, "digest=" + digest)])
            assert code == 201, (s.kind, code)
            times[s.kind].append(BLOB_MIB / t)
    record(f"{BLOB_MIB} MiB monolithic push", "MiB/s", statistics.median(times["wharf"]),
           statistics.median(times["dist"]), "higher")


def bench_chunked(servers, files):
    chunk = 16 << 20
    times = {s.kind: [] for s in servers}
    for i, (path, digest) in enumerate(files):
        for s in servers:
            c = s.conn()
            os.sync()
            t0 = time.monotonic()
            loc = start_upload(c, f"bench/chunk{i}")
            off = 0
            with open(path, "rb") as f:
                while True:
                    b = f.read(chunk)
                    if not b:
                        break
                    c.request("PATCH", loc, body=b, headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{off}-{off + len(b) - 1}"})
                    r = c.getresponse()
                    r.read()
                    assert r.status == 202, (s.kind, r.status)
                    loc = re.sub(r"^https?://[^/]+", "", r.getheader("Location"))
                    off += len(b)
            c.request("PUT", with_query(loc, "digest=" + digest), headers={"Content-Length": "0"})
            r = c.getresponse()
            r.read()
            assert r.status == 201, (s.kind, r.status)
            times[s.kind].append(BLOB_MIB / (time.monotonic() - t0))
    record(f"{BLOB_MIB} MiB chunked push (16 MiB PATCHes)", "MiB/s", statistics.median(times["wharf"]),
           statistics.median(times["dist"]), "higher")


def bench_pull(servers, files):
    path, digest = files[0]
    times = {s.kind: [] for s in servers}
    for s in servers:
        curl_time([f"{s.base}/v2/bench/mono0/blobs/{digest}"])  # warm the page cache
        for _ in range(REPS):
            code, t = curl_time([f"{s.base}/v2/bench/mono0/blobs/{digest}"])
            assert code == 200
            times[s.kind].append(BLOB_MIB / t)
    record(f"{BLOB_MIB} MiB warm pull", "MiB/s", statistics.median(times["wharf"]),
           statistics.median(times["dist"]), "higher")


def make_image(srv, repo, tags):
    c = srv.conn()
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    layer = os.urandom(4096)
    cd = push_bytes(srv, repo, cfg, c)
    ld = push_bytes(srv, repo, layer, c)
    m = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_V2,
                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cd, "size": len(cfg)},
                    "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": ld, "size": len(layer)}]}).encode()
    for t in tags:
        c.request("PUT", f"/v2/{repo}/manifests/{t}", body=m,
                  headers={"Content-Type": DOCKER_V2, **getattr(srv, "auth_header", {})})
        r = c.getresponse()
        r.read()
        assert r.status == 201, (srv.kind, r.status)
    return cd, len(cfg), ld, len(layer), m


def wrk(url, extra=()):
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{SECONDS}s", "--latency", *extra, url],
                         check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert not non2xx, f"wrk saw errors on {url}: {out}"
    return rps, p99


def ab_head(url, header):
    out = subprocess.run(["ab", "-k", "-i", "-q", "-c", "64", "-t", str(SECONDS), "-n", "10000000", "-H", header, url],
                         check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))
    p99 = float(re.search(r"\s99%\s+(\d+)", out).group(1))
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    assert failed == 0 and not non2xx, f"ab saw errors on {url}: {out}"
    return rps, p99


def bench_requests(servers):
    for s in servers:
        make_image(s, "bench/app", ["latest"] + [f"v{i}" for i in range(100)])
    acc = f"Accept: {DOCKER_V2}"
    for name, path, tool in [("GET manifest by tag", "/v2/bench/app/manifests/latest", "wrk"),
                             ("HEAD manifest by tag", "/v2/bench/app/manifests/latest", "ab"),
                             ("GET tags/list (101 tags)", "/v2/bench/app/tags/list", "wrk")]:
        r = {}
        for s in servers:
            runs = [wrk(s.base + path, ["-H", acc]) if tool == "wrk" else ab_head(s.base + path, acc) for _ in range(REPS)]
            r[s.kind] = (statistics.median(x[0] for x in runs), statistics.median(x[1] for x in runs))
        record(f"{name}, 64 connections", "req/s", r["wharf"][0], r["dist"][0], "higher")
        record(f"{name}, p99 latency", "ms", r["wharf"][1], r["dist"][1], "lower")


def populate(srv, n):
    cd, cs, ld, ls, m = make_image(srv, "cat/base", ["latest"])

    def one(batch):
        c = srv.conn()
        for i in batch:
            repo = f"cat/r{i:05d}"
            for d in (cd, ld):
                c.request("POST", f"/v2/{repo}/blobs/uploads/?mount={d}&from=cat/base", headers={"Content-Length": "0"})
                r = c.getresponse()
                r.read()
                assert r.status == 201, (srv.kind, r.status)
            c.request("PUT", f"/v2/{repo}/manifests/latest", body=m, headers={"Content-Type": DOCKER_V2})
            r = c.getresponse()
            r.read()
            assert r.status == 201
    batches = [range(k, n, 8) for k in range(8)]
    with cf.ThreadPoolExecutor(8) as ex:
        list(ex.map(one, batches))


def walk_catalog(srv):
    c = srv.conn()
    path = "/v2/_catalog?n=100"
    names = 0
    while path:
        c.request("GET", path)
        r = c.getresponse()
        body = json.loads(r.read())
        names += len(body["repositories"])
        link = r.getheader("Link")
        path = re.search(r"<([^>]+)>", link).group(1) if link else None
    return names


def bench_catalog(servers):
    for s in servers:
        t0 = time.monotonic()
        populate(s, REPOS)
        log(f"  populated {REPOS} repositories in {s.kind} in {time.monotonic() - t0:.1f} s")
    times = {}
    for s in servers:
        runs = []
        for _ in range(REPS):
            t0 = time.monotonic()
            n = walk_catalog(s)
            runs.append(time.monotonic() - t0)
            assert n >= REPOS, (s.kind, n)
        times[s.kind] = statistics.median(runs)
    record(f"page _catalog through {REPOS} repositories (n=100)", "s", times["wharf"], times["dist"], "lower")


def gc_populate(srv, n):
    """n images of a unique config and layer each, in 100 repositories; deletes
    every other one by digest. Returns a (repo, tag) that stays."""
    def one(batch):
        c = srv.conn()
        for i in batch:
            repo = f"gc/r{i % 100:03d}"
            cfg = json.dumps({"architecture": "amd64", "os": "linux", "n": i}).encode()
            layer = os.urandom(1024)
            cd = push_bytes(srv, repo, cfg, c)
            ld = push_bytes(srv, repo, layer, c)
            m = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_V2,
                            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cd, "size": len(cfg)},
                            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": ld, "size": len(layer)}]}).encode()
            c.request("PUT", f"/v2/{repo}/manifests/t{i}", body=m, headers={"Content-Type": DOCKER_V2})
            r = c.getresponse()
            r.read()
            assert r.status == 201, (srv.kind, r.status)
            if i % 2 == 0:
                d = "sha256:" + hashlib.sha256(m).hexdigest()
                c.request("DELETE", f"/v2/{repo}/manifests/{d}")
                r = c.getresponse()
                r.read()
                assert r.status == 202, (srv.kind, r.status)
    # Each repository belongs to one worker: distribution answers 500 now and
    # then to a manifest DELETE while another request changes the same
    # repository's tags (distribution/distribution#2514).
    with cf.ThreadPoolExecutor(8) as ex:
        list(ex.map(one, [[i for i in range(n) if i % 100 % 8 == k] for k in range(8)]))
    return "gc/r001", "t1"


def p99(xs):
    xs = sorted(xs)
    return xs[max(0, -(-len(xs) * 99 // 100) - 1)]


def pull_latencies_around(url, headers, during, lead=3.0):
    """Pulls `url` at GC_QPS requests per second from 32 connections for
    `lead` seconds, then while `during()` runs. Open loop: oha sends on
    schedule and counts each request's latency from when it was due, so a
    stall shows in full instead of slowing the client down (wrk's
    coordinated omission). Returns (latencies before, latencies of the
    requests due while `during` ran, in ms; what `during` returned)."""
    out = os.path.join(tempfile.gettempdir(), f"wharf-bench-oha-{os.getpid()}.csv")
    hdrs = [a for h in headers for a in ("-H", h)]
    t0 = time.monotonic()
    oha = subprocess.Popen(["oha", "--no-tui", "-z", "600s", "-c", "32", "-q", str(GC_QPS), "--latency-correction",
                            "--output-format", "csv", "-o", out, *hdrs, url],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        try:
            time.sleep(lead)
            start = time.monotonic() - t0
            result = during()
            end = time.monotonic() - t0
        finally:
            oha.send_signal(signal.SIGINT)
            err = oha.communicate()[1]
        assert oha.returncode == 0, err
        rows = []
        with open(out) as f:
            for row in csv.DictReader(f):
                assert row["status"] == "200", row
                rows.append((float(row["request-start"]), float(row["request-duration"]) * 1000))
    finally:
        # Also when a collection failed, or oha did.
        if os.path.exists(out):
            os.remove(out)
    # The first half second warms connections up.
    quiet = [d for t, d in rows if 0.5 <= t < start]
    busy = [d for t, d in rows if start <= t <= end]
    assert len(quiet) > 100 and len(busy) > 100, (len(quiet), len(busy))
    return quiet, busy, result


def idle_cgroup(name):
    """Makes a CPU cgroup marked idle (cpu.idle = 1), as systemd's
    CPUWeight=idle does for a unit, and returns (its directory, None), or
    (None, why not) where this machine or user cannot."""
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        with open("/sys/fs/cgroup/cgroup.subtree_control") as f:
            if "cpu" not in f.read().split():
                return None, "the cpu controller is not enabled at the cgroup v2 root"
        d = os.path.join("/sys/fs/cgroup", name)
    elif os.path.exists("/sys/fs/cgroup/cpu/cpu.idle"):
        d = os.path.join("/sys/fs/cgroup/cpu", name)
    else:
        return None, "no cgroup cpu controller with cpu.idle (Linux 5.15 or later)"
    try:
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "cpu.idle"), "w") as f:
            f.write("1")
    except OSError as e:
        return None, f"cannot make {d}: {e}"
    return d, None


def own_cpu_cgroup():
    """The directory of this process's cgroup on the hierarchy with the cpu
    controller, or None."""
    with open("/proc/self/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    if os.path.exists("/sys/fs/cgroup/cpu/tasks"):
        rel = next((p for _, c, p in lines if "cpu" in c.split(",")), None)
        root = "/sys/fs/cgroup/cpu"
    else:
        rel = next((p for n, c, p in lines if n == "0" and not c), None)
        root = "/sys/fs/cgroup"
    return None if rel is None else os.path.join(root, rel.lstrip("/"))


def remove_cgroup(d):
    # Empty once the last process in it has exited, which its parent has
    # waited for; the kernel may take a moment to agree.
    for _ in range(50):
        try:
            os.rmdir(d)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    log(f"  could not remove the cgroup {d}")


def bench_gc(work):
    """distribution's offline garbage-collect against Wharf's online one on the
    same store shape, each GC_REPS times on a fresh copy of its store; Wharf's
    pull latency at GC_QPS before and during each of its collections.

    Wharf collects in each of the ways production runs it, interleaved: `wharf
    gc` in an idle CPU cgroup (a systemd unit with CPUWeight=idle; where the
    benchmark can make one), `wharf gc` as from a shell, and the server's own
    collection (its schedule; here the admin API, which needs auth.builtin),
    also with its background threads in an idle cgroup
    (storage.maintenance.gc.cgroup; where Wharf can make one here)."""
    import base64
    wharf = Server("wharf", os.path.join(work, "gc-wharf"))
    dist = Server("dist", os.path.join(work, "gc-dist"))
    auth_config = "auth:\n  builtin: {}\n"
    basic = "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()

    def fresh(s):
        shutil.rmtree(s.data)
        shutil.copytree(s.data + ".template", s.data, symlinks=True)
        # Flush the copy so that no collection competes with writing it back.
        os.sync()

    def wharf_gc(cgroup):
        # Beside the serving registry, as `wharf gc` runs in production;
        # timed as distribution's is, process start to exit.
        def enter():
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write("0")
        t0 = time.monotonic()
        r = subprocess.run([WHARF, "gc", "--grace", "0s", "--config", os.path.join(wharf.work, "wharf.yml"),
                            "--data", wharf.data], capture_output=True, text=True,
                           preexec_fn=enter if cgroup else None)
        assert r.returncode == 0, r.stderr
        return int(re.search(r"freed (\d+) blobs", r.stdout).group(1)), time.monotonic() - t0

    def server_gc():
        c = wharf.conn()
        t0 = time.monotonic()
        c.request("POST", "/api/v1/gc?grace_seconds=0", headers={"Authorization": basic})
        r = c.getresponse()
        body = r.read()
        assert r.status == 200, (r.status, body)
        return json.loads(body)["blobs"], time.monotonic() - t0

    def bearer():
        c = wharf.conn()
        c.request("GET", f"/auth/token?service=wharf&scope=repository:{repo}:pull", headers={"Authorization": basic})
        r = c.getresponse()
        body = r.read()
        assert r.status == 200, (r.status, body)
        return "Authorization: Bearer " + json.loads(body)["token"]

    cgroup, why_not = idle_cgroup(f"wharf-bench-gc-{os.getpid()}")
    ways = []
    if cgroup:
        ways.append(("`wharf gc` in an idle cgroup", lambda: wharf_gc(cgroup)))
    else:
        log(f"  no idle cgroup for `wharf gc`: {why_not}")
    ways += [("`wharf gc`", lambda: wharf_gc(None)), ("the server's own", server_gc)]
    own = own_cpu_cgroup()
    server_cgroup = own and os.path.join(own, f"wharf-bench-background-{os.getpid()}")
    configs = {"the server's own": auth_config}
    if server_cgroup:
        way = "the server's own, threads in an idle cgroup"
        configs[way] = auth_config + f"storage:\n  maintenance:\n    gc:\n      cgroup: {server_cgroup}\n"
        ways.append((way, server_gc))
    try:
        # Inside the try: a failed population must not leave a server running.
        for s in (wharf, dist):
            os.makedirs(s.work, exist_ok=True)
            s.start()
            t0 = time.monotonic()
            repo, tag = gc_populate(s, GC_MANIFESTS)
            log(f"  {s.kind}: {GC_MANIFESTS} manifests, half deleted, in {time.monotonic() - t0:.1f} s")
            s.stop()
            shutil.copytree(s.data, s.data + ".template", symlinks=True)
        for way, config in configs.items():
            # Wharf refuses to start with a cgroup it cannot use; say why.
            wharf.extra_config = config
            try:
                wharf.start()
            except RuntimeError:
                with open(os.path.join(wharf.work, "wharf.err")) as f:
                    log(f"  skipping {way}: {f.read().strip().splitlines()[-1:]}")
                ways = [w for w in ways if w[0] != way]
            wharf.stop()
        runs = {way: ([], [], [], []) for way, _ in ways}  # seconds, p99 before, p99 during, ratio
        for i in range(GC_REPS):
            for way, collect in ways:
                secs, quiet_p99s, busy_p99s, ratios = runs[way]
                fresh(wharf)
                wharf.extra_config = configs.get(way, "")
                wharf.start()
                headers = [f"Accept: {DOCKER_V2}"] + ([bearer()] if wharf.extra_config else [])
                url = f"{wharf.base}/v2/{repo}/manifests/{tag}"
                quiet, busy, (freed, wall) = pull_latencies_around(url, headers, collect)
                wharf.stop()
                assert freed == GC_MANIFESTS, (way, freed)
                secs.append(wall)
                quiet_p99s.append(p99(quiet))
                busy_p99s.append(p99(busy))
                ratios.append(busy_p99s[-1] / quiet_p99s[-1])
                log(f"  {way} {i + 1}: freed {freed} blobs in {wall:.2f} s; pull p99 {quiet_p99s[-1]:.2f} ms before "
                    f"({len(quiet)} pulls), {busy_p99s[-1]:.2f} ms during ({len(busy)} pulls): {ratios[-1]:.2f}x")
        for way, (_, _, _, ratios) in runs.items():
            log(f"  {way}: p99 ratios, sorted: {', '.join(f'{r:.2f}' for r in sorted(ratios))}")
        dist_secs = []
        for i in range(GC_REPS):
            # distribution's collector runs offline: its server stays stopped.
            fresh(dist)
            t0 = time.monotonic()
            subprocess.run(["docker-registry", "garbage-collect", os.path.join(dist.work, "dist.yml")],
                           check=True, capture_output=True)
            dist_secs.append(time.monotonic() - t0)
            log(f"  distribution garbage-collect {i + 1}: {dist_secs[-1]:.2f} s")
        nan = float("nan")
        med = statistics.median
        for way, (secs, quiet_p99s, busy_p99s, ratios) in runs.items():
            record(f"garbage collection, {GC_MANIFESTS} manifests, half deleted, {way}", "s",
                   med(secs), med(dist_secs), "lower")
            record(f"  GET manifest p99 at {GC_QPS}/s, no collection", "ms", med(quiet_p99s), nan, "lower")
            record(f"  GET manifest p99 at {GC_QPS}/s, during it", "ms", med(busy_p99s), nan, "lower")
            record("  p99 during a collection / p99 before it", "x", med(ratios), nan, "lower")
    finally:
        for s in (wharf, dist):
            s.stop()
        for d in (cgroup, server_cgroup):
            if d and os.path.isdir(d):
                remove_cgroup(d)


def make_distribution_root(root, repos, per_repo):
    """A distribution 2.8 root written as distribution lays it out: every
    repository has `per_repo` tagged manifests (a config of its own and a
    layer shared by all), with their link files."""
    v2 = os.path.join(root, "docker/registry/v2")

    def put_blob(data):
        h = hashlib.sha256(data).hexdigest()
        d = os.path.join(v2, "blobs/sha256", h[:2], h)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "data"), "wb") as f:
            f.write(data)
        return "sha256:" + h

    def link(path, digest):
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "link"), "w") as f:
            f.write(digest)

    layer = os.urandom(4096)
    layer_d = put_blob(layer)
    for r in range(repos):
        repo = os.path.join(v2, "repositories", f"team{r % 50}", f"app{r}")
        link(os.path.join(repo, "_layers/sha256", layer_d[7:]), layer_d)
        for t in range(per_repo):
            config = json.dumps({"architecture": "amd64", "os": "linux", "r": r, "t": t}).encode()
            config_d = put_blob(config)
            link(os.path.join(repo, "_layers/sha256", config_d[7:]), config_d)
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": DOCKER_V2,
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": config_d, "size": len(config)},
                "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                            "digest": layer_d, "size": len(layer)}]}).encode()
            m_d = put_blob(manifest)
            link(os.path.join(repo, "_manifests/revisions/sha256", m_d[7:]), m_d)
            link(os.path.join(repo, "_manifests/tags", f"v{t}", "current"), m_d)
            link(os.path.join(repo, "_manifests/tags", f"v{t}", "index/sha256", m_d[7:]), m_d)


def first_answer(port, path, t0, proc, deadline=120):
    while time.monotonic() - t0 < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", path, headers={"Accept": DOCKER_V2})
            r = c.getresponse()
            r.read()
            if r.status == 200:
                return time.monotonic() - t0
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("server exited")
        time.sleep(0.005)
    raise RuntimeError(f"no answer to {path}")


def bench_import(work):
    """Adopting a distribution root: `wharf import` of IMPORT_REPOS
    repositories with IMPORT_TAGS manifests each, and the time until a
    server started on such a root answers (Wharf imports in the background;
    distribution reads its files on each request)."""
    total = IMPORT_REPOS * IMPORT_TAGS
    src = os.path.join(work, "dist-root")
    make_distribution_root(src, IMPORT_REPOS, IMPORT_TAGS)
    last = f"/v2/team{(IMPORT_REPOS - 1) % 50}/app{IMPORT_REPOS - 1}/manifests/v{IMPORT_TAGS - 1}"
    imports, first, first_last = [], {"wharf": [], "dist": []}, {"wharf": [], "dist": []}
    for i in range(REPS):
        root = os.path.join(work, f"import-{i}")
        shutil.copytree(src, root, symlinks=True)
        os.sync()
        t0 = time.monotonic()
        subprocess.run([WHARF, "import", "--data", root], check=True, capture_output=True)
        imports.append(time.monotonic() - t0)
        shutil.rmtree(root)
        for kind in ("wharf", "dist"):
            root = os.path.join(work, f"first-{kind}-{i}")
            shutil.copytree(src, root, symlinks=True)
            os.sync()
            srv = Server(kind, work)
            srv.data = root
            t0 = time.monotonic()
            srv.start()
            first[kind].append(first_answer(srv.port, "/v2/", t0, srv.proc))
            # Until the last repository of the root is served.
            first_last[kind].append(first_answer(srv.port, last, t0, srv.proc))
            srv.stop()
            shutil.rmtree(root)
    record(f"wharf import of {total} manifests in {IMPORT_REPOS} repositories", "s",
           statistics.median(imports), float("nan"), "lower")
    record("first answer on a root to import (/v2/)", "ms", statistics.median(first["wharf"]) * 1000,
           statistics.median(first["dist"]) * 1000, "lower")
    record("until its last image is served", "ms", statistics.median(first_last["wharf"]) * 1000,
           statistics.median(first_last["dist"]) * 1000, "lower")
    shutil.rmtree(src)


def stall_uploads(srv, n):
    """n uploads that sent their PATCH head and 1 KiB of a 100 MB body, and
    stopped; the sockets stay open. They come from 127.0.0.2-9, as from eight
    other machines (Wharf allows 256 uploads at once per client address;
    the measuring client is 127.0.0.1)."""
    import socket
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", srv.port), source_address=(f"127.0.0.{2 + i % 8}", 0))
        s.sendall(f"POST /v2/stall/s{i % 20}/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        loc = re.search(rb"(?i)location: (\S+)", head).group(1).decode()
        loc = re.sub(r"^https?://[^/]+", "", loc)
        s.sendall(f"PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                  f"Content-Length: 100000000\r\n\r\n".encode() + b"\0" * 1024)
        socks.append(s)
    return socks


def bench_stalled(servers, work):
    """Push and pull throughput of 64 MiB blobs, then the same with STALLED
    uploads stalled mid-body (Wharf's body-idle timeout is 60 s by default,
    longer than this takes)."""
    size = 64
    path = os.path.join(work, "stall-blob")
    subprocess.run(["openssl", "rand", "-out", path, str(size << 20)], check=True)
    digest = sha256_file(path)
    out = {}
    for s in servers:
        for mode in ("quiet", "stalled"):
            socks = stall_uploads(s, STALLED) if mode == "stalled" else []
            pushes, pulls = [], []
            try:
                for i in range(REPS):
                    loc = start_upload(s.conn(), f"stallbench/{mode}{i}")
                    code, t = curl_time(["-X", "PUT", "-T", path, "-H", "Content-Type: application/octet-stream",
                                         s.base + with_query(loc, "digest=" + digest)])
                    assert code == 201, (s.kind, code)
                    pushes.append(size / t)
                    code, t = curl_time([f"{s.base}/v2/stallbench/{mode}{i}/blobs/{digest}"])
                    assert code == 200, (s.kind, code)
                    pulls.append(size / t)
            finally:
                for so in socks:
                    so.close()
            out[(s.kind, mode)] = (statistics.median(pushes), statistics.median(pulls))
    for i, what in enumerate(("push", "pull")):
        for mode in ("quiet", "stalled"):
            label = f"{size} MiB {what}" + (f" with {STALLED} uploads stalled" if mode == "stalled" else "")
            record(label, "MiB/s", out[("wharf", mode)][i], out[("dist", mode)][i], "higher")
        log(f"  wharf {what}: stalled/quiet = {out[('wharf', 'stalled')][i] / out[('wharf', 'quiet')][i]:.2f}")
    os.remove(path)


def bench_memory(servers):
    size = 8 << 20
    blobs = [os.urandom(size) for _ in range(32)]
    peaks = {}
    for s in servers:
        s.stop()
        s.start()
        with cf.ThreadPoolExecutor(32) as ex:
            list(ex.map(lambda i: push_bytes(s, f"mem/r{i}", blobs[i]), range(32)))
        peaks[s.kind] = s.peak_rss_mib()
    record("server peak RSS, 32 concurrent 8 MiB pushes", "MiB", peaks["wharf"], peaks["dist"], "lower")


def main():
    for tool in ("docker-registry", "wrk", "ab", "curl", "oha"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run bench/run.sh, which installs it")
    work = tempfile.mkdtemp(prefix="wharf-bench-", dir=os.environ.get("BENCH_DIR"))
    servers = [Server("wharf", work), Server("dist", work)]
    try:
        for s in servers:
            s.start()
        log(f"wharf on :{servers[0].port}, distribution on :{servers[1].port}, work in {work}")
        if wanted("blobs"):
            files = []
            for i in range(REPS):
                p = os.path.join(work, f"blob{i}")
                subprocess.run(["openssl", "rand", "-out", p, str(BLOB_MIB << 20)], check=True)
                files.append((p, sha256_file(p)))
            log("push and pull")
            bench_monolithic(servers, files)
            bench_chunked(servers, files)
            bench_pull(servers, files)
            for p, _ in files:
                os.remove(p)
        if wanted("requests"):
            log("requests per second")
            bench_requests(servers)
        if wanted("catalog"):
            log("catalog")
            bench_catalog(servers)
            for s in servers:
                s.stop()
                s.start()
            record(f"start-up with {REPOS} repositories", "ms", servers[0].startup * 1000, servers[1].startup * 1000, "lower")
        if wanted("memory"):
            log("memory")
            bench_memory(servers)
        if wanted("gc"):
            log("garbage collection")
            bench_gc(work)
        if wanted("stalled"):
            log("throughput with stalled uploads")
            bench_stalled(servers, work)
        if wanted("import"):
            log("import of a distribution root")
            bench_import(work)
        if wanted("auth"):
            log("access control (Wharf only, one core)")
            bench_auth(work)
    finally:
        for s in servers:
            s.stop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)

    width = max([len("figure")] + [len(f"{name} ({unit})") for name, unit, *_ in results])
    print(f"\n{'figure':{width}} {'wharf':>12} {'distribution':>14} {'ratio':>8}")
    for name, unit, w, d, better in results:
        if d != d:  # no distribution counterpart
            print(f"{name + ' (' + unit + ')':{width}} {w:12.2f} {'-':>14} {'-':>8}")
            continue
        ratio = (w / d if better == "higher" else d / w) if w and d else float("nan")
        print(f"{name + ' (' + unit + ')':{width}} {w:12.2f} {d:14.2f} {ratio:7.1f}x")
    print("\nratio: how many times better Wharf is (throughput / distribution's, or distribution's time / Wharf's).")


if __name__ == "__main__":
    main()
