"""`flwr run` executes fednas's ServerApp and ClientApp under Flower's simulation runtime.

This is the path a user takes with ``flwr run .``: the CLI packs the app into a FAB and
submits it to a SuperLink started in simulation mode, whose ``flwr-simulation`` process
installs the FAB under ``$FLWR_HOME/apps`` and runs the apps with Ray. Flower's default
connection (address ``:local:``) starts that SuperLink by itself and leaves it running;
here the test starts the same SuperLink on a free port so that it can stop it again, and
points ``flwr`` at it through a Flower config in a temporary ``FLWR_HOME``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="flwr run simulates with Ray: install flwr[simulation]"),
    pytest.mark.skipif(not (BIN / "flwr").exists(), reason=f"no flwr CLI next to {sys.executable}"),
]

RUN_TIMEOUT = 600  # seconds for `flwr run --stream`; the run itself takes well under a minute

TINY = """
[study]
seed = 0

[data]
source = "mnist5k"
limit = 200

[federation]
num_clients = 2
rounds = 2

[space.labels]          # a fixed compression label travels to the apps (issue 9: flwr run dropped them)
uplink_codec = "quantize"
uplink_bits = 4
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HOME=str(tmp_path / "home"),
        FLWR_HOME=str(tmp_path / "flwr"),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # the SuperLink spawns flower-superexec, flwr-simulation
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",  # else the SuperLink `uv sync`s the app's dependencies
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_TELEMETRY_ENABLED="0",
        PYTHONUNBUFFERED="1",
    )
    for d in ("home", "flwr"):
        (tmp_path / d).mkdir()
    return env


def _wait_healthy(proc: subprocess.Popen, port: int, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"flower-superlink exited with {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as res:
                if res.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"flower-superlink not healthy after {timeout:.0f}s:\n{log.read_text(errors='replace')[-4000:]}")


