"""Long renders through ``rain.render.render_video``: an interrupted-and-resumed render equals an uninterrupted
one frame for frame, changed settings or inputs refuse to resume, the state goes once the render completes, and a
video output is continued playable with the right number of frames."""

import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from rain.io import ResumeRefused, resume_dir
from rain.render import Callbacks, OutputSpec, RenderInterrupted, ResumeSpec, SourceSpec, render_video
from rain.render.sources import DrivingSource
from rain.sampling.stream import StreamSettings

SIZE = (64, 64)
FRAMES = 37            # not a multiple of the group
INTERRUPT_AT = 23      # input frame; not a multiple of the group either
SAVE_EVERY = 6         # does not divide the group: states are saved at 8, 12, 20 … frames written


def write_driving(path, frames=FRAMES, shift=0, rate=16, audio=False):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        sound = None
        if audio:
            sound = container.add_stream("aac", rate=16000)
            sound.layout = "mono"
        for i in range(frames):
            frame = np.zeros((64, 64, 3), np.uint8)
            frame[16:40, (3 * i + shift) % 40:(3 * i + shift) % 40 + 16] = (255, 128, 0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            samples = np.sin(np.arange(16000 * frames // rate) / 10.0).astype(np.float32)[None] * 0.3
            for start in range(0, samples.shape[1], 1024):
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 1024]),
                                                   format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 16000, start
                for packet in sound.encode(chunk):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)


@pytest.fixture(scope="module")
def reference(tiny_pipeline):
    image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (80, 72, 3), np.uint8))
    return tiny_pipeline.fuse_reference(image, *SIZE)


@pytest.fixture
def driving(tmp_path):
    write_driving(tmp_path / "poses.mp4")
    return tmp_path / "poses.mp4"


SETTINGS = StreamSettings(frames_per_group=4, num_groups=3, seed=11, decoder="taesdv")


def run(pipe, reference, driving, output, *, settings=SETTINGS, resume=False, save_every=SAVE_EVERY,
        interrupt_at=None, frames=None, audio=None):
    spec = SourceSpec(driving, "pose", SIZE)
    record = {"seed": settings.seed, "frames_per_group": settings.frames_per_group, "size": list(SIZE)}
    captured = {}

    def keep(frame, index):
        captured[index] = frame.clone()
    callbacks = Callbacks(frame=keep)
    real = DrivingSource.__iter__

    def interrupted(source):
        for frame in real(source):
            if source.position - 1 == interrupt_at:
                raise KeyboardInterrupt
            yield frame
    DrivingSource.__iter__ = interrupted
    try:
        result = render_video(pipe, reference, settings, spec, OutputSpec(output, 16.0, audio),
                              expected_frames=frames or FRAMES,
                              resume=ResumeSpec(settings=record, inputs={"driving video": driving},
                                                save_every=save_every, resume=resume),
                              callbacks=callbacks)
    finally:
        DrivingSource.__iter__ = real
    return result, captured


def png_frames(folder):
    return [np.asarray(Image.open(p)) for p in sorted(Path(folder).glob("*.png"))]


def video_frames(path):
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_interrupted_and_resumed_render_equals_an_uninterrupted_one(tiny_pipeline, reference, driving, tmp_path):
    full, full_frames = run(tiny_pipeline, reference, driving, tmp_path / "full", save_every=0)
    assert full.frames_out == FRAMES and len(full_frames) == FRAMES

    output = tmp_path / "resumed"
    with pytest.raises(RenderInterrupted) as stopped:
        run(tiny_pipeline, reference, driving, output, interrupt_at=INTERRUPT_AT)
    state = resume_dir(output)
    assert (state / "state.json").is_file()
    saved = __import__("json").loads((state / "state.json").read_text())
    kept = saved["frames_written"]
    assert 0 < kept < INTERRUPT_AT and kept % SETTINGS.frames_per_group == 0
    assert f"Resume continues after frame {kept}" in str(stopped.value)
    partial = tmp_path / "resumed.partial"
    assert len(png_frames(partial)) >= kept

    resumed, resumed_frames = run(tiny_pipeline, reference, driving, output, resume=True)
    assert resumed.resumed_from == kept and min(resumed_frames) == kept
    for index, frame in resumed_frames.items():      # the float frames, bit for bit
        assert torch.equal(frame, full_frames[index]), index
    ours, theirs = png_frames(output), png_frames(tmp_path / "full")
    assert len(ours) == len(theirs) == FRAMES
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    assert not state.exists() and not partial.exists()


