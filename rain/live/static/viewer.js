// The output-only page for OBS (Browser Source): the session's frames, full size, on a transparent page or a
// solid colour (?background=00ff00 or a colour name); ?session=… picks the session, ?format=png|webp|jpeg.
import { connectViewer } from "./live_panel.js";

const query = new URLSearchParams(location.search);
const background = query.get("background") ?? "";
if (/^[0-9a-f]{6}$/i.test(background)) document.body.style.background = `#${background}`;
else if (/^[a-z]{3,20}$/i.test(background)) document.body.style.background = background;

const canvas = document.getElementById("frames");
let shown = 0;
connectViewer(canvas, {
  base: new URL(".", location.href).toString(),
  session: query.get("session"),
  format: ["jpeg", "png", "webp"].includes(query.get("format")) ? query.get("format") : "jpeg",
  onShown: () => { shown += 1; document.body.dataset.framesShown = String(shown); },
});
