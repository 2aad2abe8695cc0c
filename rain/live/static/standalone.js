// The standalone page (python -m rain live): the panel plus the face-calibration sliders.
import { LiveClient, buildCalibration, buildPanel } from "./live_panel.js";

const base = new URL(".", location.href).toString();
const query = new URLSearchParams(location.search);
const line = document.getElementById("session-line");

async function boot() {
  const response = await fetch(new URL("sessions", base));
  const { sessions } = await response.json();
  const info = sessions.find((s) => s.session === query.get("session")) ?? sessions[0];
  if (!info) { line.textContent = "no live session on this server"; return; }
  line.textContent = `session “${info.session}”: ${info.task}, ${info.width}×${info.height}, ` +
    `${info.num_groups} groups × ${info.frames_per_group} frames (a frame leaves ${info.latency_frames} frames ` +
    `after its group fills), backend ${info.backend}`;
  const client = new LiveClient({ base, session: info.session, format: info.output_format });
  window.rainLive = client;
  const panel = buildPanel(document.getElementById("panel"), client);
  document.getElementById("viewer-url").textContent = panel.viewer.href;
  if (info.calibration) {
    buildCalibration(document.getElementById("calibration"), info.calibration, (preset, params) => {
      client.sendCalibration(preset, params);
    });
  }
}

boot().catch((error) => { line.textContent = `could not reach the server: ${error.message ?? error}`; });
