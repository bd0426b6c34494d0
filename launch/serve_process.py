"""`launch.serve` as a subprocess on 127.0.0.1 (tests and launch.bench_serve)."""

import os
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(args, timeout_s: float = 180.0, env: dict | None = None):
  """Starts `python -m launch.serve` with `args` on a free port and waits for
  /health; returns (process, base URL). The caller ends the process. `env`:
  variables set for the server on top of this process's."""
  import tempfile  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  import httpx  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:  # A port free now.
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  log = tempfile.TemporaryFile(mode='w+')  # A pipe nobody reads could fill up.
  proc = subprocess.Popen([sys.executable, '-m', 'launch.serve', f'--port={port}', *args],
                          cwd=REPO, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, text=True)
  proc.log = log
  def output():
    log.seek(0)
    return log.read()[-3000:]
  url = f'http://127.0.0.1:{port}'
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      raise RuntimeError(f'server exited {proc.returncode}: {output()}')
    try:
      if httpx.get(url + '/health', timeout=1.0).status_code == 200:
        return proc, url
    except httpx.TransportError:
      pass
    time.sleep(0.3)
  proc.kill()
  raise RuntimeError(f'server not up in {timeout_s} s: {output()}')
