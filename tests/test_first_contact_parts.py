"""The pieces behind a newcomer's first hour: CLI help, stream progress, partial outputs, the model-set
declaration, where DWPose files are looked for and what the message says."""

import argparse
import json

import pytest
import torch

from rain.cli import HelpFormatter, build_parser
from rain.io import AtomicOutput, VideoIOError, partial_path
from rain.model_set import ModelSetDeclarationError, read_declaration, write_declaration
from rain.pose import model_files
from rain.progress import stream_calls, stream_steps, stream_work
from rain.sampling.stream import RainStream, StreamSettings


# -- CLI help -------------------------------------------------------------------------------------------------
def all_parsers(parser, name="python -m rain"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                yield from all_parsers(sub, f"{name} {command}")


def test_every_option_of_every_command_has_help_and_shows_its_default():
    parsers = list(all_parsers(build_parser()))
    assert {"python -m rain animate", "python -m rain make-tiny-models"} <= {name for name, _ in parsers}
    for name, parser in parsers:
        assert isinstance(parser.formatter_class, type) and issubclass(parser.formatter_class, HelpFormatter), name
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{label} has no help text"
            if action.option_strings and not action.required:
                shown = formatter._expand_help(action)
                assert "default" in shown, f"{label}: its help does not show the default: {shown!r}"


def test_help_renders_for_every_command(capsys):
    for name, parser in all_parsers(build_parser()):
        parser.print_help()
    text = capsys.readouterr().out
    assert "(default: 2.5)" in text and "(default: off)" in text


# -- progress -------------------------------------------------------------------------------------------------
def counting_stream(settings):
    """A stream with trivial callables: what is counted, not what is computed."""
    return RainStream(pose_features=lambda poses: torch.zeros(1, 1, poses.shape[2], 1, 1),
                      denoise=lambda sample, timesteps, features: torch.zeros_like(sample),
                      decode=None, noise=lambda shape, what: torch.zeros(shape), latent_shape=(1, 1, 1),
                      settings=settings)


@pytest.mark.parametrize("frames", [1, 3, 4, 12, 13, 30])
@pytest.mark.parametrize("group, levels", [(4, 4), (1, 2), (3, 5)])
def test_progress_moves_from_the_first_frame_and_ends_at_the_total(frames, group, levels):
    settings = StreamSettings(frames_per_group=group, num_groups=levels)
    stream = counting_stream(settings)
    steps = list(stream_steps(stream, (torch.zeros(3, 8, 8) for _ in range(frames))))
    assert stream.unet_calls == stream_calls(frames, settings)
    assert steps[0].work_done == 1 and steps[0].frames_out == 0        # moving before any frame is finished
    done = [s.work_done for s in steps]
    assert done == sorted(done) and len(set(done)) == len(done)        # every step moves it
    assert done[-1] == stream_work(frames, settings)
    assert steps[-1].frames_out == frames
    assert sum(len(s.frames) for s in steps) == frames


# -- partial outputs ------------------------------------------------------------------------------------------
def test_partial_names_keep_the_suffix(tmp_path):
    assert partial_path(tmp_path / "out.mp4") == tmp_path / "out.partial.mp4"
    assert partial_path(tmp_path / "frames") == tmp_path / "frames.partial"
    assert partial_path(tmp_path / "f_%05d.png") == tmp_path / "f_%05d.partial" / "f_%05d.png"


def test_atomic_file_replaces_only_on_success(tmp_path):
    final = tmp_path / "out.mp4"
    final.write_bytes(b"earlier")
    with pytest.raises(RuntimeError):
        with AtomicOutput(final) as target:
            target.path.write_bytes(b"half")
            raise RuntimeError("failed")
    assert final.read_bytes() == b"earlier" and (tmp_path / "out.partial.mp4").read_bytes() == b"half"
    with AtomicOutput(final) as target:
        assert not target.path.exists()                      # a stale partial file is started afresh
        target.path.write_bytes(b"new")
    assert final.read_bytes() == b"new" and not target.path.exists()


def test_atomic_failure_before_anything_was_written_leaves_nothing(tmp_path):
    target = AtomicOutput(tmp_path / "out.mp4")
    with pytest.raises(RuntimeError):
        with target:
            raise RuntimeError("failed")
    assert target.kept_partial is None and list(tmp_path.iterdir()) == []


def test_atomic_png_pattern_replaces_the_earlier_sequence_only_on_success(tmp_path):
    for index in range(5):
        (tmp_path / f"f_{index:05d}.png").write_bytes(b"earlier")
    (tmp_path / "notes.txt").write_text("mine")
    pattern = tmp_path / "f_%05d.png"
    with pytest.raises(RuntimeError):
        with AtomicOutput(pattern) as target:
            target.path.parent.mkdir()
            (target.path.parent / "f_00000.png").write_bytes(b"new")
            raise RuntimeError("failed")
    assert (tmp_path / "f_00004.png").read_bytes() == b"earlier"
    with AtomicOutput(pattern) as target:
        target.path.parent.mkdir()
        for index in range(2):
            (target.path.parent / f"f_{index:05d}.png").write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f_00000.png", "f_00001.png", "notes.txt"]


def test_atomic_folder_over_a_file_is_refused(tmp_path):
    (tmp_path / "frames").write_text("a file")
    with pytest.raises(VideoIOError, match="is a file"):
        with AtomicOutput(tmp_path / "frames") as target:
            (target.path / "000000.png").write_bytes(b"png")


# -- the model-set declaration --------------------------------------------------------------------------------
def test_declaration_round_trip_and_fit(tmp_path):
    denoiser = tmp_path / "motion_unet.pth"
    denoiser.write_bytes(b"x" * 100)
    write_declaration(denoiser, native_size=(128, 128), reduced_random_weights=True)
    declaration = read_declaration(denoiser)
    assert declaration.native_size == (128, 128) and declaration.reduced_random_weights
    assert declaration.fit(512, 512) == (128, 128)
    assert declaration.fit(768, 512) == (160, 104)         # portrait stays portrait, about as many pixels
    assert declaration.fit(64, 2048)[0] == 64              # never below RAIN's minimum side


def test_declaration_of_another_file_is_ignored(tmp_path, caplog):
    denoiser = tmp_path / "motion_unet.pth"
    denoiser.write_bytes(b"x" * 100)
    write_declaration(denoiser, native_size=(128, 128), reduced_random_weights=True)
    denoiser.write_bytes(b"real weights, another size")     # the real weights replaced the tiny ones
    assert read_declaration(denoiser) is None
    assert "ignored" in caplog.text


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not readable JSON"),
    (json.dumps({"native_size": [128, 128]}), "native_size must look like"),
    (json.dumps({"native_size": {"width": 100, "height": 128}}), "is not a RAIN frame size"),
])
def test_bad_declaration_names_the_file(tmp_path, text, message):
    (tmp_path / "motion_unet.pth").write_bytes(b"x")
    (tmp_path / "rain_model_set.json").write_text(text)
    with pytest.raises(ModelSetDeclarationError, match=message) as error:
        read_declaration(tmp_path / "motion_unet.pth")
    assert str(tmp_path / "rain_model_set.json") in str(error.value) and "delete" in str(error.value)


