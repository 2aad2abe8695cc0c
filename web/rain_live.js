// ComfyUI-RAIN: the live panel on the "RAIN Live" node.
//
// Running the graph starts a live session on the server (one per node); the node's "executed" message names it.
// The panel itself — webcam capture, websocket, drawing, the numbers — is the engine's page module, served by the
// pack at /rain/live/static/live_panel.js, so ComfyUI and `python -m rain live` show the same panel. Moving a
// calibration slider (or the preset) of this node sends the new transform at once; no re-run needed.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_TYPE = "RAIN_Live";
const BASE = "/rain/live/";
const PANEL_WIDGET = "live_panel";
const CALIBRATION = new Set([
  "face_length_ratio", "eye_height_ratio", "eye_width_ratio", "mouth_height_ratio", "mouth_width_ratio",
  "jaw_width_ratio", "eye_horizontal_correction", "eye_distance_correction", "eye_vertical_correction",
  "mouth_horizontal_correction", "mouth_vertical_correction", "nose_horizontal_correction", "nose_vertical_correction",
]);

let panelModule = null;
function loadPanel() {
  panelModule ??= import(api.apiURL(`${BASE}static/live_panel.js`));
  return panelModule;
}

function calibrationValues(node) {
  const params = {};
  let preset = "calibration";
  for (const w of node.widgets ?? []) {
    if (w.name === "preset") preset = w.value;
    else if (CALIBRATION.has(w.name)) params[w.name] = w.value;
  }
  return { preset, params };
}

async function attachPanel(node) {
  const container = document.createElement("div");
  Object.assign(container.style, { width: "100%", height: "100%", overflow: "hidden" });
  // Not a value: stays out of the saved widgets_values (serialize) and of the queued prompt (options.serialize).
  const widget = node.addDOMWidget(PANEL_WIDGET, "rain_live", container, { hideOnZoom: false, serialize: false });
  widget.serialize = false;
  widget.computeLayoutSize = () => ({ minHeight: 360, minWidth: 320 });
  const size = node.computeSize();
  node.setSize([Math.max(node.size[0], 420), Math.max(node.size[1], size[1])]);

  let module;
  try {
    module = await loadPanel();
  } catch (error) {
    container.textContent = "the live panel could not be loaded (is the RAIN pack's server side running?)";
    console.warn("[ComfyUI-RAIN] live panel", error);
    return;
  }
  const client = new module.LiveClient({ base: api.apiURL(BASE) });
  const panel = module.buildPanel(container, client, { compact: true });
  panel.start.disabled = true;
  panel.numbers.textContent = "run the graph (Queue) to start this node's live session, then press Start";

  node.rainLive = {
    client,
    panel,
    setSession(info) {
      if (!info?.session) return;
      client.setSession(info.session);
      panel.start.disabled = client.running;
      panel.numbers.textContent = client.running ? panel.numbers.textContent
        : `session ${info.session}: ${info.width}×${info.height}, ${info.task}; press Start to open the camera`;
    },
  };

  // After a page reload the session may still be running on the server.
  fetch(api.apiURL(`${BASE}sessions`)).then((r) => r.json()).then(({ sessions }) => {
    const own = sessions?.find((s) => s.session === `node-${node.id}`);
    if (own && !client.session) node.rainLive.setSession(own);
  }).catch(() => {});

  for (const w of node.widgets ?? []) {
    if (w.name !== "preset" && !CALIBRATION.has(w.name)) continue;
    const original = w.callback;
    w.callback = function (...args) {
      const result = original?.apply(this, args);
      const { preset, params } = calibrationValues(node);
      client.sendCalibration(preset, params);
      return result;
    };
  }
}

app.registerExtension({
  name: "ComfyUI-RAIN.Live",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function (...args) {
      const result = onNodeCreated?.apply(this, args);
      attachPanel(this);
      return result;
    };

    // The node's run answers {rain_live: [{session, viewer, width, height, ...}]}.
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message, ...rest) {
      const result = onExecuted?.apply(this, [message, ...rest]);
      this.rainLive?.setSession(message?.rain_live?.[0]);
      return result;
    };

    // Removing the node closes the camera and stops its session.
    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function (...args) {
      this.rainLive?.client.stop();
      return onRemoved?.apply(this, args);
    };
  },
});
