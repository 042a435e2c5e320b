"""Models from object storage, measured against a local S3 server (moto, in a process of its own).

1. **New version to AVAILABLE**: a model-server serving `s3://models/small` with
   `--file_system_poll_wait_seconds=1`; a new version (half_plus_two) is uploaded, and the time from
   the end of its last object's upload to the version AVAILABLE in the server's status is taken,
   for several versions in turn. A new version is taken once two polls in a row list it the same
   (see docs/model-server.md), so one to two poll intervals plus the load is what to expect.
2. **Download throughput** of a SavedModel of at least 500 MB (`--size-mb`): the server's own
   download code (core/storage: Cache.fetch, obstore, `--model_download_concurrency` reads of 8 MiB)
   into an empty cache, against `aws s3 cp --recursive` of the same objects into an empty directory
   (PyPI awscli, its default settings), alternating, `--rounds` times each, in the same run.

Writes bench/results/storage.json and the "Models from object storage" section of
bench/RESULTS.md (between its markers). `make bench-storage`; about 3 minutes and 2 GB of memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "server"), str(ROOT / "bench")]

from report import with_section  # noqa: E402
from server_support import ServerProcess  # noqa: E402
from support import free_port, stop_process, wait_for  # noqa: E402

START, END = "<!-- object-storage -->", "<!-- /object-storage -->"
BUCKET = "models"
KEYS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_REGION": "us-east-1"}


def build_big(out: Path, size_mb: int) -> int:
    """A SavedModel whose variables hold `size_mb` MB (float32, in 4 variables): y = x + sum(w[0])."""
    import tensorflow as tf

    n = size_mb * (1 << 20) // 4 // 4

    class Big(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = [tf.Variable(tf.random.uniform([n], seed=i)) for i in range(4)]

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def predict(self, x: Any) -> Any:
            return {"y": x + sum(w[0] for w in self.w)}

    m = Big()
    tf.saved_model.save(m, str(out), signatures={"serving_default": m.predict})
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


class Moto:
    """moto's S3 API as its own process (moto_server), so that neither side shares its GIL."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
                                      "-p", str(self.port)], stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(lambda: self._up(), "moto_server", timeout=60)
        import boto3
        from boto3.s3.transfer import TransferConfig

        self.s3 = boto3.client("s3", endpoint_url=self.url, aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
                               aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"], region_name=KEYS["AWS_REGION"])
        self.s3.create_bucket(Bucket=BUCKET)
        self.single = TransferConfig(multipart_threshold=4 << 30)  # one PUT per object: ETags are MD5s

    def _up(self) -> bool:
        try:
            return requests.get(self.url, timeout=1).status_code < 500
        except requests.RequestException:
            return False

    def upload(self, local: Path, prefix: str, last: str = "saved_model.pb") -> None:
        files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: p.name == last)
        for f in files:
            self.s3.upload_file(str(f), BUCKET, f"{prefix}/{f.relative_to(local).as_posix()}", Config=self.single)

    @property
    def env(self) -> dict[str, str]:
        return {**KEYS, "AWS_ENDPOINT_URL": self.url}

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


def new_version_latency(moto: Moto, work: Path, versions: int) -> list[float]:
    import demomodels

    src = work / "small-src"
    for v in range(1, versions + 2):
        demomodels.build_half_plus_two(src / str(v), a=0.5, b=float(v))
    moto.upload(src / "1", "small/1")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))} | moto.env
    srv = ServerProcess(["--model_name=small", f"--model_base_path=s3://{BUCKET}/small",
                         "--file_system_poll_wait_seconds=1", f"--model_cache_dir={work / 'server-cache'}",
                         "--enable_model_warmup=false"], work / "server.log", env=env)
    out = []
    try:
        srv.wait_ready()
        for v in range(2, versions + 2):
            moto.upload(src / str(v), f"small/{v}")
            uploaded = time.monotonic()
            srv.wait_until(lambda v=v: any(s["version"] == str(v) and s["state"] == "AVAILABLE"
                                           for s in srv.model_state("small")), f"version {v}", timeout=60)
            out.append(time.monotonic() - uploaded)
    finally:
        srv.stop()
    return out


