// Drives the live panel in headless Chromium against a running `python -m rain live` (the Python test starts it):
// Start opens the fake camera, frames go to the server and come back animated; a calibration slider moves; the
// OBS viewer page shows the same frames; Stop. Prints one JSON line with what it saw; screenshots go to OUT_DIR.
//
//   node live_panel.cjs PANEL_URL CHROMIUM USER_DATA_DIR OUT_DIR
// playwright-core is found through NODE_PATH (CommonJS resolution).
const fs = require("fs");
const path = require("path");
const { chromium } = require("playwright-core");

const [panelUrl, executablePath, userDataDir, outDir] = process.argv.slice(2);
const ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"];
const WAIT = { timeout: 150000, polling: 100 };

async function main() {
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath, headless: true, args: ARGS, viewport: { width: 1100, height: 720 },
    permissions: ["camera"],
  });
  const problems = [];
  try {
    const page = context.pages()[0] ?? await context.newPage();
    page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
    page.on("console", (message) => { if (message.type() === "error") problems.push(`console: ${message.text()}`); });
    await page.goto(panelUrl);
    await page.waitForSelector(".rain-live-start");
    await page.click(".rain-live-start");
    await page.waitForFunction(() => Number(document.querySelector(".rain-live")?.dataset.framesShown ?? 0) >= 6,
      null, WAIT);

    // A calibration slider: the server gets the new transform at once.
    await page.evaluate(() => {
      const slider = document.querySelector('input[name="eye_height_ratio"]');
      slider.value = "1.0";
      slider.dispatchEvent(new Event("input"));
    });
    await page.waitForFunction(() => (window.rainLive?.server?.calibration_changes ?? 0) >= 1, null, WAIT);
    const shownBefore = await page.evaluate(() => window.rainLive.shown);
    await page.waitForFunction((n) => window.rainLive.shown >= n + 4, shownBefore, WAIT);
    await page.waitForFunction(() => (window.rainLive?.latencies?.length ?? 0) >= 4 &&
      /latency \d+ ms/.test(document.querySelector(".rain-live-stats").textContent), null, WAIT);

    // The OBS page, in another tab, on a solid background.
    const viewerUrl = (await page.getAttribute(".rain-live-viewer", "href")) + "&background=00ff00";
    const viewer = await context.newPage();
    viewer.on("pageerror", (error) => problems.push(`viewer error: ${error.message}`));
    await viewer.goto(viewerUrl);
    await viewer.waitForFunction(() => Number(document.body.dataset.framesShown ?? 0) >= 3, null, WAIT);

    const output = await page.evaluate(() => {
      const canvas = document.querySelector(".rain-live-output");
      const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
      // A drawn frame is opaque everywhere; a canvas nothing was drawn on is transparent black.
      let opaque = 0;
      const colours = new Set();
      for (let i = 0; i < data.length; i += 4) {
        opaque += data[i + 3] === 255;
        colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
      }
      return { width: canvas.width, height: canvas.height, opaque: opaque / (data.length / 4), colours: colours.size };
    });
    const numbers = await page.textContent(".rain-live-stats");
    const client = await page.evaluate(() => ({ sent: window.rainLive.sent, shown: window.rainLive.shown,
      server: window.rainLive.server }));
    await page.screenshot({ path: path.join(outDir, "live_panel.png") });
    await viewer.screenshot({ path: path.join(outDir, "live_viewer.png") });
    const background = await viewer.evaluate(() => getComputedStyle(document.body).backgroundColor);

    const panelState = () => page.evaluate(() => {
      const overlay = document.querySelector(".rain-live-state");
      return { state: document.querySelector(".rain-live").dataset.state, text: overlay.textContent,
               shown: getComputedStyle(overlay).display !== "none" };
    });
    const running = await panelState();
    await page.click(".rain-live-stop");
    await page.waitForFunction(() => document.querySelector(".rain-live-stop").disabled, null, WAIT);
    const cameraClosed = await page.evaluate(() => window.rainLive.stream === null);
    const stopped = await panelState();
    await page.screenshot({ path: path.join(outDir, "live_panel_stopped.png") });
    console.log(JSON.stringify({ output, numbers, client, background, cameraClosed, viewerUrl, problems, running,
                                 stopped }));
  } finally {
    await context.close();
  }
}

main().catch((error) => { console.error(error.stack ?? String(error)); process.exit(1); });
