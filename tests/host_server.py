"""The real ComfyUI server for tests: started on 127.0.0.1 with ``--base-directory`` in a temp folder that holds
``models/``, ``input/``, ``output/`` and ``custom_nodes/`` (this repository, symlinked), and spoken to over HTTP."""
import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from conftest import HOST, REPO

EXTENSION_DIR_NAME = "ipadapter_suite"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, path, body=None, timeout=30):
    """GET (or POST ``body`` as JSON) ``path`` and return the decoded JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def prepare_base(base):
    """Create the folders of a host base directory and link this extension into its custom_nodes."""
    for sub in ("models", "input", "output", "custom_nodes"):
        (base / sub).mkdir(exist_ok=True)
    link = base / "custom_nodes" / EXTENSION_DIR_NAME
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)


@contextlib.contextmanager
def comfy_server(base, extra_args=(), start_timeout=180):
    """Run ``main.py --cpu`` on a free port with ``base`` as its base directory; yield
    ``{"port", "base", "log", "url"}``; stop it afterwards. The log is ``base/server.log``."""
    prepare_base(base)
    port = free_port()
    log_path = base / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, str(HOST / "main.py"), "--cpu", "--listen", "127.0.0.1",
                             "--port", str(port), "--base-directory", str(base), *extra_args],
                            cwd=str(HOST), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + start_timeout
        while True:
            try:
                request(port, "/system_stats")
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("ComfyUI did not start:\n" + log_path.read_text()[-4000:])
                time.sleep(1)
        yield {"port": port, "base": base, "log": log_path, "url": f"http://127.0.0.1:{port}"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def run_prompt(port, prompt, timeout=600):
    """Queue an API-format ``prompt`` and wait for its history entry; return that entry."""
    try:
        prompt_id = request(port, "/prompt", {"prompt": prompt})["prompt_id"]
    except urllib.error.HTTPError as e:  # the host refused the graph: its answer says which node and input
        raise AssertionError(f"the host refused the prompt ({e.code}): {e.read().decode()[:4000]}") from None
    deadline = time.time() + timeout
    while time.time() < deadline:
        history = request(port, f"/history/{prompt_id}")
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            return history[prompt_id]
        time.sleep(0.5)
    raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")