def ours(moto: Moto, work: Path, round_: int) -> float:
    """Seconds the server's download code takes for version 1 of `big` into an empty cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))} | moto.env
    os.environ.update(env)  # obstore reads the environment
    from modelserver.core.storage import default_storage

    async def go() -> float:
        storage = default_storage(str(work / f"cache-{round_}"))
        try:
            found = await storage.scan("big", f"s3://{BUCKET}/big", [])
            fetched = await storage.fetch("big", f"s3://{BUCKET}/big", found.ready[1])
            assert not fetched.cached and fetched.bytes == found.ready[1].size
            return fetched.seconds
        finally:
            await storage.close()

    try:
        return asyncio.run(go())
    finally:
        shutil.rmtree(work / f"cache-{round_}", ignore_errors=True)


def aws_cp(moto: Moto, work: Path, round_: int) -> float:
    dest = work / f"aws-{round_}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))} | moto.env
    started = time.monotonic()
    subprocess.run([str(Path(sys.executable).parent / "aws"), "s3", "cp", "--recursive", "--only-show-errors",
                    f"s3://{BUCKET}/big/1", str(dest)], check=True, env=env)
    took = time.monotonic() - started
    shutil.rmtree(dest, ignore_errors=True)
    return took


def section(r: dict[str, Any]) -> str:
    mb = r["bytes"] / 1e6
    ours_s, aws_s = statistics.median(r["ours_s"]), statistics.median(r["aws_s"])
    lat = r["available_s"]
    return "\n".join([
        START,
        "## Models from object storage",
        "",
        f"`make bench-storage` ({r['date']}, this 2-core machine, moto's S3 API on loopback in its own process).",
        "",
        f"- **A new version's last upload to AVAILABLE**, `--file_system_poll_wait_seconds=1`, {len(lat)} versions "
        f"of half_plus_two in turn: median {statistics.median(lat):.2f} s, max {max(lat):.2f} s (a version is taken "
        "when two polls in a row list it the same, then loaded).",
        f"- **Download of a {mb:.0f} MB SavedModel** (4 variables, {r['files']} objects), median of {len(r['ours_s'])} "
        f"alternating rounds into an empty directory: the server's download (8 MiB ranged reads, 8 at a time, "
        f"size and MD5 checked) {ours_s:.2f} s = {mb / ours_s:.0f} MB/s; `aws s3 cp --recursive` of the same objects "
        f"{aws_s:.2f} s = {mb / aws_s:.0f} MB/s; ratio {aws_s / ours_s:.2f}x "
        f"(rounds: ours {', '.join(f'{x:.2f}' for x in r['ours_s'])} s; aws {', '.join(f'{x:.2f}' for x in r['aws_s'])} s). "
        "Both run at the speed moto serves ranges here (moto is one Python process): "
        "the figure compares the clients on one store, not what S3 gives a node.",
        END,
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--versions", type=int, default=5, help="new versions timed to AVAILABLE")
    ap.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"),
                    help="the RESULTS.md whose section this run replaces ('': none)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "storage.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        work = Path(tmp)
        moto = Moto(work / "moto.log")
        try:
            size = build_big(work / "big-src", args.size_mb)
            moto.upload(work / "big-src", "big/1")
            files = sum(1 for p in (work / "big-src").rglob("*") if p.is_file())
            print(f"uploaded {size / 1e6:.0f} MB in {files} objects", flush=True)
            ours_s, aws_s = [], []
            for i in range(args.rounds):
                ours_s.append(ours(moto, work, i))
                aws_s.append(aws_cp(moto, work, i))
                print(f"round {i}: ours {ours_s[-1]:.2f} s, aws s3 cp {aws_s[-1]:.2f} s", flush=True)
            available = new_version_latency(moto, work, args.versions)
            print("to AVAILABLE:", ", ".join(f"{x:.2f}" for x in available), flush=True)
        finally:
            moto.stop()
    result = {"date": time.strftime("%Y-%m-%d"), "bytes": size, "files": files, "ours_s": ours_s, "aws_s": aws_s,
              "available_s": available, "poll_s": 1}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    text = section(result)
    print(text)
    if args.results:
        results = Path(args.results)
        results.write_text(with_section(results.read_text(), text, START, END))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