def test_video_output_is_continued_playable_with_every_frame_and_the_sound(tiny_pipeline, reference, tmp_path):
    driving = tmp_path / "talk.mp4"
    write_driving(driving, audio=True)
    output = tmp_path / "out.mp4"
    with pytest.raises(RenderInterrupted):
        run(tiny_pipeline, reference, driving, output, interrupt_at=INTERRUPT_AT, audio=driving)
    partial = tmp_path / "out.partial.mp4"
    assert len(video_frames(partial)) >= 8            # playable, every frame written before the interruption
    run(tiny_pipeline, reference, driving, output, resume=True, audio=driving)
    run(tiny_pipeline, reference, driving, tmp_path / "full.mp4", save_every=0, audio=driving)
    ours, theirs = video_frames(output), video_frames(tmp_path / "full.mp4")
    assert len(ours) == FRAMES
    # The kept frames are the very packets written before; the rest come from an encoder that starts afresh
    # with a key frame, so compare the decoded pictures loosely (the encoder's, not RAIN's, differences).
    assert all(np.abs(a.astype(int) - b.astype(int)).mean() < 3 for a, b in zip(ours, theirs))
    with av.open(str(output)) as container:
        assert container.streams.audio, "the driving video's sound is kept"
        video = container.streams.video[0]
        assert abs(float(video.average_rate) - 16) < 1e-6
        assert abs(container.duration / 1e6 - FRAMES / 16) < 0.2
    assert not (tmp_path / "out.before-resume.mp4").exists() and not partial.exists()


def test_changed_settings_or_input_refuse_to_resume(tiny_pipeline, reference, driving, tmp_path):
    output = tmp_path / "out"
    with pytest.raises(RenderInterrupted):
        run(tiny_pipeline, reference, driving, output, interrupt_at=INTERRUPT_AT)
    other = StreamSettings(frames_per_group=4, num_groups=3, seed=12, decoder="taesdv")
    with pytest.raises(ResumeRefused, match="the setting 'seed' changed — it was 11 when the render started, "
                                            "now 12"):
        run(tiny_pipeline, reference, driving, output, settings=other, resume=True)
    write_driving(driving, shift=5)
    with pytest.raises(ResumeRefused, match="the driving video .*poses.mp4 changed since the render started"):
        run(tiny_pipeline, reference, driving, output, resume=True)
    assert (resume_dir(output) / "state.json").is_file()      # refusing keeps the state and the partial frames
    assert len(png_frames(tmp_path / "out.partial")) >= 8


@pytest.mark.parametrize("hook", ["check_cancel", "progress"])   # ComfyUI's progress bar raises on Cancel too
def test_cancel_between_steps_saves_exactly_there(tiny_pipeline, reference, driving, tmp_path, hook):
    class Stop(Exception):
        pass

    calls = []

    def cancel():
        calls.append(1)
        if len(calls) == 22:     # after the 22nd input frame: inside a group
            raise Stop("cancelled")
    from rain.render import RenderCancelled
    output = tmp_path / "out"
    def render(**options):
        return render_video(tiny_pipeline, reference, SETTINGS, SourceSpec(driving, "pose", SIZE),
                            OutputSpec(output, 16.0), expected_frames=FRAMES,
                            resume=ResumeSpec(inputs={"driving video": driving}, save_every=100, **options),
                            callbacks=Callbacks(**{hook: cancel if hook == "check_cancel" else
                                                   lambda progress: cancel()}))
    with pytest.raises(RenderCancelled) as stopped:
        render()
    assert isinstance(stopped.value.__cause__, Stop)
    record = __import__("json").loads((resume_dir(output) / "state.json").read_text())
    assert record["source"]["position"] == 22 and record["stream"]["pending"] == 2
    groups_out = 22 // 4 - (SETTINGS.num_groups - 1)            # the window holds the other groups
    assert record["frames_written"] == len(png_frames(tmp_path / "out.partial")) == groups_out * 4
    render(resume=True)              # continues with the two frames of the unfilled group held in the state
    run(tiny_pipeline, reference, driving, tmp_path / "full", save_every=0)
    ours, theirs = png_frames(output), png_frames(tmp_path / "full")
    assert len(ours) == FRAMES and all(np.array_equal(a, b) for a, b in zip(ours, theirs))


