"""Bad images and videos: one message naming the file, what is wrong and what to do; checked before any model
is loaded; inputs never modified; no partial file under the final name; an earlier output never replaced by a
failed run; the next valid job works."""

import shutil
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from rain.render.sources import DrivingSource
from rain.cli import main
from rain.io import VideoIOError, probe, scan_timing
from rain.io.images import load_image, to_rgb
from rain.pipeline import RainPipeline, to_pil

FAST = ["--frames-per-group", "1", "--groups", "2"]  # a frame comes out after two pushed


def write_video(path, frames=8, size=64, rate=16, times_ms=None, options=None):
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        if times_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(frames):
            frame = np.zeros((size, size, 3), np.uint8)
            frame[20:40, (4 * i) % 40:(4 * i) % 40 + 16] = 255
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if times_ms is not None:
                video_frame.pts, video_frame.time_base = times_ms[i], Fraction(1, 1000)
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def decoded_frames(path):
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.fixture
def inputs(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 80, 3), np.uint8)).save(tmp_path / "ref.png")
    write_video(tmp_path / "poses.mp4")
    return tmp_path


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")
    monkeypatch.setattr(RainPipeline, "from_models_dir", refuse)


def animate(models, folder, *extra, reference="ref.png", driving="poses.mp4", output="out.mp4"):
    return main(["animate", "--models-dir", str(models), "--reference", str(folder / reference),
                 "--driving", str(folder / driving), "-o", str(folder / output), *extra])


# -- reference images -----------------------------------------------------------------------------------------
def _truncated_png(path):
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b""), "is empty (0 bytes): the file was not saved or copied completely; use another "
                                   "copy of the image."),
    (lambda p: p.write_bytes(b"<html>not found</html>"), "is not an image Pillow can read (PNG, JPEG, WebP, BMP, "
                                                         "TIFF, GIF…); convert it to PNG or JPEG."),
    (_truncated_png, "is damaged or incomplete"),
    (lambda p: Image.new("RGB", (1, 1)).save(p), "is 1×1 pixels: too small for a reference (it is stretched to "
                                                 "the frame size, 512×512 as trained). Use an image at least 32 "
                                                 "pixels on each side"),
    (lambda p: None, "Image not found"),
], ids=["zero-bytes", "not-an-image", "truncated", "one-pixel", "missing"])
def test_bad_reference_is_refused_before_any_model_loads(inputs, no_model_load, capsys, make, message):
    bad = inputs / "bad.png"
    make(bad)
    before = bad.read_bytes() if bad.exists() else None
    assert animate(inputs / "models", inputs, reference="bad.png") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: ") and str(bad) in err and message in err
    assert "Traceback" not in err
    assert (bad.read_bytes() if bad.exists() else None) == before   # inputs are never modified
    assert not (inputs / "out.mp4").exists() and not (inputs / "out.partial.mp4").exists()


def test_sixteen_bit_grey_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    rgb = np.asarray(load_image(tmp_path / "grey16.png")).astype(float)
    np.testing.assert_allclose(rgb[..., 0], ramp / 257.0, atol=0.51)          # 8 bits of the same ramp
    assert abs(rgb.mean() - 127.5) < 1                                         # not almost white


@pytest.mark.parametrize("mode, values, expected", [
    ("F", np.linspace(0, 1, 64 * 64, dtype=np.float32), 127.5),                # floats in [0, 1]
    ("F", np.linspace(-5, 15, 64 * 64, dtype=np.float32), 127.5),              # no natural range: stretched
    ("I", np.linspace(0, 2 ** 31 - 1, 64 * 64).astype(np.int32), 127.5),        # 32-bit integers
])
def test_deep_images_come_out_with_their_range(mode, values, expected):
    image = Image.fromarray(values.reshape(64, 64), mode)
    rgb = np.asarray(to_rgb(image)).astype(float)
    assert rgb.shape == (64, 64, 3) and abs(rgb.mean() - expected) < 1.5
    assert rgb.min() <= 1 and rgb.max() >= 254


