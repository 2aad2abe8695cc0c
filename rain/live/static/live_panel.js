// ComfyUI-RAIN live panel: webcam → websocket → animated frames back, with the numbers that matter on screen.
//
// One module for the standalone page (python -m rain live) and the RAIN Live node in ComfyUI; it imports nothing
// from either host. Protocol (rain/live/protocol.py): binary messages carry one image after a little-endian
// header — camera → server "RLF1", uint32 sequence, float64 capture time (performance.now() ms); server → client
// "RLO1", uint32 sequence, float64 capture time echoed, float32 server ms. Text messages are JSON.

const FRAME_MAGIC = [0x52, 0x4c, 0x46, 0x31];   // "RLF1"
const OUTPUT_MAGIC = [0x52, 0x4c, 0x4f, 0x31];  // "RLO1"
const FRAME_HEADER = 16;
const OUTPUT_HEADER = 20;
const MIME = { jpeg: "image/jpeg", webp: "image/webp", png: "image/png" };
const MAX_BUFFERED = 2 * 1024 * 1024;           // skip camera frames rather than queue them in the socket
const LATENCY_WINDOW = 120;

export function frameMessage(sequence, captureMs, image) {
  const bytes = new Uint8Array(FRAME_HEADER + image.byteLength);
  const view = new DataView(bytes.buffer);
  FRAME_MAGIC.forEach((b, i) => view.setUint8(i, b));
  view.setUint32(4, sequence >>> 0, true);
  view.setFloat64(8, captureMs, true);
  bytes.set(new Uint8Array(image), FRAME_HEADER);
  return bytes.buffer;
}

export function parseOutput(buffer) {
  const view = new DataView(buffer);
  if (buffer.byteLength < OUTPUT_HEADER || OUTPUT_MAGIC.some((b, i) => view.getUint8(i) !== b)) return null;
  return {
    sequence: view.getUint32(4, true),
    captureMs: view.getFloat64(8, true),
    serverMs: view.getFloat32(16, true),
    image: new Uint8Array(buffer, OUTPUT_HEADER),
  };
}

function baseUrl(base) {
  const url = new URL(base, location.href);
  if (!url.pathname.endsWith("/")) url.pathname += "/";
  return url;
}

export function socketUrl(base, params) {
  const url = new URL("ws", baseUrl(base));
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  for (const [key, value] of Object.entries(params)) if (value != null) url.searchParams.set(key, value);
  return url.toString();
}

function percentile(values, fraction) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(fraction * (sorted.length - 1) + 0.5))];
}

class Rate {
  constructor(windowMs = 3000) { this.windowMs = windowMs; this.times = []; }
  add(now = performance.now()) { this.times.push(now); this.trim(now); }
  trim(now) { while (this.times.length && this.times[0] < now - this.windowMs) this.times.shift(); }
  value() {
    const now = performance.now();
    this.trim(now);
    return this.times.length < 2 ? 0 : (this.times.length - 1) * 1000 / Math.max(1, now - this.times[0]);
  }
}

// Draws frames of a session's websocket onto a canvas; shared by the panel (camera role) and the viewer.
function drawFrames(socket, canvas, format, onShown) {
  const context = canvas.getContext("2d");
  let drawing = Promise.resolve();
  socket.binaryType = "arraybuffer";
  socket.addEventListener("message", (event) => {
    if (typeof event.data === "string") return;
    const frame = parseOutput(event.data);
    if (!frame) return;
    // Frames are drawn in arrival order; a frame that arrives while one decodes waits for it.
    drawing = drawing.then(async () => {
      const bitmap = await createImageBitmap(new Blob([frame.image], { type: MIME[format] ?? "image/jpeg" }));
      if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
        canvas.width = bitmap.width;
        canvas.height = bitmap.height;
      }
      context.drawImage(bitmap, 0, 0);
      bitmap.close();
      onShown?.(frame, performance.now());
    }).catch((error) => console.warn("[RAIN live] a frame could not be shown", error));
  });
}

export class LiveClient extends EventTarget {
  constructor({ base, session = null, fps = 30, maxSide = 640, quality = 0.8, format = "jpeg" } = {}) {
    super();
    Object.assign(this, { base, session, fps, maxSide, quality, format });
    this.socket = null;
    this.stream = null;
    this.video = null;
    this.canvas = null;
    this.sequence = 0;
    this.encoding = 0;
    this.timer = null;
    this.running = false;
    this.info = null;
    this.server = {};
    this.resetCounters();
  }

