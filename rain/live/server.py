"""aiohttp routes of live sessions, the same in ComfyUI (on its server) and in ``python -m rain live``.

Under a prefix (``/rain/live``): ``/`` the panel page, ``/viewer`` the output-only page for OBS,
``/static/{name}`` their scripts (a fixed list: no name reaches the file system), ``/sessions`` (JSON),
``/ws?session=…&role=camera|viewer`` the websocket (see ``protocol``), and ``POST /reference?session=…`` an
image to fuse and swap in.

Every route checks where the request comes from (``OriginPolicy``): a browser always sends ``Origin`` on
websockets and POSTs, and it must be the page's own origin; the standalone server also accepts only loopback
``Host`` names unless told otherwise (so a web page cannot reach it through DNS rebinding).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import deque
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit

from .protocol import (OUTPUT_FORMATS, FrameLimits, Rejected, RateLimiter, parse_control,
                       parse_frame)
from ..io.images import ImageError, decode_reference
from .routes import PREFIX, ROUTES
from .session import LiveFrame, LiveSession

log = logging.getLogger("rain.live")

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {"live_panel.js": "text/javascript", "standalone.js": "text/javascript",
                "viewer.js": "text/javascript"}
PAGES = {"panel": "index.html", "viewer": "viewer.html"}
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_SHOWN_REPORT = 256
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' blob: data:; "
                               "media-src 'self' blob: mediastream:; connect-src 'self'; frame-ancestors 'self'",
}


def host_name(host_header: str | None) -> str | None:
    if not host_header:
        return None
    try:
        return urlsplit("//" + host_header).hostname
    except ValueError:
        return None


class OriginPolicy:
    """Who may use the routes. ``allowed_hosts``: the ``Host`` names accepted (None = any: ComfyUI decides where it
    listens). ``extra_origins``: origins other than the page's own that may connect (e.g. a page served
    elsewhere). A request without ``Origin`` comes from a program, not a browser page, and is accepted."""

    def __init__(self, allowed_hosts: Iterable[str] | None = None, extra_origins: Iterable[str] = ()):
        self.allowed_hosts = None if allowed_hosts is None else {h.lower().strip("[]") for h in allowed_hosts}
        self.extra_origins = {o.rstrip("/").lower() for o in extra_origins}

    @classmethod
    def loopback(cls, extra_hosts: Iterable[str] = (), extra_origins: Iterable[str] = ()) -> "OriginPolicy":
        return cls(LOOPBACK_HOSTS | set(extra_hosts), extra_origins)

    def refusal(self, request) -> str | None:
        """Why ``request`` is refused, or None."""
        host = request.headers.get("Host", "")
        if self.allowed_hosts is not None and (host_name(host) or "") not in self.allowed_hosts:
            return f"this server answers only to {sorted(self.allowed_hosts)}, not to Host {host!r}"
        origin = request.headers.get("Origin")
        if origin is None:
            return None
        origin = origin.rstrip("/").lower()
        if origin in self.extra_origins:
            return None
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or parts.netloc != host.lower():
            return f"origin {origin!r} is not this page's origin; open the page from this server"
        return None


class LiveRegistry:
    """The sessions a server knows, by id."""

    def __init__(self):
        self._sessions: dict[str, LiveSession] = {}
        self._lock = threading.Lock()

    def add(self, session: LiveSession) -> LiveSession:
        with self._lock:
            old = self._sessions.get(session.id)
            self._sessions[session.id] = session
        if old is not None and old is not session:
            old.close()
        return session

    def get(self, session_id: str | None) -> LiveSession | None:
        """The session ``session_id``; without an id, the only session there is (else None)."""
        with self._lock:
            if session_id:
                return self._sessions.get(session_id)
            return next(iter(self._sessions.values())) if len(self._sessions) == 1 else None

    def remove(self, session_id: str) -> None:
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is not None:
            session.close()

    def sessions(self) -> list[LiveSession]:
        with self._lock:
            return list(self._sessions.values())

    def close_all(self) -> None:
        for session in self.sessions():
            self.remove(session.id)


class AsyncOutbox:
    """A subscriber feeding one websocket: frames and events handed over to the event loop; at most ``frames``
    frames wait (a slow client skips frames rather than delaying them)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, frames: int = 2, events: int = 64):
        self.loop, self.max_frames, self.max_events = loop, frames, events
        self.items: deque = deque()
        self.ready = asyncio.Event()
        self.skipped = 0

    def deliver(self, frame: LiveFrame) -> None:
        self._hand_over(frame)

    def notify(self, event: dict) -> None:
        self._hand_over(event)

    def _hand_over(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self._put, item)
        except RuntimeError:  # the loop has closed: the connection is gone
            pass

    def _put(self, item) -> None:
        self.items.append(item)
        is_frame = isinstance(item, LiveFrame)
        same = [i for i in self.items if isinstance(i, LiveFrame) == is_frame]
        if len(same) > (self.max_frames if is_frame else self.max_events):
            self.items.remove(same[0])
            self.skipped += is_frame
        self.ready.set()

    async def get(self):
        while not self.items:
            self.ready.clear()
            await self.ready.wait()
        return self.items.popleft()