def test_progress_reports_frames_speed_and_time_left(tiny_pipeline, reference, driving, tmp_path):
    seen = []
    render_video(tiny_pipeline, reference, SETTINGS, SourceSpec(driving, "pose", SIZE), OutputSpec(tmp_path / "o", 16),
                 expected_frames=FRAMES, callbacks=Callbacks(progress=seen.append))
    assert [p.frames_in for p in seen if not p.draining] == list(range(1, FRAMES + 1))
    assert seen[-1].frames_out == FRAMES and seen[-1].work_done == seen[-1].work_total
    assert all(a.work_done <= b.work_done for a, b in zip(seen, seen[1:]))
    late = [p for p in seen if p.frames_per_second]
    assert late and all(p.seconds_left is not None and p.seconds_left >= 0 for p in late)
    assert seen[-1].seconds_left == 0
    assert f"{FRAMES}/{FRAMES} frames" in seen[-1].describe() and "frames/s" in seen[-1].describe()


@pytest.mark.parametrize("tracker_name", ["FaceLandmarkTracker", "BodyKeypointTracker"])
def test_landmark_tracking_and_smoothing_state_continue_exactly(tracker_name):
    import rain.pose.face_tracking as tracking
    from rain.pose.dwpose import PoseDetection
    from rain.pose.smoothing import OneEuroFilter

    rng = np.random.default_rng(4)

    def detection():
        scores = rng.uniform(0, 1, 134)       # some points unseen, some frames without a face at all
        if rng.uniform() < 0.2:
            scores[:] = 0
        return PoseDetection(rng.uniform(0, 512, (134, 2)), scores, np.array([0.0, 0, 10, 10]), np.zeros((0, 4)),
                             (512, 512))
    stream = [detection() for _ in range(40)]
    make = getattr(tracking, tracker_name)
    whole = make(smoothing=OneEuroFilter(rate=25))
    expected = [whole.update(d) for d in stream]
    first = make(smoothing=OneEuroFilter(rate=25))
    for d in stream[:17]:
        first.update(d)
    arrays, values = first.state_dict()
    values = __import__("json").loads(__import__("json").dumps(values))    # as stored in state.json
    arrays = {k: torch.from_numpy(np.ascontiguousarray(v)).numpy() for k, v in arrays.items()}
    second = make(smoothing=OneEuroFilter(rate=25))
    second.load_state_dict(arrays, values)
    rest = [second.update(d) for d in stream[17:]]
    for got, want in zip(rest, expected[17:]):
        assert (got is None and want is None) or np.array_equal(got, want)
    assert second.stats == whole.stats


# -- python -m rain animate --resume ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def face_models(tiny_models_dir, tmp_path_factory):
    """The reduced models plus DWPose stand-ins (one made-up face in every frame), as make-tiny-models writes."""
    import shutil

    from rain.devtools import write_tiny_dwpose
    folder = tmp_path_factory.mktemp("face_models") / "models"
    shutil.copytree(tiny_models_dir, folder)
    write_tiny_dwpose(folder)
    return folder


def animate(models, folder, *extra, output="out"):
    from rain.cli import main
    return main(["animate", "--models-dir", str(models), "--reference", str(folder / "ref.png"), "--driving",
                 str(folder / "take.mp4"), "-o", str(folder / output), "--task", "face", "--size", "64",
                 "--frames-per-group", "2", "--groups", "2", "--save-every", "5", *extra])