# -- where DWPose files are looked for ------------------------------------------------------------------------
def test_controlnet_aux_downloads_are_looked_for_next_to_comfyui_models(tmp_path, monkeypatch):
    monkeypatch.delenv("AUX_ANNOTATOR_CKPTS_PATH", raising=False)
    comfy = tmp_path / "ComfyUI"
    (comfy / "custom_nodes").mkdir(parents=True)
    (comfy / "models" / "rain").mkdir(parents=True)
    expected = [comfy / "custom_nodes" / "comfyui_controlnet_aux" / "ckpts"]
    assert model_files.controlnet_aux_ckpts_dirs(comfy / "models" / "rain") == expected
    assert model_files.controlnet_aux_ckpts_dirs(comfy / "models") == expected
    standalone = tmp_path / "project" / "models"
    standalone.mkdir(parents=True)
    assert model_files.controlnet_aux_ckpts_dirs(standalone) == []        # not a ComfyUI folder


def test_missing_dwpose_message_downloads_where_it_looks(tmp_path, monkeypatch):
    monkeypatch.delenv("AUX_ANNOTATOR_CKPTS_PATH", raising=False)
    models = tmp_path / "my models"
    with pytest.raises(model_files.DWPoseModelsNotFound) as error:
        model_files.locate_dwpose_models(models)
    message = str(error.value)
    assert f"Put them in {models / 'dwpose'}" in message
    assert f"python -m rain download --dwpose --models-dir '{models}'" in message   # quoted: a space
    assert "custom_nodes" not in message


# -- the stream benchmark -------------------------------------------------------------------------------------
def test_bench_stream_reports_warm_up_and_steady_state_without_dividing_by_zero():
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    # 12 frames: the window is full but nothing has come out yet (this crashed with ZeroDivisionError).
    result = subprocess.run([sys.executable, "bench/bench_stream.py", "--frames", "12", "--size", "64"], cwd=root,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "warm-up: no frame out yet" in result.stdout and "no steady-state rate" in result.stdout
