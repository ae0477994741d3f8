"""A real client session: `ray start --head` on loopback, `ray job submit`, `ray job logs`.

The head runs with token authentication (RAY_AUTH_MODE=token, as cluster.yaml sets it) in its
own temp dir and ports, and is stopped by terminating exactly its own processes (a plain
`ray stop` would also stop the test session's local Ray).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def pipeline_args(storage: str, overrides: dict[str, object]) -> list[str]:
    """``sas-ray pipeline`` arguments; the README's cluster example differs only in
    --config / --run.storage."""
    return ["pipeline", "--run.storage", storage,
            *(a for key, value in overrides.items() for a in (f"--{key}", str(value)))]


@dataclass
class Head:
    address: str  # jobs API, http://127.0.0.1:PORT
    env: dict[str, str]  # environment a client needs (token auth)

    def ray(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "ray"), *args], cwd=ROOT, env=self.env, text=True,
                              capture_output=True, timeout=timeout)

    def submit(self, *entry: str, wait: bool = True) -> str:
        sid = f"sas-{secrets.token_hex(4)}"
        deadline = time.time() + 180
        while True:  # a fresh head's job agent can take a while to come up
            out = self.ray("job", "submit", "--address", self.address, "--submission-id", sid,
                           "--working-dir", ".", "--runtime-env", "jobs/runtime_env.yaml",
                           *([] if wait else ["--no-wait"]), "--", "python", "jobs/run.py",
                           *entry)
            if "No available agent" not in out.stderr + out.stdout or time.time() > deadline:
                break
            time.sleep(3)
        # with --no-wait the exit status is the submission's; with waiting, the job's
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return sid

    def status(self, sid: str) -> str:
        """The job's JobStatus (SUCCEEDED, FAILED, ...), asked with Ray's own Python client in
        a subprocess that has the head's token (this process has its own Ray session)."""
        code = ("import sys; from ray.job_submission import JobSubmissionClient; "
                "print(JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2]).value)")
        out = subprocess.run([sys.executable, "-c", code, self.address, sid], env=self.env,
                             text=True, capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip().splitlines()[-1]

    def logs(self, sid: str) -> str:
        return self.ray("job", "logs", "--address", self.address, sid, timeout=60).stdout


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory, s3_server: str,
             free_port: Callable[[], int]) -> Iterator[Head]:
    """A 2-CPU head on 127.0.0.1 with token auth, started as the README says: from the venv
    (its bin first on PATH: a job's `python` is the head's) with the S3 settings in its
    environment (as a cluster node has them from its instance profile; a job gets the head's
    environment, not the submitting shell's)."""
    temp_dir = tmp_path_factory.mktemp("rayhead")
    gcs, dash = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    start = subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
         f"--temp-dir={temp_dir}", f"--ray-client-server-port={free_port()}",
         # the agent's HTTP port is fixed (52365) by default: another local Ray (the test
         # session's) holding it leaves this head without a job agent
         f"--dashboard-agent-listen-port={free_port()}",
         "--disable-usage-stats"], env=env, text=True, capture_output=True, timeout=120)
    assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
    try:
        yield Head(address=f"http://127.0.0.1:{dash}", env=env)
    finally:
        _stop_head(str(temp_dir), gcs)


def _stop_head(temp_dir: str, gcs_port: int) -> None:
    marks = (temp_dir, f":{gcs_port}")
    procs: set[psutil.Process] = set()
    for p in psutil.process_iter(["cmdline"]):
        if any(m in " ".join(p.info["cmdline"] or []) for m in marks):
            procs.add(p)
            procs.update(p.children(recursive=True))
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(list(procs), timeout=15)
    for p in alive:
        p.kill()


def test_token_auth_rejects_a_client_without_the_token(ray_head: Head) -> None:
    env = {**ray_head.env, "RAY_AUTH_TOKEN": "wrong"}
    out = subprocess.run([str(BIN / "ray"), "job", "list", "--address", ray_head.address],
                         env=env, text=True, capture_output=True, timeout=60)
    assert out.returncode != 0
    assert "auth" in (out.stdout + out.stderr).lower()


def test_pipeline_job_on_s3_survives_a_killed_driver(ray_head: Head, s3_bucket: str,
                                                     tiny_run: dict[str, object]) -> None:
    """The cluster flow: data and outputs on S3 (a multi-node cluster shares no local disk);
    the driver is stopped mid-run and the job resubmitted: finished stages are reused from
    their artifacts, the sweep completes and the report is written."""
    import s3fs

    storage = f"{s3_bucket}/exp"
    args = pipeline_args(storage, {**tiny_run, "select.strategies": "sas",
                                   "sweep.fractions": "0.5"})
    sid = ray_head.submit(*args, wait=False)
    fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"])
    deadline = time.time() + 600
    while not fs.exists(f"{storage}/embeddings/manifest.json"):
        assert time.time() < deadline and ray_head.status(sid) in ("PENDING", "RUNNING"), \
            ray_head.logs(sid)[-3000:]
        time.sleep(2)
        fs.invalidate_cache()
    ray_head.ray("job", "stop", "--address", ray_head.address, sid, timeout=120)
    assert ray_head.status(sid) in ("STOPPED", "FAILED")

    sid2 = ray_head.submit(*args)
    assert ray_head.status(sid2) == "SUCCEEDED"
    logs = ray_head.logs(sid2)
    for stage in ("shards", "proxy", "embeddings"):
        assert f"stage {stage}: cached" in logs, logs[-3000:]
    assert "stage sweep: ran" in logs and "linear" in logs.lower(), logs[-3000:]
    fs.invalidate_cache()
    for artifact in ("partition/labels", "rankings/labels/sas", "sweep", "report"):
        assert fs.exists(f"{storage}/{artifact}/manifest.json"), artifact
    assert fs.size(f"{storage}/report/accuracy_vs_fraction.png") > 0


def test_relative_storage_in_a_job_fails_before_any_stage(ray_head: Head) -> None:
    """In a job the working directory is Ray's per-job copy of it: a relative run.storage
    is one error line naming the fix, and no stage runs."""
    sid = ray_head.submit("pipeline", "--run.storage", "outputs", wait=False)
    deadline = time.time() + 300
    while (status := ray_head.status(sid)) in ("PENDING", "RUNNING"):
        assert time.time() < deadline, ray_head.logs(sid)[-3000:]
        time.sleep(2)
    logs = ray_head.logs(sid)
    assert status == "FAILED", logs[-3000:]
    last = logs.strip().splitlines()[-1]
    assert last.startswith("sas-ray pipeline: error: run.storage 'outputs' is relative: in a "
                           "Ray job"), logs[-3000:]
    assert "an s3:// URI" in last and "stage " not in logs