@pytest.fixture
def superlink(tmp_path: Path):
    """A simulation SuperLink on a free port, and the env that makes `flwr` use it."""
    env = _env(tmp_path)
    port = _free_port()
    log = tmp_path / "superlink.log"
    # The same command Flower's `:local:` connection runs (flwr/cli/local_superlink.py).
    cmd = [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-file", str(log)]
    with open(tmp_path / "superlink.out", "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(proc, port, log)
        (tmp_path / "flwr" / "config.toml").write_text(
            f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        yield env
    finally:
        # SIGTERM: the SuperLink stops the flower-superexec it started (which also
        # watches its parent's pid); the group is the one start_new_session made.
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _flwr(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "flwr"), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_flwr_run_executes_the_apps_end_to_end(superlink: dict[str, str], tmp_path: Path) -> None:
    study = tmp_path / "tiny.toml"
    study.write_text(TINY)
    run_config = f'study-config="{study}" num-server-rounds=2 num-partitions=2'

    start = time.monotonic()
    try:
        proc = _flwr(
            ["run", ".", "--stream", "--run-config", run_config, "--federation-config", "num-supernodes=2"],
            superlink,
            RUN_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"flwr run did not finish in {RUN_TIMEOUT}s; output so far:\n{exc.stdout!s}\n{exc.stderr!s}")
    seconds = time.monotonic() - start
    output = proc.stdout + proc.stderr
    print(f"flwr run took {seconds:.1f}s\n{output}")

    assert proc.returncode == 0, output
    started = re.search(r"Successfully started run (\d+)", output)
    assert started, output
    assert "(2 simulated SuperNodes)" in output, output
    final = re.search(r"final accuracy (\d+\.\d+), (\d+) bytes", output)
    assert final, f"the ServerApp did not report its final accuracy:\n{output}"
    assert 0.0 <= float(final.group(1)) <= 1.0
    assert int(final.group(2)) > 0
    assert "(mobilenet, compression q4 up)" in output, output
    # Every ClientApp call succeeded (a partition-id outside the shards raises in the node).
    assert "ClientAppException" not in output, output

    listed = _flwr(["ls", "--run-id", started.group(1), "--format", "json"], superlink, 60)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    (run,) = json.loads(listed.stdout)["runs"]
    assert run["status"] == "finished:completed", run


def _start(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process group (a node's flower-superexec and apps with it), SIGKILL what is left after 30 s."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_a_real_deployment_trains_like_the_in_process_run(tmp_path: Path) -> None:
    """A SuperLink and two SuperNodes as real processes on localhost (insecure), each node naming its partition in
    its node_config; `fednas train --superlink` ships fednas's apps to them through `flwr run` and bundles what the
    ServerApp saved. Accuracy, bytes and weights equal the in-process `fednas train` of the same candidate."""
    from safetensors.torch import load_file

    from fednas.export import train_architecture
    from fednas.export._cli import _train_inputs
    from fednas.cli import _parser

    env = _env(tmp_path)
    study = tmp_path / "tiny.toml"
    study.write_text(TINY)
    port = _free_port()
    procs = [_start([str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
                     "--log-file", str(tmp_path / "superlink.log")], env, tmp_path, tmp_path / "superlink.out")]
    out = tmp_path / "bundle"
    start = time.monotonic()
    try:
        _wait_healthy(procs[0], port, tmp_path / "superlink.out")
        for i in range(2):
            procs.append(_start([str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                                 "--port", str(_free_port()), "--node-config", f"partition-id={i} num-partitions=2"],
                                env, tmp_path, tmp_path / f"supernode{i}.log"))
        (tmp_path / "flwr" / "config.toml").write_text(
            f'[superlink]\ndefault = "dep"\n\n[superlink.dep]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
        args = ["train", "mobilenet_tiny", str(study), "--rounds", "2", "--superlink", "dep", "--out", str(out),
                "--formats", "onnx"]
        proc = subprocess.run([str(BIN / "fednas"), *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT, check=False)
        output = proc.stdout + proc.stderr
    finally:
        _stop(procs)
    seconds = time.monotonic() - start
    print(f"deployment run took {seconds:.1f}s\n{output}")
    assert all(p.poll() is not None for p in procs)
    assert proc.returncode == 0, output
    assert "ClientAppException" not in output, output  # (the streamed log may end before the ServerApp's last line)
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["origin"]["runtime"] == "flower deployment" and doc["origin"]["superlink"] == "dep"
    assert not list(tmp_path.glob(".bundle.superlink-*")), "the staging folder is removed"

    # The same candidate trained in this process (what `fednas train` without --superlink does).
    candidate, config, origin = _train_inputs(_parser().parse_args(args[:5] + ["--out", str(tmp_path / "x")]))
    local = train_architecture(candidate, config, rounds=2, origin=origin)
    # Every seed comes from the run seed, the round and the partition (not the deployment's random run and node
    # ids), so the deployment reproduces the in-process run: same accuracy, bytes and weights.
    assert doc["metrics"]["accuracy"] == pytest.approx(local.metrics["accuracy"], abs=1e-9), output
    assert doc["metrics"]["comm_bytes"] == local.metrics["comm_bytes"]
    deployed = load_file(str(out / "model.safetensors"))
    assert deployed.keys() == local.state.keys()
    assert all(torch.allclose(deployed[k].float(), local.state[k].float(), atol=1e-6) for k in deployed)
    assert [r["accuracy"] for r in doc["rounds"]] == [r["accuracy"] for r in local.rounds]


def test_an_unknown_superlink_connection_fails_cleanly(tmp_path: Path) -> None:
    env = _env(tmp_path)
    study = tmp_path / "tiny.toml"
    study.write_text(TINY)
    out = tmp_path / "bundle"
    proc = subprocess.run([str(BIN / "fednas"), "train", "mobilenet_tiny", str(study), "--rounds", "1",
                           "--superlink", "nosuch", "--out", str(out)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "fednas: training failed: flwr run exited with" in proc.stderr
    assert "'nosuch' not found" in proc.stdout + proc.stderr  # Flower's own message about the connection
    assert not out.exists() and not list(tmp_path.glob(".bundle.superlink-*"))
