"""Downloading model files, with the Hugging Face Hub and HTTP replaced by fakes (no network)."""

import email.message
import hashlib
import io
import logging
import os
import socket
import sys
import types
import urllib.error
from pathlib import Path

import huggingface_hub
import pytest

from rain import weights
from rain.weights import DownloadError, RemoteFile, catalogue, fetch


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any real network call fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args} {kwargs}")

    monkeypatch.setattr(fetch, "_open_url", refuse)
    monkeypatch.setattr(fetch, "_resolve", lambda host: None)  # names resolve; connections are refused above
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", refuse)


class FakeHub:
    """Serves fake file contents keyed by (repo_id, path in repo)."""

    def __init__(self, monkeypatch, files: dict[tuple[str, str], bytes], *, truncate: int = 0):
        self.files, self.truncate, self.downloads = files, truncate, []
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", self.hf_hub_download)
        monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", self.get_hf_file_metadata)

    def get_hf_file_metadata(self, url, **kwargs):
        for (repo, path), data in self.files.items():
            if url.endswith(f"{repo}/resolve/main/{path}"):
                return types.SimpleNamespace(size=len(data))
        raise huggingface_hub.errors.EntryNotFoundError(url)

    def hf_hub_download(self, repo_id, filename, *, revision="main", local_dir=None,
                        force_download=False, **kwargs):
        self.downloads.append((repo_id, filename, force_download))
        data = self.files[(repo_id, filename)]
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[: len(data) - self.truncate])
        return str(path)


RAIN = "Pscgylotti/RAIN-v0.1"


def rain_files():
    return {(RAIN, "reference_unet.pth"): b"r" * 300, (RAIN, "motion_unet.pth"): b"m" * 500,
            (RAIN, "pose_guider.pth"): b"p" * 40}


def test_download_rain_group_places_files(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch, rain_files())
    result = weights.download(tmp_path, ["rain"], progress=False)
    assert result == {"reference_unet": tmp_path / "reference_unet.pth",
                      "motion_unet": tmp_path / "motion_unet.pth",
                      "pose_guider": tmp_path / "pose_guider.pth"}
    assert (tmp_path / "motion_unet.pth").read_bytes() == b"m" * 500
    assert len(hub.downloads) == 3


def test_download_skips_files_with_right_size(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch, rain_files())
    (tmp_path / "pose_guider.pth").write_bytes(b"p" * 40)
    (tmp_path / "reference_unet.pth").write_bytes(b"x" * 10)  # wrong size: fetched again
    weights.download(tmp_path, ["rain"], progress=False)
    fetched = {(name, force) for _, name, force in hub.downloads}
    assert fetched == {("reference_unet.pth", True), ("motion_unet.pth", False)}
    assert (tmp_path / "reference_unet.pth").read_bytes() == b"r" * 300


def test_download_skips_models_present_in_another_form(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch, rain_files())
    (tmp_path / "motion_unet.safetensors").write_bytes(b"converted")
    weights.download(tmp_path, ["motion_unet"], progress=False)
    assert hub.downloads == []


def test_download_image_encoder_known_size_needs_no_network(tmp_path):
    folder = tmp_path / "image_encoder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with open(folder / "pytorch_model.bin", "wb") as f:
        f.truncate(1_215_993_967)  # sparse file of the published size
    assert weights.download(tmp_path, ["image_encoder"], progress=False) == {"image_encoder": folder}


def test_download_subfolder_and_folder_layouts(tmp_path, monkeypatch):
    lambdalabs, vae = "lambdalabs/sd-image-variations-diffusers", "stabilityai/sd-vae-ft-mse"
    FakeHub(monkeypatch, {(vae, "config.json"): b"{}", (vae, "diffusion_pytorch_model.safetensors"): b"v" * 9,
                          (lambdalabs, "image_encoder/config.json"): b"{}",
                          (lambdalabs, "image_encoder/pytorch_model.bin"): b"c" * 7})
    monkeypatch.setattr(catalogue, "_static_entries", _with_image_encoder_size(None))
    result = weights.download(tmp_path, ["vae", "image_encoder"], progress=False)
    assert result == {"vae": tmp_path / "sd-vae-ft-mse", "image_encoder": tmp_path / "image_encoder"}
    assert (tmp_path / "sd-vae-ft-mse" / "diffusion_pytorch_model.safetensors").read_bytes() == b"v" * 9
    assert (tmp_path / "image_encoder" / "pytorch_model.bin").read_bytes() == b"c" * 7


def _with_image_encoder_size(size):
    original = catalogue._static_entries

    def entries():
        catalogue = original()
        entry = catalogue["image_encoder"]
        downloads = tuple(RemoteFile(**{**d.__dict__, "size": size}) for d in entry.downloads)
        catalogue["image_encoder"] = weights.ModelEntry(**{**entry.__dict__, "downloads": downloads})
        return catalogue
    return entries