def test_cli_resume_continues_a_face_render_exactly_and_refuses_changes(face_models, tmp_path, monkeypatch, capsys):
    from rain.pipeline import RainPipeline
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 80, 3), np.uint8)).save(tmp_path / "ref.png")
    write_driving(tmp_path / "take.mp4", frames=13)
    assert animate(face_models, tmp_path, output="full") == 0
    real = DrivingSource.__iter__

    def interrupted(source):
        for frame in real(source):
            if source.position == 9:
                raise KeyboardInterrupt
            yield frame
    monkeypatch.setattr(DrivingSource, "__iter__", interrupted)
    assert animate(face_models, tmp_path) == 130
    err = capsys.readouterr().err
    assert f"(state in {tmp_path / 'out.resume'})" in err and "Resume continues after frame" in err
    monkeypatch.undo()

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the resume check")
    monkeypatch.setattr(RainPipeline, "from_models_dir", refuse)
    assert animate(face_models, tmp_path, "--resume", "--seed", "3") == 2
    assert "the setting 'seed' changed — it was 42 when the render started, now 3" in capsys.readouterr().err
    monkeypatch.undo()

    assert animate(face_models, tmp_path, "--resume") == 0
    assert "continued after the" in capsys.readouterr().out
    ours, theirs = png_frames(tmp_path / "out"), png_frames(tmp_path / "full")
    assert len(ours) == len(theirs) == 13 and all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    assert not (tmp_path / "out.resume").exists()
    assert animate(face_models, tmp_path, "--resume") == 2
    assert "Nothing to resume" in capsys.readouterr().err


KILLED_RENDER = """
import os, signal, sys
import sys
from pathlib import Path
import numpy as np
import torch
from PIL import Image
torch.set_num_threads(min(2, torch.get_num_threads()))   # as conftest
from rain.pipeline import RainPipeline
from rain.render import Callbacks, OutputSpec, ResumeSpec, SourceSpec, render_video
from rain.sampling.stream import StreamSettings
models, driving, output = sys.argv[1:4]
pipe = RainPipeline.from_models_dir(models)
image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (80, 72, 3), np.uint8))
reference = pipe.fuse_reference(image, 64, 64)
settings = StreamSettings(frames_per_group=4, num_groups=3, seed=11, decoder="taesdv")

def progress(step):
    if step.frames_out >= 24:
        os.kill(os.getpid(), signal.SIGKILL)      # no cleanup at all: the writer is never closed

render_video(pipe, reference, settings, SourceSpec(Path(driving), "pose", (64, 64)), OutputSpec(Path(output), 16.0),
             expected_frames=37, resume=ResumeSpec(settings={"seed": 11, "frames_per_group": 4, "size": [64, 64]},
                                                   inputs={"driving video": Path(driving)}, save_every=4),
             callbacks=Callbacks(progress=progress))
"""


def test_a_killed_render_resumes_from_frames_that_reached_the_disk(tiny_pipeline, tiny_models_dir, reference,
                                                                   driving, tmp_path):
    import json
    import subprocess
    output = tmp_path / "out.mp4"
    repo = Path(__file__).resolve().parent.parent
    killed = subprocess.run([sys.executable, "-c", KILLED_RENDER, str(tiny_models_dir), str(driving), str(output)],
                            cwd=repo, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr
    saved = json.loads((resume_dir(output) / "state.json").read_text())["frames_written"]
    before = video_frames(tmp_path / "out.partial.mp4")
    assert 0 < saved <= len(before)                # the state only names frames that are in the file
    run(tiny_pipeline, reference, driving, output, resume=True)
    run(tiny_pipeline, reference, driving, tmp_path / "full.mp4", save_every=0)
    ours, theirs = video_frames(output), video_frames(tmp_path / "full.mp4")
    assert len(ours) == FRAMES
    assert all(np.array_equal(a, b) for a, b in zip(ours[:saved], before[:saved]))   # kept as encoded
    assert all(np.abs(a.astype(int) - b.astype(int)).mean() < 3 for a, b in zip(ours, theirs))