  resetCounters() {
    this.sent = 0;
    this.shown = 0;
    this.skipped = 0;
    this.latencies = [];
    this.unreported = [];
    this.rateSent = new Rate();
    this.rateShown = new Rate();
  }

  setSession(session) {
    if (session === this.session) return;
    const wasRunning = this.running;
    if (wasRunning) this.stop({ stopServer: false });
    this.session = session;
    this.emit("session", { session });
    if (wasRunning) this.start();
  }

  attach(video, output) {
    this.video = video;
    this.output = output;
  }

  emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  async start() {
    if (this.running) return;
    this.running = true;
    this.resetCounters();
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
    } catch (error) {
      this.running = false;
      this.emit("error", { message: `the camera could not be opened: ${error.message ?? error}` });
      return;
    }
    this.video.srcObject = this.stream;
    await this.video.play().catch(() => {});
    this.connect();
  }

  connect() {
    const socket = new WebSocket(socketUrl(this.base, { session: this.session, role: "camera", format: this.format }));
    this.socket = socket;
    drawFrames(socket, this.output, this.format, (frame, now) => this.onShown(frame, now));
    socket.addEventListener("open", () => {
      socket.send(JSON.stringify({ type: "start" }));
      this.scheduleCapture();
      this.reporter = setInterval(() => this.report(), 1000);
    });
    socket.addEventListener("message", (event) => {
      if (typeof event.data !== "string") return;
      const message = JSON.parse(event.data);
      if (message.type === "session") { this.info = message; this.emit("info", message); }
      else if (message.type === "stats") { this.server = message; this.emit("stats", this.numbers()); }
      else if (message.type === "state" && message.error) this.emit("error", { message: message.error });
      else if (message.type === "error") this.emit("error", { message: message.message });
      else if (message.type === "reference") this.emit("reference", message);
    });
    socket.addEventListener("close", (event) => {
      clearInterval(this.reporter);
      if (this.running && this.socket === socket) {
        this.emit("error", { message: `connection closed (${event.code}${event.reason ? ": " + event.reason : ""})` });
        this.stop({ stopServer: false });
      }
    });
  }

  scheduleCapture() {
    const period = 1000 / this.fps;
    let next = performance.now();
    const tick = () => {
      if (!this.running) return;
      this.capture();
      next += period;
      const now = performance.now();
      if (next < now - period) next = now;   // fell behind (tab in background): do not burst
      this.timer = setTimeout(tick, Math.max(0, next - now));
    };
    tick();
  }

  capture() {
    const socket = this.socket;
    const video = this.video;
    if (!socket || socket.readyState !== WebSocket.OPEN || video.readyState < 2 || !video.videoWidth) return;
    if (this.encoding >= 2 || socket.bufferedAmount > MAX_BUFFERED) { this.skipped += 1; return; }
    const scale = Math.min(1, this.maxSide / Math.max(video.videoWidth, video.videoHeight));
    this.canvas ??= document.createElement("canvas");
    this.canvas.width = Math.round(video.videoWidth * scale);
    this.canvas.height = Math.round(video.videoHeight * scale);
    this.canvas.getContext("2d").drawImage(video, 0, 0, this.canvas.width, this.canvas.height);
    const captureMs = performance.now();
    const sequence = this.sequence++;
    this.encoding += 1;
    this.canvas.toBlob(async (blob) => {
      try {
        if (!blob || socket.readyState !== WebSocket.OPEN) return;
        const bytes = await blob.arrayBuffer();
        if (socket.readyState !== WebSocket.OPEN) return;   // Stop may have closed it while the bytes were read
        socket.send(frameMessage(sequence, captureMs, bytes));
        this.sent += 1;
        this.rateSent.add();
      } finally {
        this.encoding -= 1;
      }
    }, "image/jpeg", this.quality);
  }

  onShown(frame, now) {
    const latency = now - frame.captureMs;
    this.shown += 1;
    this.rateShown.add(now);
    this.latencies.push(latency);
    if (this.latencies.length > LATENCY_WINDOW) this.latencies.shift();
    this.unreported.push(Math.round(latency * 10) / 10);
    this.lastSequence = frame.sequence;
    this.emit("frame", { sequence: frame.sequence, latency, serverMs: frame.serverMs });
  }

  report() {
    if (this.socket?.readyState === WebSocket.OPEN && this.unreported.length) {
      this.socket.send(JSON.stringify({ type: "shown", latency_ms: this.unreported.splice(0, 256) }));
    }
    this.emit("stats", this.numbers());
  }

  numbers() {
    const server = this.server ?? {};
    return {
      cameraFps: this.rateSent.value(), shownFps: this.rateShown.value(),
      serverIn: server.fps_in ?? 0, serverOut: server.fps_out ?? 0,
      latencyP50: percentile(this.latencies, 0.5), latencyP95: percentile(this.latencies, 0.95),
      dropped: server.frames_dropped ?? 0, rejected: server.rejected_total ?? 0,
      queue: server.queue ?? 0, queueCapacity: server.queue_capacity ?? 0,
      windowFrames: server.latency_frames ?? null, sent: this.sent, shown: this.shown, skipped: this.skipped,
      running: server.running ?? false,
    };
  }

  sendCalibration(preset, params) {
    if (this.socket?.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify({ type: "calibration", preset, params }));
      return true;
    }
    return false;
  }

  async uploadReference(file) {
    const url = new URL("reference", baseUrl(this.base));
    if (this.session) url.searchParams.set("session", this.session);
    const response = await fetch(url, { method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" } });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(answer.error ?? `upload failed (${response.status})`);
    return answer;
  }

  stop({ stopServer = true } = {}) {
    this.running = false;
    clearTimeout(this.timer);
    clearInterval(this.reporter);
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      if (stopServer && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "stop" }));
      socket.close(1000, "stopped");
    }
    for (const track of this.stream?.getTracks() ?? []) track.stop();
    this.stream = null;
    if (this.video) this.video.srcObject = null;
    this.emit("stopped", {});
  }
}

