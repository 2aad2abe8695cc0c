// ComfyUI-RAIN: RAIN Render Video shows the video it wrote, on the node (as VideoHelperSuite's Video Combine does),
// instead of a file name: a looping, muted <video> player served from ComfyUI's /view route.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_TYPE = "RAIN_RenderVideo";
const PREVIEW_KEY = "rain_video";   // the node's "ui" key: [{filename, subfolder, type, format}]

function showVideo(node, file) {
  const query = new URLSearchParams({ filename: file.filename, subfolder: file.subfolder ?? "",
                                      type: file.type ?? "output", timestamp: String(Date.now()) });
  if (!node.rainVideo) {
    const video = document.createElement("video");
    Object.assign(video, { controls: true, loop: true, muted: true, autoplay: true, playsInline: true });
    Object.assign(video.style, { width: "100%", maxHeight: "100%", objectFit: "contain" });
    video.addEventListener("loadedmetadata", () => {
      node.setSize([node.size[0], node.computeSize([node.size[0], 0])[1]]);
      app.graph.setDirtyCanvas(true, true);
    });
    const widget = node.addDOMWidget(PREVIEW_KEY, "video", video, { serialize: false, hideOnZoom: false });
    widget.serialize = false;
    widget.computeSize = (width) => [width, video.videoWidth ? width * video.videoHeight / video.videoWidth : 0];
    node.rainVideo = video;
  }
  node.rainVideo.src = api.apiURL(`/view?${query}`);
}

app.registerExtension({
  name: "ComfyUI-RAIN.RenderVideoPreview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      const file = message?.[PREVIEW_KEY]?.[0];
      if (file) showVideo(this, file);
      return result;
    };
  },
});
