"""``python -m rain live``: the live page without ComfyUI.

Loads the models, fuses the reference, starts one live session and serves the panel (webcam in the browser) and
the OBS viewer on 127.0.0.1. ``--camera N`` reads a local camera with OpenCV instead of the browser;
``--virtual-camera`` also sends the frames to a virtual webcam (pyvirtualcam).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

HELP = "serve the live page on 127.0.0.1: a webcam (browser or --camera) drives the character"
log = logging.getLogger("rain.live")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..sizes import parse_size  # one size syntax for every command
    from .pose_stage import PRESETS, TASKS
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--reference", required=True, type=Path, help="the character image")
    parser.add_argument("--task", choices=TASKS, default="face",
                        help="face: DWPose face landmarks → human→anime transform → RAIN's face dots (the released "
                             "model); body: whole-body skeleton; pose: the camera already shows pose images")
    parser.add_argument("--size", type=parse_size, default=None,
                        help="frame size N or WxH, multiples of 8 (default: the size the model set declares, "
                             "else 512)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: only this machine can connect)")
    parser.add_argument("--port", type=int, default=8765, help="port (0: any free port; the address is printed)")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="another page origin allowed to connect (e.g. http://127.0.0.1:9000); repeatable")
    parser.add_argument("--camera", default=None, metavar="N|VIDEO",
                        help="read local camera N (0, 1, …) or a video file with OpenCV, instead of a browser (default: none, the browser sends frames)")
    parser.add_argument("--loop", action="store_true", help="with --camera VIDEO: start the video again at its end")
    parser.add_argument("--virtual-camera", action="store_true",
                        help="also send the frames to a virtual webcam (needs pyvirtualcam)")
    parser.add_argument("--virtual-camera-fps", type=float, default=30.0,
                        help="frame rate announced to the virtual webcam")
    parser.add_argument("--preset", choices=PRESETS, default="calibration",
                        help="face transform: calibration (the 13 sliders on the page), startup, none")
    parser.add_argument("--crop", type=float, default=0.9,
                        help="centre-square fraction of the camera frame the detector sees (0: whole frame)")
    parser.add_argument("--missing", choices=("hold", "blank"), default="hold")
    parser.add_argument("--smoothing", action="store_true", help="One-Euro filter on the landmarks")
    parser.add_argument("--frames-per-group", type=int, default=4,
                        help="frames per noise group (2 halves the window's latency; see README)")
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--steps-per-group", type=int, default=1)
    parser.add_argument("--guidance", type=float, default=2.5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--temporal-strength", type=float, default=1.0)
    parser.add_argument("--decoder", choices=("taesdv", "vae"), default="taesdv")
    parser.add_argument("--backend", choices=("eager", "compiled", "onnx", "tensorrt"), default="eager",
                        help="how steady-state calls run (see animate --backend)")
    parser.add_argument("--device", default=None, help="cuda, cpu, cuda:1 … (default: cuda when available)")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=None)
    parser.add_argument("--vae", type=Path, default=None)
    parser.add_argument("--image-encoder", type=Path, default=None)
    parser.add_argument("--output-format", choices=("jpeg", "webp", "png"), default="jpeg",
                        help="image format of the frames sent back to the page and the viewer")
    parser.add_argument("--quality", type=int, default=85, help="JPEG/WebP quality of the frames sent back")
    parser.add_argument("--max-frame-bytes", type=int, default=4 * 1024 * 1024,
                        help="camera frames larger than this are dropped and counted")
    parser.add_argument("--max-rate", type=float, default=100.0, help="messages per second per connection")
    parser.add_argument("--max-frames", type=int, default=0, metavar="N",
                        help="stop after N animated frames and print the rate (0: run until Ctrl+C)")


def build_session(args):
    """Load the models, fuse the reference and make the session (not started)."""
    import torch
    from ..io.images import load_reference
    from ..pipeline import RainPipeline, check_size
    from ..sampling.stream import StreamSettings
    from .pose_stage import LiveTask
    from .session import LiveSession, LiveSettings

    # Everything that needs no model first, with the reader animate uses (EXIF, 16-bit, empty, too small).
    reference_image = load_reference(args.reference)
    declared = native_size(args.models_dir, args.task)
    height, width = args.size or declared
    check_size(height, width)
    settings = LiveSettings(StreamSettings(frames_per_group=args.frames_per_group, num_groups=args.groups,
                                           steps_per_group=args.steps_per_group, guidance_scale=args.guidance,
                                           seed=args.seed, decoder=args.decoder,
                                           temporal_strength=args.temporal_strength),
                            backend=args.backend, output_format=args.output_format, output_quality=args.quality)
    detector = None
    if args.task != "pose":  # check the DWPose files before loading gigabytes of models
        from ..pose.dwpose import DWPoseDetector
        detector = DWPoseDetector.from_models_dir(args.models_dir)
    task = LiveTask(kind=args.task, detector=detector, preset=args.preset, crop=args.crop or None,
                    missing=args.missing, smoothing=args.smoothing)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = args.dtype or ("fp32" if device == "cpu" else "fp16")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    pipeline = RainPipeline.from_models_dir(args.models_dir, device=device, dtype=dtype, vae_path=args.vae,
                                            image_encoder_path=args.image_encoder, decoders=(args.decoder,))
    reference = pipeline.fuse_reference(reference_image, height, width)
    return LiveSession(pipeline, reference, task, settings, session_id="live")


def native_size(models_dir, task: str | None = None) -> tuple[int, int]:
    """(height, width) the model set declares (a trained set: its data's size; make-tiny-models' sets: 128²), else
    512×512 as trained; warns when the set was trained for other conditions than ``task``."""
    from .. import weights
    from ..model_set import read_declaration
    try:
        declaration = read_declaration(weights.find_weight(models_dir, "motion_unet"))
    except (weights.WeightsError, FileNotFoundError):
        declaration = None   # the model load that follows names what is missing
    if declaration is None:
        return (512, 512)
    mismatch = declaration.check_task(task, "--task")
    if mismatch:
        log.warning("%s", mismatch)
    return declaration.native_size or (512, 512)


def build_app(routes):
    """An aiohttp application serving ``routes`` (a ``LiveRoutes``), with ``/`` leading to the panel."""
    from aiohttp import web

    async def home(request):
        raise web.HTTPFound(f"{routes.prefix}/")

    app = web.Application(client_max_size=routes.limits.max_bytes + 64 * 1024)
    for method, path, handler in routes.route_table():
        app.router.add_route(method.upper(), path, handler)
    app.router.add_get("/", home)
    return app


class PortUnavailable(OSError):
    """The live server's port cannot be used; the message suggests --port."""