def test_exif_orientation_is_applied_on_the_cli_and_api_paths(tmp_path):
    photo = Image.new("RGB", (80, 40), (255, 0, 0))
    photo.paste((0, 0, 255), (0, 0, 40, 40))                   # left half blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6                                            # "rotate 90° clockwise to display"
    photo.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    loaded = load_image(tmp_path / "phone.jpg")
    assert loaded.size == (40, 80)                              # upright: portrait
    assert np.asarray(loaded)[5, 20, 2] > 200                   # the blue half is now on top
    api = to_pil(Image.open(tmp_path / "phone.jpg"))            # what pipe.fuse_reference(Image.open(...)) sees
    assert api.size == (40, 80)


# -- outputs --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("output, message", [
    ("out.avi", "'.avi' is not an output type RAIN writes; use .mp4 .m4v .mov .mkv .webm .gif"),
    ("ref.png/out.mp4", "ref.png is a file, not a folder; choose another output path."),
    ("poses.mp4", "is one of the inputs; inputs are never overwritten"),
])
def test_bad_output_is_refused_before_any_model_loads(inputs, no_model_load, capsys, output, message):
    driving = (inputs / "poses.mp4").read_bytes()
    assert animate(inputs / "models", inputs, output=output) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert (inputs / "poses.mp4").read_bytes() == driving


def test_missing_dwpose_files_are_reported_before_any_model_loads(inputs, no_model_load, capsys):
    models = inputs / "models"
    assert animate(models, inputs, "--task", "face") == 2
    err = capsys.readouterr().err
    assert f"Put them in {models / 'dwpose'}" in err
    assert f"python -m rain download --dwpose --models-dir {models.absolute()}" in err


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "Video or image source not found"),
    (lambda p: p.write_bytes(b""), "is empty (0 bytes): the file was not saved or copied completely"),
    (lambda p: p.write_bytes(b"\x00garbage" * 100), "is not a video file PyAV/FFmpeg can read (Invalid data found "
                                                    "when processing input); convert it to MP4 (H.264), or use "
                                                    "another copy."),
], ids=["missing", "zero-bytes", "garbage"])
def test_bad_driving_video_is_refused_before_any_model_loads(inputs, no_model_load, capsys, make, message):
    make(inputs / "bad.mp4")
    assert animate(inputs / "models", inputs, driving="bad.mp4") == 2
    err = capsys.readouterr().err
    assert str(inputs / "bad.mp4") in err and message in err


def failing_driving_frames(monkeypatch, after, error):
    """The driving reader yields ``after`` frames, then fails as a video that becomes unreadable does."""
    real = DrivingSource.__iter__

    def reader(source):
        for index, frame in enumerate(real(source)):
            if index == after:
                raise error
            yield frame
    monkeypatch.setattr(DrivingSource, "__iter__", reader)


def test_failed_render_keeps_the_earlier_output_and_a_playable_partial(inputs, tiny_models_dir, monkeypatch,
                                                                       capsys):
    earlier = inputs / "out.mp4"
    write_video(earlier, frames=3)
    earlier_bytes = earlier.read_bytes()
    failing_driving_frames(monkeypatch, 6, VideoIOError(f"{inputs / 'poses.mp4'}: the video stream became "
                                                        f"unreadable after 6 frames (Invalid data)."))
    assert animate(tiny_models_dir, inputs, *FAST) == 2
    err = capsys.readouterr().err
    partial = inputs / "out.partial.mp4"
    assert "became unreadable after 6 frames" in err
    assert f"The 5 frames rendered before that are in {partial} (it plays); the earlier {earlier} is untouched" in err
    assert earlier.read_bytes() == earlier_bytes
    assert decoded_frames(partial) == 5

    monkeypatch.undo()  # the next valid job works, replaces the output and leaves no partial file
    assert animate(tiny_models_dir, inputs, *FAST) == 0
    assert decoded_frames(earlier) == 8 and not partial.exists()


