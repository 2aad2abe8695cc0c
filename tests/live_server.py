"""``python -m rain live`` in a child process for tests: started on a free loopback port, always stopped."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class LiveServer:
    """``python -m rain live`` in its own process group; always stopped, never left behind."""

    def __init__(self, *args: str):
        self.process = subprocess.Popen([sys.executable, "-m", "rain", "live", "--port", "0", *args], cwd=REPO,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        self.lines: list[str] = []
        self.url = None
        deadline = time.monotonic() + 180
        while self.url is None:
            line = self.process.stdout.readline()
            if not line:
                self.stop()
                raise AssertionError("the live server ended before serving:\n" + "".join(self.lines))
            self.lines.append(line)
            if line.startswith("RAIN live: panel "):
                self.url = line.split()[3]
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("the live server did not start:\n" + "".join(self.lines))

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        rest = self.process.stdout.read()
        self.process.stdout.close()
        return self.process.returncode, "".join(self.lines) + rest