function element(tag, style = {}, props = {}) {
  const node = document.createElement(tag);
  Object.assign(node.style, style);
  Object.assign(node, props);
  return node;
}

function ms(value) { return value == null ? "–" : `${Math.round(value)} ms`; }

export function formatNumbers(n) {
  return `camera ${n.cameraFps.toFixed(1)} fps → in ${n.serverIn.toFixed(1)} · out ${n.serverOut.toFixed(1)} fps` +
    ` (shown ${n.shownFps.toFixed(1)}) | latency ${ms(n.latencyP50)} (p95 ${ms(n.latencyP95)})` +
    ` | dropped ${n.dropped} · rejected ${n.rejected} · queue ${n.queue}/${n.queueCapacity}`;
}

// The panel: output (large), camera (small), Start/Stop, reference upload, the numbers, a link for OBS.
export function buildPanel(container, client, { viewerUrl = null, compact = false } = {}) {
  const root = element("div", { display: "flex", flexDirection: "column", gap: "6px", width: "100%", height: "100%",
    font: "12px sans-serif", color: "var(--input-text, #ddd)", overflow: "hidden" }, { className: "rain-live" });
  const views = element("div", { position: "relative", flex: "1 1 auto", minHeight: "120px", background: "#111",
    display: "flex", alignItems: "center", justifyContent: "center" });
  const output = element("canvas", { width: "100%", height: "100%", objectFit: "contain" },
    { className: "rain-live-output", width: 512, height: 512 });
  const video = element("video", { position: "absolute", right: "4px", bottom: "4px", width: compact ? "25%" : "20%",
    border: "1px solid #555", background: "#000" }, { className: "rain-live-camera", muted: true, playsInline: true });
  // What the panel is doing, over the output: "not started", "stopped" (the last frame dimmed under it), nothing
  // while frames come. A stopped panel must never look like a frozen stream.
  const state = element("div", { position: "absolute", inset: "0", display: "flex", alignItems: "center",
    justifyContent: "center", background: "rgba(0, 0, 0, 0.55)", color: "#eee", font: "bold 14px sans-serif",
    textAlign: "center", pointerEvents: "none" }, { className: "rain-live-state", textContent: "not started · press Start" });
  views.append(output, video, state);
  const showState = (name, text) => {
    root.dataset.state = name;
    state.textContent = text;
    state.style.display = name === "running" ? "none" : "flex";
  };
  const buttons = element("div", { display: "flex", gap: "6px", alignItems: "center", flexWrap: "wrap" });
  const start = element("button", {}, { textContent: "Start", className: "rain-live-start" });
  const stop = element("button", {}, { textContent: "Stop", className: "rain-live-stop", disabled: true });
  const upload = element("input", { maxWidth: "14em" }, { type: "file", accept: "image/png,image/jpeg,image/webp",
    className: "rain-live-reference", title: "swap the character (the stream keeps running)" });
  const uploadLabel = element("label", {}, { textContent: "Reference: " });
  uploadLabel.append(upload);
  const viewer = element("a", { color: "inherit" }, { textContent: "OBS viewer", target: "_blank",
    className: "rain-live-viewer", title: "add this address to OBS as a Browser Source" });
  buttons.append(start, stop, uploadLabel, viewer);
  const numbers = element("div", { fontFamily: "monospace", whiteSpace: "pre-wrap" }, { className: "rain-live-stats",
    textContent: "not started" });
  const message = element("div", { color: "#f88", minHeight: "1em" }, { className: "rain-live-message" });
  root.append(views, buttons, numbers, message);
  container.append(root);
  showState("idle", "not started · press Start");
  client.attach(video, output);

  const setViewer = () => {
    const url = new URL(viewerUrl ?? new URL("viewer", baseUrl(client.base)), location.href);
    if (client.session) url.searchParams.set("session", client.session);
    viewer.href = url.toString();
    viewer.title = `OBS → Sources → Browser → URL: ${viewer.href}`;
  };
  setViewer();
  start.addEventListener("click", async () => {
    message.textContent = "";
    start.disabled = true;
    stop.disabled = false;
    showState("starting", "starting the camera…");
    await client.start();
    if (client.running) showState("running", "");
    else { start.disabled = false; stop.disabled = true; showState("idle", "not started · press Start"); }
  });
  stop.addEventListener("click", () => client.stop());
  upload.addEventListener("change", async () => {
    const file = upload.files?.[0];
    if (!file) return;
    message.textContent = "fusing the new reference…";
    try {
      const answer = await client.uploadReference(file);
      message.textContent = `reference swapped (${answer.reference_swaps})`;
    } catch (error) {
      message.textContent = String(error.message ?? error);
    }
    upload.value = "";
  });
  client.addEventListener("stats", (event) => {
    numbers.textContent = formatNumbers(event.detail);
    root.dataset.framesShown = String(event.detail.shown);
    root.dataset.running = String(event.detail.running);
  });
  client.addEventListener("frame", () => { root.dataset.framesShown = String(client.shown); });
  client.addEventListener("error", (event) => { message.textContent = event.detail.message; });
  client.addEventListener("stopped", () => {
    start.disabled = false;
    stop.disabled = true;
    showState("stopped", "stopped · press Start to go live again");
    numbers.textContent = `stopped\n${numbers.textContent.replace(/^stopped\n/, "")}`;
  });
  client.addEventListener("session", setViewer);
  return { root, output, video, start, stop, upload, numbers, message, viewer, setViewer };
}