def test_interrupted_render_says_where_its_frames_are(inputs, tiny_models_dir, monkeypatch, capsys):
    failing_driving_frames(monkeypatch, 4, KeyboardInterrupt())
    assert animate(tiny_models_dir, inputs, *FAST) == 130
    err = capsys.readouterr().err
    partial = inputs / "out.partial.mp4"
    assert f"interrupted: The 3 frames rendered before that are in {partial} (it plays); {inputs / 'out.mp4'} was " \
           f"not written" in err
    assert decoded_frames(partial) == 3 and not (inputs / "out.mp4").exists()


def test_png_folder_output_is_replaced_only_on_success(inputs, tiny_models_dir, monkeypatch):
    folder = inputs / "frames"
    folder.mkdir()
    (folder / "earlier.txt").write_text("an earlier render")
    failing_driving_frames(monkeypatch, 4, VideoIOError("unreadable"))
    assert animate(tiny_models_dir, inputs, *FAST, output="frames") == 2
    assert (folder / "earlier.txt").read_text() == "an earlier render"
    assert len(list((inputs / "frames.partial").glob("*.png"))) == 3
    monkeypatch.undo()
    assert animate(tiny_models_dir, inputs, *FAST, output="frames") == 0
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:06d}.png" for i in range(8)]
    assert not (inputs / "frames.partial").exists()


# -- videos that do not hold what they say --------------------------------------------------------------------
def test_video_cut_short_is_reported(inputs, tiny_models_dir, capsys):
    write_video(inputs / "full.mp4", frames=60, options={"movflags": "faststart"})  # header first, then data
    data = (inputs / "full.mp4").read_bytes()
    (inputs / "cut.mp4").write_bytes(data[:len(data) // 2])                           # a download cut off
    assert animate(tiny_models_dir, inputs, *FAST, driving="cut.mp4") == 0
    out = capsys.readouterr().out
    held = decoded_frames(inputs / "out.mp4")
    assert 10 < held < 60
    assert f"warning: {inputs / 'cut.mp4'} holds {held} frames" in out
    assert "but its header announces 60 frames" in out and "it was probably cut off" in out


def test_reader_ending_early_is_reported_with_the_numbers(inputs, tiny_models_dir, monkeypatch, capsys):
    real = DrivingSource.__iter__
    monkeypatch.setattr(DrivingSource, "__iter__", lambda source: (f for i, f in enumerate(real(source)) if i < 5))
    assert animate(tiny_models_dir, inputs, *FAST) == 0
    out = capsys.readouterr().out
    assert (f"warning: {inputs / 'poses.mp4'} ended after 5 of the 8 frames expected (the file is cut short or "
            f"damaged); the output has 5 frames") in out


def test_variable_frame_rate_video_is_resampled_to_its_average_rate(inputs, tiny_models_dir, capsys):
    gaps = [20, 66, 33, 20, 66, 33, 20, 66, 33, 20, 66]
    times = np.concatenate([[0], np.cumsum(gaps)]).tolist()
    write_video(inputs / "vfr.mp4", frames=len(times), times_ms=times)
    assert animate(tiny_models_dir, inputs, *FAST, driving="vfr.mp4") == 0
    out = capsys.readouterr().out
    assert f"warning: {inputs / 'vfr.mp4'} has a variable frame rate (frames 20–66 ms apart)" in out
    assert "resampled by its timestamps to its average" in out
    timing = scan_timing(inputs / "vfr.mp4")
    assert timing.variable and abs(timing.duration - (times[-1] + 62.5) / 1000) < 1e-3  # the last frame: 1/16 s
    info = probe(inputs / "out.mp4")
    assert abs(info.fps - timing.average_fps) < 0.01                               # written at the average rate
    assert abs(decoded_frames(inputs / "out.mp4") / info.fps - timing.duration) < 1 / info.fps  # lasts as long
