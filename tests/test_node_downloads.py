"""Load RAIN Model fetches the released files that are missing, from inside the graph: into the models folder,
with progress on the node (bytes, speed), checked against the published SHA-256, resumable after Cancel, and one
clear message when offline. The network is a stand-in (FakeHub); nothing leaves this machine."""

import hashlib
import shutil
import socket
import sys
import types
from pathlib import Path

import huggingface_hub
import pytest

from test_nodes_model_paths import host  # noqa: F401  (fixture: the pack without ComfyUI)

RAIN = "Pscgylotti/RAIN-v0.1"
RELEASED = {"reference_unet.pth": b"r" * 3000, "motion_unet.pth": b"m" * 5000, "pose_guider.pth": b"p" * 400}


class ReleasedSet:
    """The Hub as the node sees it: sizes and SHA-256 (the LFS ETag) from the metadata, bytes that arrive in two
    parts through the tqdm class the caller gives."""

    def __init__(self, monkeypatch, files, *, corrupt=None, stop_after_half=None):
        self.files, self.corrupt, self.stop_after_half, self.calls = files, corrupt, stop_after_half, []
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", self.hf_hub_download)
        monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", self.get_hf_file_metadata)

    def get_hf_file_metadata(self, url, **kwargs):
        name = url.rsplit("/", 1)[-1]
        data = self.files[name]
        return types.SimpleNamespace(size=len(data), etag=f'"{hashlib.sha256(data).hexdigest()}"')

    def hf_hub_download(self, repo_id, filename, *, local_dir=None, tqdm_class=None, **kwargs):
        assert repo_id == RAIN
        self.calls.append(filename)
        data = self.files[filename]
        if filename == self.corrupt:
            data = data[:-1] + b"?"
        path = Path(local_dir) / filename
        bar = tqdm_class(total=len(data), initial=0, disable=True) if tqdm_class else None
        half = len(data) // 2
        path.write_bytes(data[:half])
        if bar:
            bar.update(half)
        if filename == self.stop_after_half:
            raise RuntimeError("connection reset")
        path.write_bytes(data)
        if bar:
            bar.update(len(data) - half)
        return str(path)


@pytest.fixture
def models(host, tiny_models_dir, tmp_path, monkeypatch):  # noqa: F811
    """models/rain holding everything but the released RAIN set (as after a TAESDV/VAE/CLIP/DWPose copy)."""
    root = tmp_path / "models" / "rain"
    shutil.copytree(tiny_models_dir, root)
    for name in ("reference_unet", "motion_unet", "pose_guider"):
        for file in root.glob(f"{name}.*"):
            file.unlink()
    if not (root / "dwpose").is_dir():
        from rain.devtools import write_tiny_dwpose
        write_tiny_dwpose(root)
    host.set_fallback_models_dirs([root])
    import importlib
    fetch = importlib.import_module(host.__name__.rsplit(".", 2)[0] + ".rain.weights.fetch")
    monkeypatch.setattr(fetch, "_resolve", lambda name: None)   # names resolve; the Hub itself is stood in
    texts = []
    monkeypatch.setattr(host, "progress_text", lambda text, node_id=None: texts.append((node_id, text)))
    downloads = sys.modules[host.__name__.rsplit(".", 1)[0] + ".downloads"]
    return host, downloads, root, texts


def test_the_missing_released_files_are_fetched_with_progress_on_the_node(models, monkeypatch):
    host, downloads, root, texts = models
    monkeypatch.setattr(downloads.host, "progress_text", host.progress_text)
    assert sorted(e.name for e in downloads.missing_entries("motion_unet.pth")) == \
        ["motion_unet", "pose_guider", "reference_unet"]
    assert downloads.missing_entries("body/motion_unet.pth") == []     # a trained set takes only shared files
    hub = ReleasedSet(monkeypatch, RELEASED)
    fetched = downloads.fetch_missing("motion_unet.pth", node_id="3")
    assert sorted(fetched) == ["motion_unet", "pose_guider", "reference_unet"]
    for name, data in RELEASED.items():
        assert (root / name).read_bytes() == data
    shown = [text for node, text in texts if node == "3"]
    assert any("downloading motion_unet.pth" in t and "of 5.0 KB" in t and "/s" in t for t in shown), shown
    assert shown[-1].startswith("downloaded 3 files into")
    # Present now: nothing is fetched again, and the loader's list shows the set at once (no restart).
    hub.calls.clear()
    assert downloads.fetch_missing("motion_unet.pth") == [] and hub.calls == []
    assert "motion_unet.pth" in host.list_model_files()


def test_a_file_that_does_not_match_its_published_hash_is_deleted(models, monkeypatch):
    host, downloads, root, _ = models
    ReleasedSet(monkeypatch, RELEASED, corrupt="motion_unet.pth")
    with pytest.raises(Exception, match="SHA-256"):
        downloads.fetch_missing("motion_unet.pth")
    assert not (root / "motion_unet.pth").exists()


def test_cancel_during_a_download_is_a_cancel_not_a_download_failure(models, monkeypatch):
    host, downloads, root, _ = models
    ReleasedSet(monkeypatch, RELEASED)

    def cancel_halfway(value, total=None, preview=None):
        if value and total and value < total:
            raise host.Interrupted("processing interrupted")
    bar = types.SimpleNamespace(update_absolute=cancel_halfway)
    monkeypatch.setattr(downloads.host, "progress_bar", lambda total, node_id=None: bar)
    with pytest.raises(host.Interrupted):
        downloads.fetch_missing("motion_unet.pth")


def test_offline_says_which_files_where_and_what_to_run_elsewhere(models, monkeypatch):
    host, downloads, root, _ = models
    import importlib
    fetch = importlib.import_module(host.__name__.rsplit(".", 2)[0] + ".rain.weights.fetch")

    def no_dns(name):
        raise socket.gaierror(-2, "Name or service not known")
    monkeypatch.setattr(fetch, "_resolve", no_dns)
    monkeypatch.setattr(fetch.urllib.request, "getproxies", lambda: {})
    with pytest.raises(Exception) as error:
        downloads.fetch_missing("motion_unet.pth")
    message = str(error.value)
    assert "reference_unet.pth" in message and "motion_unet.pth" in message and "pose_guider.pth" in message
    assert str(root) in message and "download --models-dir" in message
    assert "does not resolve" in message and message.count("does not resolve") == 1