async def _read_body(request, limit: int) -> bytes | None:
    """The request body, or None when it is longer than ``limit``."""
    chunks, size = [], 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


class LiveRoutes:
    """The handlers; ``route_table()`` lists (method, path, handler) for any aiohttp router."""

    def __init__(self, registry: LiveRegistry, *, limits: FrameLimits | None = None,
                 policy: OriginPolicy | None = None, prefix: str = PREFIX, stats_interval: float = 0.5):
        self.registry = registry
        self.limits = limits or FrameLimits()
        self.policy = policy or OriginPolicy()
        self.prefix = prefix.rstrip("/")
        self.stats_interval = stats_interval

    def route_table(self) -> list[tuple[str, str, object]]:
        return [(method, self.prefix + path, getattr(self, name)) for method, path, name in ROUTES]

    # -- pages -----------------------------------------------------------------------------------------------------
    def _refused(self, request):
        from aiohttp import web
        refusal = self.policy.refusal(request)
        return None if refusal is None else web.Response(status=403, text=refusal)

    def _page(self, request, name: str):
        from aiohttp import web
        refused = self._refused(request)
        if refused is not None:
            return refused
        body = (STATIC_DIR / PAGES[name]).read_bytes()
        return web.Response(body=body, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)

    async def panel_page(self, request):
        return self._page(request, "panel")

    async def viewer_page(self, request):
        return self._page(request, "viewer")

    async def static_file(self, request):
        from aiohttp import web
        name = request.match_info.get("name", "")
        if name not in STATIC_FILES:  # a fixed list: no request names a path
            return web.Response(status=404, text="not found")
        return web.Response(body=(STATIC_DIR / name).read_bytes(), content_type=STATIC_FILES[name],
                            charset="utf-8", headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    async def list_sessions(self, request):
        from aiohttp import web
        refused = self._refused(request)
        if refused is not None:
            return refused
        return web.json_response({"sessions": [s.info() for s in self.registry.sessions()]},
                                 headers={"Cache-Control": "no-store"})

    def _session(self, request):
        from aiohttp import web
        session = self.registry.get(request.query.get("session"))
        if session is None:
            known = [s.id for s in self.registry.sessions()]
            text = (f"no live session {request.query.get('session')!r}; running: {known}" if known else
                    "no live session: run a graph with a RAIN Live node, or start `python -m rain live`")
            return None, web.json_response({"error": text}, status=404)
        return session, None

    # -- reference upload --------------------------------------------------------------------------------------------
    async def upload_reference(self, request):
        from aiohttp import web
        refused = self._refused(request)
        if refused is not None:
            return refused
        session, missing = self._session(request)
        if missing is not None:
            return missing
        data = await _read_body(request, self.limits.max_bytes)
        if data is None:
            return web.json_response({"error": f"the image is larger than {self.limits.max_bytes} bytes"}, status=413)
        loop = asyncio.get_running_loop()
        source = f"the uploaded reference ({request.headers.get('X-Filename') or 'image'})"
        try:
            # The one reference reader animate uses (size already bounded by the body limit; Pillow refuses
            # decompression bombs): EXIF orientation, 16-bit scaling, transparency, the minimum size.
            reference = await loop.run_in_executor(None, decode_reference, data, source)
            await loop.run_in_executor(None, session.swap_reference_image, reference)
        except Rejected as rejected:
            return web.json_response({"error": str(rejected), "reason": rejected.reason}, status=400)
        except ImageError as error:
            return web.json_response({"error": str(error), "reason": "unusable"}, status=400)
        except Exception as error:  # fusing failed: the session keeps its character
            log.exception("RAIN live %s: the reference could not be fused", session.id)
            return web.json_response({"error": f"the reference could not be fused: {error}"}, status=500)
        return web.json_response({"ok": True, "reference_swaps": session.stats.reference_swaps})

    # -- the websocket -------------------------------------------------------------------------------------------------
    async def websocket(self, request):
        from aiohttp import WSMsgType, web
        refused = self._refused(request)
        if refused is not None:
            return refused
        session, missing = self._session(request)
        if missing is not None:
            return missing
        role = request.query.get("role", "camera")
        fmt = request.query.get("format", session.settings.output_format).lower()
        if role not in ("camera", "viewer") or fmt not in OUTPUT_FORMATS:
            return web.json_response({"error": "role must be camera or viewer; format jpeg, png or webp"}, status=400)

        ws = web.WebSocketResponse(max_msg_size=self.limits.hard_max_bytes, heartbeat=30.0)
        await ws.prepare(request)
        outbox = AsyncOutbox(asyncio.get_running_loop())
        session.subscribe(outbox)
        tasks = [asyncio.create_task(self._send(ws, outbox, fmt, session.settings.output_quality))]
        if role == "camera":
            tasks.append(asyncio.create_task(self._report(ws, session)))
        source = session.claim_source() if role == "camera" else None
        limiter = RateLimiter(self.limits.max_rate, self.limits.burst)
        told_superseded = False
        told: set[str] = set()
        try:
            await ws.send_json({**session.info(), "role": role})
            async for message in ws:
                if message.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    continue
                if not limiter.allow():
                    session.reject("rate_limited")
                elif message.type == WSMsgType.BINARY:
                    problem = self._frame(session, message.data, source)
                    if problem is not None and problem[0] not in told:   # once per kind, not once per frame
                        told.add(problem[0])
                        await ws.send_json({"type": "error", "reason": problem[0], "message": problem[1]})
                    if source is not None and source != session.camera and not told_superseded:
                        told_superseded = True
                        await ws.send_json({"type": "error", "message": "another camera took over this session "
                                                                       "(a newer page, or a local camera)"})
                else:
                    await self._control(ws, session, message.data, role)
            if ws.exception() is not None:  # e.g. a message over hard_max_bytes: this connection ends
                session.reject("oversized")
        finally:
            session.unsubscribe(outbox)
            for task in tasks:
                task.cancel()
        return ws

    def _frame(self, session: LiveSession, data: bytes, source: int | None) -> tuple[str, str] | None:
        """Submit a camera frame; (reason, what was expected) when it is refused."""
        if source is None:
            session.reject("malformed")  # a viewer sends no frames
            return ("unexpected", "this is a viewer connection (role=viewer): it only receives frames. Send camera "
                                  "frames on a connection opened with role=camera, and control messages as JSON "
                                  "text")
        try:
            frame = parse_frame(data, self.limits)
        except Rejected as rejected:
            session.reject(rejected.reason)
            return (rejected.reason, f"{rejected}: a binary message is one camera frame, a JPEG, PNG or WebP "
                                     f"file (with the panel's frame header); control messages are JSON text")
        session.submit(frame, source)
        return None

    async def _control(self, ws, session: LiveSession, text: str, role: str) -> None:
        try:
            message = parse_control(text)
        except Rejected as rejected:
            session.reject(rejected.reason)
            await ws.send_json({"type": "error", "message": str(rejected)})
            return
        kind = message["type"]
        if kind == "ping":
            await ws.send_json({"type": "pong"})
        elif kind == "shown":
            values = message.get("latency_ms")
            if isinstance(values, list):
                session.stats.shown([float(v) for v in values[:MAX_SHOWN_REPORT]
                                     if isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v < 600_000])
        elif role != "camera":
            await ws.send_json({"type": "error", "message": "a viewer cannot control the session"})
        elif kind == "start":
            session.start()
        elif kind == "stop":
            await asyncio.get_running_loop().run_in_executor(None, session.stop)
        elif kind == "calibration":
            try:
                params = message.get("params") or {}
                if not isinstance(params, dict):
                    raise ValueError("params must be an object of slider values")
                session.set_calibration(str(message.get("preset", "calibration")), params)
            except (ValueError, TypeError) as error:
                session.reject("malformed")
                await ws.send_json({"type": "error", "message": str(error)})

    async def _send(self, ws, outbox: AsyncOutbox, fmt: str, quality: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not ws.closed:
                item = await outbox.get()
                if isinstance(item, LiveFrame):
                    data = await loop.run_in_executor(None, item.message, fmt, quality)
                    await ws.send_bytes(data)
                else:
                    await ws.send_json(item)
        except (ConnectionError, RuntimeError):
            pass  # the client went away

    async def _report(self, ws, session: LiveSession) -> None:
        try:
            while not ws.closed:
                await ws.send_json(session.stats_event())
                await asyncio.sleep(self.stats_interval)
        except (ConnectionError, RuntimeError):
            pass