def test_size_mismatch_after_hub_download_is_reported(tmp_path, monkeypatch):
    FakeHub(monkeypatch, rain_files(), truncate=5)
    with pytest.raises(DownloadError) as err:
        weights.download(tmp_path, ["pose_guider"], progress=False)
    message = str(err.value)
    assert "pose_guider.pth is 35 bytes" in message and "should be 40 bytes" in message
    assert f"python -m rain download --models-dir {tmp_path}" in message


def test_hub_failure_is_wrapped(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("connection reset")
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *a, **k: types.SimpleNamespace(size=3))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    with pytest.raises(DownloadError, match="(?s)connection reset.*resume"):
        weights.download(tmp_path, ["pose_guider"], progress=False)


# ---- no network: one message at once; retries: one line each ----------------------------------------------

def no_dns(monkeypatch):
    """Host names do not resolve and no proxy is configured (as on a machine without network)."""
    for name in [n for n in os.environ if n.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    asked = []

    def resolve(host):
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(fetch, "_resolve", resolve)
    return asked


def test_unresolvable_hub_fails_at_once_with_one_message(tmp_path, monkeypatch):
    asked = no_dns(monkeypatch)  # the Hub calls still refuse: reaching them would fail the test
    with pytest.raises(DownloadError) as err:
        weights.download(tmp_path, ["rain"], progress=False)
    assert asked == ["huggingface.co"]
    message = str(err.value)
    assert message.startswith("Cannot download reference_unet.pth: the server name huggingface.co does not "
                              "resolve (Name or service not known)")
    assert f"python -m rain download --models-dir {tmp_path}" in message and "HTTPS_PROXY" in message


def test_unresolvable_hub_keeps_present_files(tmp_path, monkeypatch):
    no_dns(monkeypatch)

    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", offline)
    (tmp_path / "pose_guider.pth").write_bytes(b"p" * 40)
    assert weights.download(tmp_path, ["pose_guider"], progress=False) == {
        "pose_guider": tmp_path / "pose_guider.pth"}


def test_behind_a_proxy_names_are_not_resolved_here(tmp_path, monkeypatch):
    asked = no_dns(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    FakeHub(monkeypatch, rain_files())
    weights.download(tmp_path, ["pose_guider"], progress=False)
    assert asked == [] and (tmp_path / "pose_guider.pth").read_bytes() == b"p" * 40


def test_unresolvable_url_host_says_no_network(tmp_path, monkeypatch):
    def open_url(request, timeout):
        raise urllib.error.URLError(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"))
    monkeypatch.setattr(fetch, "_open_url", open_url)
    with pytest.raises(DownloadError, match="the server name example.invalid does not resolve "
                                            r"\(Temporary failure in name resolution\)"):
        weights.http_download("https://example.invalid/taesdv.pth", tmp_path / "taesdv.pth", progress=False)
    assert list(tmp_path.iterdir()) == []


class RecordingHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_each_hub_retry_is_one_line(tmp_path, monkeypatch, caplog):
    """huggingface_hub logs two warnings per retry, through its own handler and the root logger's."""
    hub = FakeHub(monkeypatch, rain_files())
    http_logger = logging.getLogger("huggingface_hub.utils._http")
    url = "https://huggingface.co/Pscgylotti/RAIN-v0.1/resolve/main/pose_guider.pth"

    def flaky_download(*args, **kwargs):
        for attempt, wait in ((1, 1), (2, 2)):
            http_logger.warning(f"'[Errno 104] Connection reset by peer' thrown while requesting GET {url}")
            http_logger.warning(f"Retrying in {wait}s [Retry {attempt}/5].")
        return FakeHub.hf_hub_download(hub, *args, **kwargs)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", flaky_download)
    library_handler = RecordingHandler()  # stands for the handler huggingface_hub installs for itself
    hub_logger = logging.getLogger("huggingface_hub")
    hub_logger.addHandler(library_handler)
    try:
        with caplog.at_level(logging.WARNING):
            weights.download(tmp_path, ["pose_guider"], progress=False)
    finally:
        hub_logger.removeHandler(library_handler)
    assert library_handler.records == []
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "pose_guider.pth from huggingface.co/Pscgylotti/RAIN-v0.1: [Errno 104] Connection reset by peer; "
        "Retrying in 1s [Retry 1/5]",
        "pose_guider.pth from huggingface.co/Pscgylotti/RAIN-v0.1: [Errno 104] Connection reset by peer; "
        "Retrying in 2s [Retry 2/5]"]
    assert hub_logger.propagate and library_handler not in hub_logger.handlers  # restored afterwards


def test_unknown_group_is_an_error(tmp_path):
    with pytest.raises(weights.WeightsError, match="choose from"):
        weights.download(tmp_path, ["everything"], progress=False)


# ---- HTTP (GitHub) downloads -----------------------------------------------------------------

class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, status: int, headers: dict[str, str], fail_after: int | None = None):
        super().__init__(data)
        self.status = status
        self.headers = email.message.Message()
        for key, value in headers.items():
            self.headers[key] = value
        self.fail_after = fail_after

    def read(self, n=-1):
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError("peer reset")
        return super().read(n if self.fail_after is None else min(n, self.fail_after - self.tell()))


class FakeServer:
    def __init__(self, monkeypatch, content: bytes, *, honour_range=True, fail_after=None):
        self.content, self.honour_range, self.fail_after = content, honour_range, fail_after
        self.requests = []
        monkeypatch.setattr(fetch, "_open_url", self.open)

    def open(self, request, timeout):
        range_header = request.get_header("Range")
        self.requests.append(range_header)
        total = len(self.content)
        if range_header and self.honour_range:
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            if start >= total:
                headers = email.message.Message()
                headers["Content-Range"] = f"bytes */{total}"
                raise urllib.error.HTTPError(request.full_url, 416, "Range Not Satisfiable", headers, None)
            body = self.content[start:]
            return FakeResponse(body, 206, {"Content-Length": str(len(body)),
                                            "Content-Range": f"bytes {start}-{total - 1}/{total}"})
        return FakeResponse(self.content, 200, {"Content-Length": str(total)}, self.fail_after)


CONTENT = bytes(range(256)) * 40


def test_http_resume_continues_part_file_with_range(tmp_path, monkeypatch):
    server = FakeServer(monkeypatch, CONTENT)
    dest = tmp_path / "taesdv.pth"
    (tmp_path / "taesdv.pth.part").write_bytes(CONTENT[:1000])
    weights.http_download("https://example.invalid/taesdv.pth", dest, progress=False)
    assert server.requests == ["bytes=1000-"]
    assert dest.read_bytes() == CONTENT
    assert not (tmp_path / "taesdv.pth.part").exists()


def test_http_server_without_range_support_restarts(tmp_path, monkeypatch):
    FakeServer(monkeypatch, CONTENT, honour_range=False)
    (tmp_path / "f.bin.part").write_bytes(b"garbage")
    weights.http_download("https://example.invalid/f.bin", tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == CONTENT


def test_http_complete_part_file_is_finished_on_416(tmp_path, monkeypatch):
    FakeServer(monkeypatch, CONTENT)
    (tmp_path / "f.bin.part").write_bytes(CONTENT)
    weights.http_download("https://example.invalid/f.bin", tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == CONTENT


def test_http_interruption_keeps_part_then_resumes(tmp_path, monkeypatch):
    server = FakeServer(monkeypatch, CONTENT, fail_after=3000)
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="run again to resume"):
        weights.http_download("https://example.invalid/f.bin", dest, progress=False)
    assert (tmp_path / "f.bin.part").stat().st_size == 3000 and not dest.exists()
    server.fail_after = None
    weights.http_download("https://example.invalid/f.bin", dest, progress=False)
    assert server.requests == [None, "bytes=3000-"]
    assert dest.read_bytes() == CONTENT


def test_http_size_mismatch_with_expected_size(tmp_path, monkeypatch):
    FakeServer(monkeypatch, CONTENT)
    with pytest.raises(DownloadError) as err:
        weights.http_download("https://example.invalid/f.bin", tmp_path / "f.bin",
                              expected_size=len(CONTENT) + 1, progress=False)
    assert f"is {len(CONTENT):,} bytes but should be {len(CONTENT) + 1:,}" in str(err.value)
    assert not (tmp_path / "f.bin").exists()


def git_sha(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def test_url_file_content_check_and_skip(tmp_path, monkeypatch):
    server = FakeServer(monkeypatch, CONTENT)
    remote = RemoteFile("taesdv.pth", url="https://example.invalid/taesdv.pth",
                        git_blob_sha1=git_sha(CONTENT))
    weights.fetch_file(remote, tmp_path, progress=False)
    assert weights.git_blob_sha1(tmp_path / "taesdv.pth") == git_sha(CONTENT)
    weights.fetch_file(remote, tmp_path, progress=False)  # present and right: no request
    assert len(server.requests) == 1
    bad = RemoteFile("other.pth", url="https://example.invalid/x", git_blob_sha1="0" * 40)
    with pytest.raises(DownloadError, match="expected content"):
        weights.fetch_file(bad, tmp_path, progress=False)
    assert not (tmp_path / "other.pth").exists()


def test_taesdv_catalogue_entry_uses_url_and_content_check():
    remote = weights.MODEL_FILES["taesdv"].downloads[0]
    assert remote.url.startswith("https://github.com/madebyollin/taesdv/raw/")
    assert remote.url.endswith("/taesdv.pth") and remote.git_blob_sha1


# ---- DWPose entries come from rain.pose.model_files when it exists ---------------------------

def test_dwpose_entry_from_pose_file_list(tmp_path, monkeypatch):
    fake = types.ModuleType("rain.pose.model_files")
    fake.DWPOSE_FILES = [
        {"name": "dw-mm_ucoco.onnx", "repo_id": "hr16/UnJIT-DWPose", "filename": "dw-mm_ucoco.onnx",
         "subdir": "dwpose", "size_mb": 72},
        {"name": "yolox_s.onnx", "url": "https://example.invalid/yolox_s.onnx"},
    ]
    monkeypatch.setitem(sys.modules, "rain.pose.model_files", fake)
    entry = weights.MODEL_FILES["dwpose"]
    assert [d.dest for d in entry.downloads] == ["dwpose/dw-mm_ucoco.onnx", "dwpose/yolox_s.onnx"]
    assert entry.downloads[0].approx_size == "72 MB"
    FakeHub(monkeypatch, {("hr16/UnJIT-DWPose", "dw-mm_ucoco.onnx"): b"onnx"})
    FakeServer(monkeypatch, b"yolo")
    with pytest.raises(weights.MissingWeightsError, match="dwpose/"):
        weights.require_weights(tmp_path, ["dwpose"])
    assert weights.download(tmp_path, ["dwpose"], progress=False) == {"dwpose": tmp_path / "dwpose"}
    assert (tmp_path / "dwpose" / "yolox_s.onnx").read_bytes() == b"yolo"


def test_dwpose_real_file_list_accepts_any_detector_pose_pair(tmp_path):
    from rain.pose import model_files

    entry = weights.MODEL_FILES["dwpose"]
    assert {d.dest for d in entry.downloads} == {f"dwpose/{f['name']}" for f in model_files.DWPOSE_FILES}
    folder = tmp_path / "dwpose"
    folder.mkdir()
    (folder / model_files.DETECTOR_PREFERENCE[-1]).write_bytes(b"x")
    assert weights.find_weight(tmp_path, "dwpose") is None
    (folder / model_files.POSE_PREFERENCE[-1]).write_bytes(b"x")
    assert weights.find_weight(tmp_path, "dwpose") == folder


def test_dwpose_without_pose_file_list_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rain.pose.model_files", None)  # import fails
    assert "dwpose" not in weights.MODEL_FILES
    assert weights.download(tmp_path, ["dwpose"], progress=False) == {}
    assert weights.find_weight(tmp_path, "dwpose") is None
    (tmp_path / "dwpose").mkdir()
    (tmp_path / "dwpose" / "det.onnx").write_bytes(b"x")
    assert weights.find_weight(tmp_path, "dwpose") == tmp_path / "dwpose"


def test_optional_groups_are_fetched_only_when_asked(tmp_path, monkeypatch):
    depth = "depth-anything/Depth-Anything-V2-Small-hf"
    hub = FakeHub(monkeypatch, {(depth, "config.json"): b"{}", (depth, "model.safetensors"): b"d" * 11,
                                (depth, "preprocessor_config.json"): b"{}"})
    default = {entry.name for entry in fetch._select_entries(weights.DOWNLOAD_GROUPS)}
    assert not default & {"depth_estimator", "lpips"}
    result = weights.download(tmp_path, ["depth"], progress=False)
    assert result == {"depth_estimator": tmp_path / "depth_estimator"}
    assert (tmp_path / "depth_estimator" / "model.safetensors").read_bytes() == b"d" * 11
    assert {name for _, name, _ in hub.downloads} == {"config.json", "model.safetensors", "preprocessor_config.json"}


def test_lpips_entry_names_the_files_evaluate_reads(tmp_path):
    from rain.training.metrics import LPIPS_LINEAR_FILES, LPIPS_TRUNK_FILES
    entry = catalogue.MODEL_FILES["lpips"]
    assert {Path(d.dest).name for d in entry.downloads} == {LPIPS_TRUNK_FILES[0], LPIPS_LINEAR_FILES[0]}
    assert all(Path(d.dest).parent.name == "lpips" for d in entry.downloads)
    (tmp_path / "lpips").mkdir()
    for name in (LPIPS_TRUNK_FILES[0], LPIPS_LINEAR_FILES[0]):
        (tmp_path / "lpips" / name).write_bytes(b"x")
    assert weights.find_weight(tmp_path, "lpips") == tmp_path / "lpips"
