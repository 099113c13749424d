"""The scaffolding of the server cases: a real ``dermogaze serve`` subprocess, raw HTTP to it, and a case's verdict.

:class:`Server` runs ``python -m dermogaze serve`` as :class:`~.cli_probe.Probe` runs every command (its
environment, its address-space limit, its own process group) over the tier's tiny run and cache, with its own
temporary folder (``TMPDIR``) and its log in a file. Requests go over HTTP with ``http.client`` (the JSON API,
uploads streamed from disk) or ``gradio_client``; every request has the hang guard :data:`REQUEST_GUARD_S`: no
answer within it is a hang.

A case is CLEAN (:func:`check_case`) when its own checks hold (the precise status and message), the server's log
holds no traceback since the case began, and the server still analyses a good image afterwards.

The package under test is this checkout's; ``DERMOGAZE_PROBE_SRC=/path/to/src`` serves another copy of it
(the inputs are still built by this checkout), to count what an older version fails.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .cli_probe import Probe, Proc, traceback_of

#: Seconds a request may wait for its answer before the case counts as a hang.
REQUEST_GUARD_S = 60.0
#: Seconds a server may take to start, or to stop after a signal (a hang guard, not an expectation).
START_GUARD_S = 300.0


class NoAnswer(Exception):
    """The server did not answer within :data:`REQUEST_GUARD_S` (or closed the connection)."""


# ----------------------------------------------------------------------------------------------
# The server
# ----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``dermogaze serve`` subprocess over the probe's tiny run and cache.

    Args:
        probe: the tier's probe (environment, inputs).
        tmpdir: the server's ``TMPDIR`` (created).
        src: the package under test (default: ``DERMOGAZE_PROBE_SRC``, else the probe's).
    """

    def __init__(self, probe: Probe, tmpdir: Path, src: str | None = None) -> None:
        self.probe = probe
        self.tmpdir = tmpdir
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.src = src or os.environ.get("DERMOGAZE_PROBE_SRC")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmpdir.parent / f"{tmpdir.name}.log"
        self.popen: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        env = dict(self.probe.env, TMPDIR=str(self.tmpdir), NO_PROXY="127.0.0.1,localhost",
                   no_proxy="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
        if self.src:
            env["PYTHONPATH"] = self.src
        return env

    @property
    def argv(self) -> list[str]:
        return self.probe.argv(["serve", "--checkpoint", self.probe.best, "--data", self.probe.cache,
                                "--port", self.port, "--device", "cpu"])

    def start(self) -> Server:
        """Start the server and wait until it answers (or ends: then :attr:`log` says why)."""
        with open(self.log_path, "w") as log:
            self.popen = subprocess.Popen(self.argv, cwd=self.probe.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, preexec_fn=self.probe._preexec)
        deadline = time.monotonic() + START_GUARD_S
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"dermogaze serve ended at start (rc={self.popen.returncode}):\n{self.log[-3000:]}")
            try:
                if get(self, "/gradio_api/info", timeout=5.0)[0] == 200:
                    return self
            except (NoAnswer, OSError):
                pass
            time.sleep(0.25)
        self.kill()
        raise RuntimeError(f"dermogaze serve did not answer within {START_GUARD_S:.0f} s:\n{self.log[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def mark(self) -> int:
        """The log's length now: :meth:`log_since` of it is what the server logged after."""
        return len(self.log)

    def log_since(self, mark: int) -> str:
        return self.log[mark:]

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Send ``sig`` and wait for the end (killed past :data:`START_GUARD_S`: then None)."""
        if self.popen is None or self.popen.poll() is not None:
            return None if self.popen is None else self.popen.returncode
        self.popen.send_signal(sig)
        try:
            return self.popen.wait(START_GUARD_S)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def status(self, key: str) -> int:
        """A ``/proc/PID/status`` figure in kB (``VmRSS``, ``VmHWM``)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def files(self) -> list[str]:
        """The files under the server's ``TMPDIR``, relative to it."""
        return sorted(str(p.relative_to(self.tmpdir)) for p in self.tmpdir.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------
# HTTP
# ----------------------------------------------------------------------------------------------
def _connection(server: Server, timeout: float) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)


def _request(server: Server, method: str, path: str, body: Any = None, headers: dict | None = None,
             timeout: float = REQUEST_GUARD_S) -> tuple[int, str]:
    conn = _connection(server, timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    except TimeoutError as exc:
        raise NoAnswer(f"{method} {path}: no answer within {timeout:.0f} s") from exc
    except (ConnectionError, http.client.HTTPException) as exc:
        raise NoAnswer(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()


def get(server: Server, path: str, timeout: float = REQUEST_GUARD_S) -> tuple[int, str]:
    return _request(server, "GET", path, timeout=timeout)


def post_json(server: Server, path: str, body: Any) -> tuple[int, Any]:
    """POST ``body`` as JSON (bytes are sent as they are); the status and the answer's JSON (or its text)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, text = _request(server, "POST", path, data, {"Content-Type": "application/json"})
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def detail(answer: Any) -> Any:
    """The message of an HTTP error's JSON answer (``detail``, or Gradio's ``error``)."""
    if isinstance(answer, dict):
        return answer.get("detail", answer.get("error"))
    return answer


def _multipart(name: str, boundary: str) -> tuple[bytes, bytes]:
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head, f"\r\n--{boundary}--\r\n".encode()


def upload(server: Server, path: Path, *, name: str | None = None, chunked: bool = False) -> tuple[int, Any]:
    """POST ``path`` to ``/gradio_api/upload`` as a browser does (streamed from disk); the status and answer.

    A 200 answers the list of the stored files' paths.
    """
    boundary = uuid.uuid4().hex
    head, tail = _multipart(name or path.name, boundary)

    def body() -> Iterator[bytes]:
        yield head
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                yield chunk
        yield tail

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if not chunked:
        headers["Content-Length"] = str(len(head) + path.stat().st_size + len(tail))
    conn = _connection(server, REQUEST_GUARD_S)
    try:
        conn.request("POST", "/gradio_api/upload", body=body(), headers=headers, encode_chunked=chunked)
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
    except TimeoutError as exc:
        raise NoAnswer(f"upload {path.name}: no answer within {REQUEST_GUARD_S:.0f} s") from exc
    except (ConnectionError, http.client.HTTPException) as exc:
        raise NoAnswer(f"upload {path.name}: {type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text


def file_data(stored: str, name: str) -> dict:
    """The value of an upload input: a file that ``/gradio_api/upload`` stored."""
    return {"path": stored, "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def call(server: Server, name: str, data: Any, session: str | None = None) -> tuple[str, Any]:
    """``/gradio_api/call/NAME`` and its result: ``("complete", outputs)``, ``("error", message)`` or
    ``("http STATUS", answer)`` when the call is refused before it runs."""
    body: dict[str, Any] = {"data": data}
    if session is not None:
        body["session_hash"] = session
    status, answer = post_json(server, f"/gradio_api/call/{name}", body)
    if status != 200 or not isinstance(answer, dict) or "event_id" not in answer:
        return f"http {status}", detail(answer)
    status, text = get(server, f"/gradio_api/call/{name}/{answer['event_id']}")
    event, payload = None, None
    for line in text.splitlines():
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            payload = json.loads(line[len("data: "):])
    if event == "error":
        return "error", detail(payload)
    return event or f"http {status}", payload


#: The outputs of ``/analyse_upload`` as ``/gradio_api/call`` returns them (the tab's state and layout included).
ANALYSIS = ("state", "status", "top", "details", "diagnosis", "path", "legend", "step", "gazes", "table", "keep",
            "p_keep", "effect", "record", "files", "upload")


def analyse(server: Server, path: Path, session: str | None = None, name: str | None = None) -> tuple[str, Any]:
    """Upload ``path`` and analyse it: ``("complete", {output: value})``, or what refused it (as :func:`call`)."""
    status, stored = upload(server, path, name=name)
    if status != 200:
        return f"upload http {status}", detail(stored)
    event, out = call(server, "analyse_upload", [file_data(stored[0], name or path.name)], session)
    if event == "complete":
        return event, dict(zip(ANALYSIS, out, strict=True))
    return event, out


def good_request_problem(server: Server) -> str | None:
    """None when the server analyses the probe's good image; otherwise what went wrong."""
    try:
        event, out = analyse(server, server.probe.img)
    except NoAnswer as exc:
        return f"a good request afterwards: {exc}"
    if event != "complete" or not out["record"] or out["record"]["image_id"] != server.probe.img.stem:
        return f"a good request afterwards was not analysed: {event} {str(out)[:150]}"
    return None


def check_case(server: Server, mark: int, outcome: str, *checks: tuple[bool, str]) -> None:
    """The case's assertion: its checks hold, the server logged no traceback since ``mark`` and still answers.

    Args:
        server: the server of the case.
        mark: :meth:`Server.mark` at the case's start.
        outcome: what happened, for the failure message.
        checks: ``(ok, problem)`` pairs; the problems of those not ok make the case NOT CLEAN.
    """
    problems = [problem for ok, problem in checks if not ok]
    if server.popen is not None and server.popen.poll() is not None:
        problems.append(f"the server ended (rc={server.popen.returncode})")
    else:
        alive = good_request_problem(server)
        if alive:
            problems.append(alive)
    tb = traceback_of(Proc([], None, "", server.log_since(mark)))
    if tb:
        problems.append(f"server log: {tb}")
    assert not problems, f"NOT CLEAN: {outcome} | {'; '.join(problems)}"