async def serve(app, host: str, port: int, ready, stop_event) -> None:
    """Serve ``app`` until ``stop_event`` is set; ``ready(port)`` is called once listening."""
    from aiohttp import web
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as error:   # taken by another program, or reserved (Windows/Hyper-V excluded ranges)
            raise PortUnavailable(
                f"cannot listen on {host}:{port} ({type(error).__name__}: {error}): the port is taken by another "
                f"program or reserved by the system. Choose another with --port N, or --port 0 for any free port "
                f"(the address is printed).") from error
        addresses = runner.addresses
        ready(addresses[0][1] if addresses else port)
        await stop_event.wait()
    finally:
        await runner.cleanup()


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def run(args) -> int:
    import asyncio
    import signal
    import time

    from .devices import LocalCamera, VirtualCamera
    from .protocol import FrameLimits
    from .server import LOOPBACK_HOSTS, LiveRegistry, LiveRoutes, OriginPolicy

    session = build_session(args)
    info = session.info()
    print(f"RAIN live: {info['width']}×{info['height']} frames, task {info['task']}", flush=True)
    started = time.monotonic()
    registry = LiveRegistry()
    registry.add(session)
    if args.host in LOOPBACK_HOSTS:
        policy = OriginPolicy.loopback(extra_origins=args.allow_origin)
    else:
        print(f"warning: listening on {args.host}: other machines can reach this page (browsers open a camera "
              f"only on https or localhost pages)", file=sys.stderr)
        policy = OriginPolicy(None, extra_origins=args.allow_origin)
    limits = FrameLimits(max_bytes=args.max_frame_bytes, max_rate=args.max_rate, burst=max(1, int(args.max_rate)))
    routes = LiveRoutes(registry, limits=limits, policy=policy)
    session.start()
    camera = virtual = None
    try:
        if args.camera is not None:
            source = int(args.camera) if str(args.camera).isdigit() else str(args.camera)
            camera = LocalCamera(source, session, loop=args.loop).start()
        if args.virtual_camera:
            try:
                virtual = VirtualCamera(session, fps=args.virtual_camera_fps).start()
                print(f"virtual camera: {virtual.device}", flush=True)
            except RuntimeError as error:
                print(f"no virtual camera: {error}", file=sys.stderr, flush=True)

        def ready(port: int) -> None:
            base = f"http://{_url_host(args.host)}:{port}{routes.prefix}"
            print(f"RAIN live: panel {base}/  ·  OBS browser source {base}/viewer", flush=True)

        async def main() -> None:
            stop_event = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(signum, stop_event.set)
                except (NotImplementedError, RuntimeError):  # Windows: Ctrl-C arrives as KeyboardInterrupt
                    pass
            watcher = None
            if args.max_frames:
                async def stop_after_max_frames():
                    while session.stats.snapshot()["frames_emitted"] < args.max_frames:
                        await asyncio.sleep(0.02)
                    stop_event.set()
                watcher = asyncio.create_task(stop_after_max_frames())
            try:
                await serve(build_app(routes), args.host, args.port, ready, stop_event)
            finally:
                if watcher is not None:
                    watcher.cancel()

        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except PortUnavailable as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    finally:
        if camera is not None:
            camera.stop()
        if virtual is not None:
            virtual.stop()
        registry.close_all()
    stats = session.stats.snapshot()
    seconds = time.monotonic() - started
    rate = stats["frames_emitted"] / seconds if seconds > 0 else 0.0
    print(f"stopped: {stats['frames_received']} frames in, {stats['frames_emitted']} out in {seconds:.1f} s "
          f"({rate:.2f} frames/s from start, warm-up included), {stats['frames_dropped']} dropped, "
          f"{stats['rejected_total']} rejected", flush=True)
    return 0
