"""The live panel in headless Chromium against ``python -m rain live`` (reduced models, DWPose stand-ins): Start
opens the fake camera, frames come back animated with the numbers on screen, a calibration slider reaches the
server, the OBS viewer page shows frames, Stop closes the camera. Screenshots are kept in the test's tmp folder.

Needs Chromium (``RAIN_CHROMIUM`` or ``chromium`` on PATH), node and playwright-core (resolvable from node, e.g.
through NODE_PATH); skipped with the reason otherwise. Leaves no process behind."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from live_server import LiveServer
from test_nodes_run import tiny_models

from rain.live.protocol import encode_image

SCRIPT = Path(__file__).resolve().parent / "browser" / "live_panel.cjs"


def browser_tools() -> tuple[str, str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the panel test drives Chromium with playwright-core from node)")
    chromium = os.environ.get("RAIN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium, or set RAIN_CHROMIUM to its path)")
    found = subprocess.run([node, "-e", "require.resolve('playwright-core')"], capture_output=True, timeout=60)
    if found.returncode != 0:
        pytest.skip("playwright-core is not resolvable from node (npm install playwright-core, or set NODE_PATH to "
                    "the node_modules folder that holds it)")
    return node, chromium


def processes_using(marker: str) -> list[int]:
    """Ids of the processes whose command line holds ``marker`` (our own Chromium's user-data folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_panel_in_headless_chromium(tmp_path_factory):
    node, chromium = browser_tools()
    models = tiny_models(tmp_path_factory)          # reduced models plus DWPose stand-ins that find a face
    work = tmp_path_factory.mktemp("live_browser")
    reference = work / "character.png"
    reference.write_bytes(encode_image((np.random.default_rng(4).random((80, 64, 3)) * 255).astype(np.uint8), "png"))
    user_data = Path(tempfile.mkdtemp(prefix="rain-live-chromium-"))
    server = LiveServer("--models-dir", str(models), "--reference", str(reference), "--task", "face", "--size", "64",
                        "--frames-per-group", "2", "--groups", "2")
    script = None
    try:
        script = subprocess.Popen([node, str(SCRIPT), server.url, chromium, str(user_data), str(work)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = script.communicate(timeout=400)
        except subprocess.TimeoutExpired:
            script.send_signal(signal.SIGTERM)      # playwright closes its browser on SIGTERM
            out, err = script.communicate(timeout=30)
            raise AssertionError(f"the browser script did not finish:\n{out}\n{err}")
        assert script.returncode == 0, f"{out}\n{err}"
        report = json.loads(out.strip().splitlines()[-1])
    finally:
        if script is not None and script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
            script.wait()
        code, log = server.stop()
        for pid in processes_using(str(user_data)):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(user_data, ignore_errors=True)
    assert not processes_using(str(user_data))
    assert code == 0, log

    assert report["problems"] == [], report["problems"]
    output = report["output"]
    assert (output["width"], output["height"]) == (64, 64)
    assert output["opaque"] == 1 and output["colours"] > 16     # a decoded frame, not an empty canvas
    client = report["client"]
    assert client["shown"] >= 10 and client["sent"] >= client["shown"]
    assert client["server"]["calibration_changes"] >= 1 and client["server"]["frames_emitted"] >= 10
    for words in ("camera", "fps", "latency", "dropped", "queue"):
        assert words in report["numbers"]
    assert report["background"] == "rgb(0, 255, 0)" and "session=live" in report["viewerUrl"]
    assert report["cameraClosed"] is True
    # A stopped panel says so over its last frame; a running one shows no overlay.
    assert report["running"] == {"state": "running", "text": "", "shown": False}
    assert report["stopped"]["state"] == "stopped" and report["stopped"]["shown"]
    assert "stopped" in report["stopped"]["text"] and "Start" in report["stopped"]["text"]
    for name in ("live_panel.png", "live_viewer.png"):
        assert (work / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshots: {work}")