// Sliders of the face transform for pages without their own widgets (the standalone page).
export function buildCalibration(container, calibration, onChange) {
  const box = element("fieldset", { display: "grid", gridTemplateColumns: "auto 1fr 3.5em", gap: "2px 8px",
    font: "12px sans-serif" }, { className: "rain-live-calibration" });
  box.append(element("legend", {}, { textContent: "Face calibration" }));
  const preset = element("select", { gridColumn: "2 / span 2" }, { name: "preset" });
  for (const name of ["calibration", "startup", "none"]) preset.append(element("option", {}, { value: name, textContent: name }));
  preset.value = calibration.preset;
  box.append(element("label", {}, { textContent: "preset" }), preset);
  const sliders = {};
  let pending = false;
  const send = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      const params = Object.fromEntries(Object.entries(sliders).map(([name, input]) => [name, Number(input.value)]));
      onChange(preset.value, params);
    });
  };
  for (const [name, [low, high, step]] of Object.entries(calibration.ranges)) {
    const input = element("input", {}, { type: "range", min: low, max: high, step, value: calibration.params[name], name });
    const value = element("span", {}, { textContent: Number(input.value).toFixed(2) });
    input.addEventListener("input", () => { value.textContent = Number(input.value).toFixed(2); send(); });
    sliders[name] = input;
    box.append(element("label", {}, { textContent: name.replaceAll("_", " ") }), input, value);
  }
  preset.addEventListener("change", send);
  container.append(box);
  return { box, preset, sliders };
}

// The output-only view (OBS browser source): reconnects by itself, shows nothing but the frames.
export function connectViewer(canvas, { base, session = null, format = "jpeg", onShown = null } = {}) {
  let socket = null;
  let closed = false;
  const open = () => {
    socket = new WebSocket(socketUrl(base, { session, role: "viewer", format }));
    drawFrames(socket, canvas, format, onShown);
    socket.addEventListener("close", () => { if (!closed) setTimeout(open, 1000); });
  };
  open();
  return { close() { closed = true; socket?.close(1000, "closed"); } };
}
