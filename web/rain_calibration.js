// ComfyUI-RAIN: live calibration preview on the "RAIN Face Landmark Transform" node.
//
// Moving any widget of the node asks the server for a preview (POST /rain/calibration/preview). The server runs
// the engine's own landmark transform and dot renderer (one source of truth, nothing re-implemented here) and
// answers with a PNG: the human landmarks in grey, RAIN's face dots in colour, over the node's last input frame
// once the graph has run, or over a synthetic sample face before that.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_TYPE = "RAIN_LandmarkTransform";
const ROUTE = "/rain/calibration/preview";
const PREVIEW_WIDGET = "calibration_preview";
const PREVIEW_SIZE = 320;

function widgetValues(node) {
  const params = {};
  let preset = "calibration";
  for (const w of node.widgets ?? []) {
    if (w.name === PREVIEW_WIDGET || w.serialize === false) continue;
    if (w.name === "preset") preset = w.value;
    else if (typeof w.value === "number") params[w.name] = w.value;
  }
  return { preset, params };
}

function attachPreview(node) {
  const container = document.createElement("div");
  container.className = "rain-calibration-preview";
  Object.assign(container.style, {
    display: "flex", flexDirection: "column", alignItems: "center", gap: "2px",
    width: "100%", height: "100%", overflow: "hidden",
  });
  const image = document.createElement("img");
  image.alt = "RAIN calibration preview";
  Object.assign(image.style, { maxWidth: "100%", maxHeight: "calc(100% - 16px)", objectFit: "contain" });
  const caption = document.createElement("div");
  Object.assign(caption.style, { font: "11px sans-serif", opacity: "0.7", color: "var(--input-text, #ddd)" });
  caption.textContent = "calibration preview";
  container.append(image, caption);

  // Not a value: stays out of the saved widgets_values (serialize) and of the queued prompt (options.serialize).
  const widget = node.addDOMWidget(PREVIEW_WIDGET, "rain_calibration", container, { hideOnZoom: false, serialize: false });
  widget.serialize = false;
  widget.computeLayoutSize = () => ({ minHeight: 160, minWidth: 160 });

  let inFlight = false;
  let again = false;
  let objectUrl = null;

  async function refresh() {
    if (inFlight) { again = true; return; }
    inFlight = true;
    try {
      const { preset, params } = widgetValues(node);
      const response = await api.fetchApi(ROUTE, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ node_id: String(node.id), preset, params }),
      });
      if (!response.ok) {
        caption.textContent = `preview unavailable (${response.status})`;
        return;
      }
      const blob = await response.blob();
      if (objectUrl) URL.revokeObjectURL(objectUrl);
      objectUrl = URL.createObjectURL(blob);
      image.src = objectUrl;
      const over = response.headers.get("X-RAIN-Source") === "frame" ? "your frame" : "a sample face";
      caption.textContent = `${preset} — over ${over}`;
      node.rainPreviewCount = (node.rainPreviewCount ?? 0) + 1;
    } catch (error) {
      caption.textContent = "preview unavailable";
      console.warn("[ComfyUI-RAIN] calibration preview failed", error);
    } finally {
      inFlight = false;
      if (again) { again = false; refresh(); }
    }
  }
  node.rainRefreshPreview = refresh;

  for (const w of node.widgets ?? []) {
    if (w === widget) continue;
    const original = w.callback;
    w.callback = function (...args) {
      const result = original?.apply(this, args);
      refresh();
      return result;
    };
  }
  const size = node.computeSize();
  node.setSize([Math.max(node.size[0], size[0]), Math.max(node.size[1], size[1] + PREVIEW_SIZE * 0.25)]);
  requestAnimationFrame(refresh);
}

app.registerExtension({
  name: "ComfyUI-RAIN.CalibrationPreview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function (...args) {
      const result = onNodeCreated?.apply(this, args);
      attachPreview(this);
      return result;
    };

    // Saved values arrive after creation: draw them.
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (...args) {
      const result = onConfigure?.apply(this, args);
      requestAnimationFrame(() => this.rainRefreshPreview?.());
      return result;
    };

    // After a run the server holds this node's input frame: draw over it.
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (...args) {
      const result = onExecuted?.apply(this, args);
      this.rainRefreshPreview?.();
      return result;
    };
  },
});
