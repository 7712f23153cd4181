"""LiteLLM's proxy for the comparison: installed into its own virtualenv, run against the fake.

The virtualenv lives in ``.bench-venv/litellm`` at the repository root and is reused between
runs (a marker file records a finished install). Nothing here is imported by dario itself.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support import stop_process

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".bench-venv" / "litellm"
MARKER = VENV / ".bench-installed"
SPEC = "litellm[proxy]"
MODEL = "claude-sonnet-4-5-20250929"
UPSTREAM_KEY = "sk-bench-litellm"
# LiteLLM refuses to start without a master key; the load generator sends it as a Bearer token.
MASTER_KEY = "sk-bench-master-7f3c9a1e5b2d4f6a8c0e1b3d5f7a9c1e"
INSTALL_TIMEOUT = 900.0
START_TIMEOUT = 120.0

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def ensure_installed() -> tuple[Path | None, str]:
    """Return (path of the `litellm` CLI, version) or (None, why it is not available)."""
    exe = VENV / "bin" / "litellm"
    if MARKER.exists() and exe.exists():
        return exe, MARKER.read_text().strip()
    log(f"installing {SPEC} into {VENV} (once; later runs reuse it) ...")
    VENV.parent.mkdir(parents=True, exist_ok=True)
    logfile = VENV.parent / "litellm-install.log"
    t0 = time.monotonic()
    try:
        with open(logfile, "wb") as out:
            if not (VENV / "bin" / "python").exists():
                base = getattr(sys, "_base_executable", sys.executable)
                subprocess.run([base, "-m", "venv", str(VENV)], check=True, stdout=out, stderr=out, timeout=120)
            pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
            subprocess.run([*pip, SPEC], check=True, stdout=out, stderr=out, timeout=INSTALL_TIMEOUT)
            ver = subprocess.run([str(VENV / "bin" / "python"), "-c",
                                  "import importlib.metadata as m; print(m.version('litellm'))"],
                                 check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        tail = ""
        try:
            lines = [ln for ln in logfile.read_text(errors="replace").splitlines() if "is ignored" not in ln]
            tail = "\n".join(lines[-12:])
        except OSError:
            pass
        return None, f"pip install {SPEC} failed ({type(exc).__name__}: {exc}); log {logfile}:\n{tail}"
    if not exe.exists():
        return None, f"{exe} missing after install"
    MARKER.write_text(ver + "\n")
    log(f"installed litellm {ver} in {time.monotonic() - t0:.0f} s")
    return exe, ver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiteLLM:
    def __init__(self, exe: Path, fake_url: str) -> None:
        self.exe = exe
        self.fake_url = fake_url
        self.dir = Path(tempfile.mkdtemp(prefix="bench-litellm-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        cfg = self.dir / "config.yaml"
        cfg.write_text(
            "model_list:\n"
            f"  - model_name: {MODEL}\n"
            "    litellm_params:\n"
            f"      model: anthropic/{MODEL}\n"
            f"      api_base: {self.fake_url}\n"
            f"      api_key: {UPSTREAM_KEY}\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
            "  request_timeout: 60\n"
            "general_settings:\n"
            f"  master_key: {MASTER_KEY}\n"
        )
        return cfg

    def start(self) -> None:
        cfg = self.write_config()
        env = {k: v for k, v in os.environ.items()
               if not k.lower().endswith("_proxy") and not k.startswith(("LITELLM_", "DARIO_"))}
        env.update(
            NO_PROXY="*", no_proxy="*",
            LITELLM_LOCAL_MODEL_COST_MAP="True",  # no fetch of the price list from the internet
            LITELLM_TELEMETRY="False", LITELLM_LOG="ERROR", LITELLM_MODE="PRODUCTION",
            PYTHONUNBUFFERED="1",
        )
        self.log_path = self.dir / "litellm.log"
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [str(self.exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(self.port),
                 "--num_workers", "1"],
                cwd=self.dir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"litellm exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with _NO_PROXY.open(self.url + "/health/liveliness", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"litellm not ready within {timeout:g} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def headers(self) -> list[list[str]]:
        return [["authorization", f"Bearer {MASTER_KEY}"], ["anthropic-version", "2023-06-01"]]

    def probe(self, path: str, stream: bool) -> tuple[bool, str]:
        """Does `path` answer like the Anthropic (or OpenAI) API through LiteLLM?"""
        body: dict[str, Any] = {"model": MODEL, "max_tokens": 32,
                                "messages": [{"role": "user", "content": "probe [[long:3]]"}]}
        if stream:
            body["stream"] = True
        import orjson

        req = urllib.request.Request(self.url + path, data=orjson.dumps(body), method="POST",
                                     headers={k: v for k, v in self.headers()} | {"content-type": "application/json"})
        try:
            with _NO_PROXY.open(req, timeout=30) as r:
                text = r.read().decode(errors="replace")
                status = r.status
        except urllib.error.HTTPError as e:
            return False, f"{path} answered {e.code}: {e.read()[:300]!r}"
        except (urllib.error.URLError, OSError) as e:
            return False, f"{path}: {e}"
        if status != 200:
            return False, f"{path} answered {status}"
        if path.endswith("/messages"):
            ok = ("content_block_delta" in text and "message_stop" in text) if stream else '"type":"message"' in text
        else:
            ok = ("[DONE]" in text) if stream else '"choices"' in text
        return ok, text[:200]

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, 15)
        shutil.rmtree(self.dir, ignore_errors=True)
