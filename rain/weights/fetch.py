"""Fetching missing model files: Hugging Face Hub downloads and resumable HTTP downloads.

Every file's size is checked against the server's afterwards; files taken from a git
repository are also checked by content (git blob id). A host whose name does not resolve
fails at once with one message (no retry loop), and the Hub's retries show as one line each.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from .catalogue import ALIASES, DOWNLOAD_GROUPS, MODEL_FILES, ModelEntry, RemoteFile, find_weight
from .errors import DownloadError, WeightsError, download_command
from ..messages import describe_error

logger = logging.getLogger(__name__)


#: ``report(file name, bytes done, bytes in all or None)``, called as bytes arrive (a host's progress bar).
Report = Callable[[str, int, "int | None"], None]


def download(models_dir: str | os.PathLike[str], which: Iterable[str] = DOWNLOAD_GROUPS, *,
             progress: bool = True, force: bool = False, report: Report | None = None) -> dict[str, Path]:
    """Fetch the model files of the given groups (or model names) into ``models_dir``.

    Files already present with the right size are skipped, as are models already present
    in another accepted form (e.g. a converted ``.safetensors``). Hub files go through
    ``huggingface_hub.hf_hub_download`` (which resumes partial downloads); plain URLs use
    an HTTP Range download into a ``.part`` file. Every file's size is checked against the
    server's afterwards, and its content against the published hash where there is one (the Hub's SHA-256 of
    LFS files, the git blob id of files from GitHub). Returns ``{model name: path}`` of the models now complete.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    result = {}
    for entry in _select_entries(which):
        present = find_weight(models_dir, entry.name)
        if present is not None and not force and not any(
                (models_dir / d.dest).exists() for d in entry.downloads):
            logger.info("%s: already present as %s", entry.name, present)
            result[entry.name] = present
            continue
        for remote in entry.downloads:
            if present is not None and not force and not (models_dir / remote.dest).exists():
                continue  # complete in another accepted layout (e.g. a .bin instead of .safetensors)
            fetch_file(remote, models_dir, progress=progress, force=force, report=report)
        path = find_weight(models_dir, entry.name)
        if path is None:  # a catalogue bug rather than a user problem, but say it clearly
            raise DownloadError(f"Downloaded {entry.name} but it is still incomplete in {models_dir}.")
        result[entry.name] = path
    return result


def _select_entries(which: Iterable[str]) -> list[ModelEntry]:
    if isinstance(which, str):
        which = [which]
    catalogue = {name: MODEL_FILES[name] for name in MODEL_FILES}
    selected: dict[str, ModelEntry] = {}
    for item in which:
        item = ALIASES.get(item, item)
        matches = [e for e in catalogue.values() if item in (e.group, e.name)]
        if not matches:
            if item == "dwpose":
                logger.warning("Skipping dwpose: its file list (rain.pose.model_files) is not "
                               "available in this installation.")
                continue
            known = sorted({e.group for e in catalogue.values()} | set(catalogue))
            raise WeightsError(f"Nothing to download for {item!r}; choose from {', '.join(known)}.")
        selected.update((e.name, e) for e in matches)
    return list(selected.values())


def fetch_file(remote: RemoteFile, models_dir: str | os.PathLike[str], *, progress: bool = True,
               force: bool = False, report: Report | None = None) -> Path:
    """Make ``models_dir/remote.dest`` present and complete; returns its path."""
    models_dir = Path(models_dir)
    if remote.repo_id:
        return _fetch_from_hub(remote, models_dir, progress=progress, force=force, report=report)
    if remote.url:
        return _fetch_from_url(remote, models_dir / remote.dest, progress=progress, force=force, report=report)
    raise WeightsError(f"Catalogue entry for {remote.dest} has neither a repo nor a URL.")


def _size_error(path: Path, got: int, expected: int, origin: str, models_dir: Path) -> DownloadError:
    return DownloadError(
        f"{path} is {got:,} bytes but {origin} says it should be {expected:,} bytes; the download "
        f"is incomplete or corrupt. Delete it and run again: {download_command(models_dir)}")


def _hub_file_metadata(remote: RemoteFile) -> tuple[int | None, str | None]:
    """(size, SHA-256) according to the Hub, or Nones when the Hub cannot be asked. The Hub publishes an LFS
    file's SHA-256 as its ETag; a small file kept in git has a git id there instead, and no SHA-256."""
    import huggingface_hub

    url = huggingface_hub.hf_hub_url(remote.repo_id, remote.repo_path, revision=remote.revision)
    try:
        metadata = huggingface_hub.get_hf_file_metadata(url)
    except Exception as exc:  # offline, gated, rate-limited...: decided by the caller
        logger.warning("Could not get the size of %s from the Hub: %s", remote.repo_path, exc)
        return None, None
    etag = str(getattr(metadata, "etag", "") or "").strip('"').lower()
    return metadata.size, etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None


def sha256_of(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _reporting_tqdm(report: Report, name: str, raised: list):
    """A tqdm class for ``hf_hub_download(tqdm_class=…)`` that also tells ``report`` how far the file is. What
    ``report`` raises (a host's Cancel) is kept in ``raised``: the download's own error handling must not turn
    it into a download failure."""
    from tqdm.auto import tqdm

    def tell(done, total):
        try:
            report(name, done, total)
        except BaseException as error:
            raised.append(error)
            raise

    class Reporting(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._done = int(kwargs.get("initial") or 0)
            tell(self._done, self.total)

        def update(self, n=1):
            self._done += int(n or 0)
            tell(self._done, self.total)
            return super().update(n)
    return Reporting


def _fetch_from_hub(remote: RemoteFile, models_dir: Path, *, progress: bool, force: bool,
                    report: Report | None = None) -> Path:
    from huggingface_hub import constants

    dest = models_dir / remote.dest
    # hf_hub_download puts repo_path below local_dir, so local_dir is dest minus that suffix;
    # a file stored under another name is fetched into a staging folder and moved.
    if remote.dest.endswith(remote.repo_path):
        local_dir = models_dir / remote.dest[: len(remote.dest) - len(remote.repo_path)]
    else:
        local_dir = models_dir / ".hub-staging" / remote.repo_id
    if dest.is_file() and not force and remote.size is not None and dest.stat().st_size == remote.size:
        logger.info("%s: already present (%s bytes)", remote.dest, f"{remote.size:,}")
        return dest
    if force or not dest.is_file():  # a present file is kept when the Hub cannot be asked about it
        _require_resolvable(constants.ENDPOINT, remote.repo_path, models_dir)
    with _one_line_per_retry(f"{remote.repo_path} from {remote.origin}"):
        return _hub_download(remote, models_dir, dest, local_dir, progress=progress, force=force, report=report)


def _hub_download(remote: RemoteFile, models_dir: Path, dest: Path, local_dir: Path, *,
                  progress: bool, force: bool, report: Report | None = None) -> Path:
    import huggingface_hub

    expected, sha256 = _hub_file_metadata(remote)
    if dest.is_file() and not force:
        if expected is None:
            logger.warning("%s: present but its size cannot be checked right now; keeping it.",
                           remote.dest)
            return dest
        if dest.stat().st_size == expected:
            logger.info("%s: already present (%s bytes)", remote.dest, f"{expected:,}")
            return dest
        logger.warning("%s: present with the wrong size (%s, expected %s); downloading it again.",
                       remote.dest, f"{dest.stat().st_size:,}", f"{expected:,}")
        force = True
    logger.info("Downloading %s from %s", remote.repo_path, remote.origin)
    bars_were_disabled = huggingface_hub.utils.are_progress_bars_disabled()
    if not progress:
        huggingface_hub.utils.disable_progress_bars()
    raised: list = []
    extra = {"tqdm_class": _reporting_tqdm(report, Path(remote.dest).name, raised)} if report is not None else {}
    try:
        path = Path(huggingface_hub.hf_hub_download(
            remote.repo_id, remote.repo_path, revision=remote.revision, local_dir=local_dir,
            force_download=force, **extra))
    except Exception as exc:
        if raised:   # the host stopped it (Cancel): the partial file stays and resumes next time
            raise raised[0] from None
        raise DownloadError(
            f"Could not download {remote.repo_path} from {remote.origin} into {local_dir}: {exc}\n"
            f"Check the network connection and run again (partial downloads resume): "
            f"{download_command(models_dir)}") from exc
    finally:
        if not progress and not bars_were_disabled:
            huggingface_hub.utils.enable_progress_bars()
    expected = expected if expected is not None else remote.size
    if expected is not None and path.stat().st_size != expected:
        raise _size_error(path, path.stat().st_size, expected, remote.origin, models_dir)
    if sha256 is not None and sha256_of(path) != sha256:
        path.unlink()
        raise DownloadError(
            f"The download of {remote.repo_path} from {remote.origin} does not match its published SHA-256 "
            f"({sha256}); it was deleted. Run again: {download_command(models_dir)}")
    if path != dest:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
    return dest


class _RetryRelay(logging.Handler):
    """Turns huggingface_hub's two warnings per retry ("'<error>' thrown while requesting ..." then
    "Retrying in Ns [Retry i/n].") into one line of ours; its other messages pass through once."""

    def __init__(self, what: str):
        super().__init__(logging.WARNING)
        self.what, self.problem = what, None

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if " thrown while requesting " in text:
            self.problem = text.split(" thrown while requesting ")[0].strip("'")
        elif text.startswith(("Retrying in", "Rate limited")):
            logger.warning("%s: %s; %s", self.what, self.problem or "request failed", text.rstrip("."))
            self.problem = None
        else:
            logger.log(record.levelno, "%s", text)


@contextlib.contextmanager
def _one_line_per_retry(what: str):
    """Route huggingface_hub's log through ``_RetryRelay`` for the duration of one file.

    The library logs through its own handler and the root logger's, so every line would appear twice."""
    import huggingface_hub.file_download  # noqa: F401  (importing it installs the library's handler: swap after)

    hub_logger = logging.getLogger("huggingface_hub")
    saved = hub_logger.handlers[:], hub_logger.propagate
    hub_logger.handlers[:] = [_RetryRelay(what)]
    hub_logger.propagate = False
    try:
        yield
    finally:
        hub_logger.handlers[:], hub_logger.propagate = saved


def _resolve(host: str) -> None:
    """Indirection so tests can replace the network: raises ``socket.gaierror`` if ``host`` has no address."""
    socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)


def _require_resolvable(url: str, what: str, models_dir: Path) -> None:
    """Fail at once, with one message, when the server's name does not resolve (no network, no DNS).

    Skipped behind a proxy: then the proxy resolves names, and this machine may not be able to."""
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        return
    proxies = urllib.request.getproxies()
    if ("https" in proxies or "all" in proxies) and not urllib.request.proxy_bypass(host):
        return
    try:
        _resolve(host)
    except socket.gaierror as exc:
        raise _unresolvable_error(host, what, models_dir, exc) from None


def _unresolvable_error(host: str, what: str, models_dir: Path, exc: socket.gaierror) -> DownloadError:
    return DownloadError(
        f"Cannot download {what}: the server name {host} does not resolve ({exc.strerror or exc}), so this "
        f"machine has no network connection or no working DNS.\nConnect to the network (behind a proxy, set "
        f"HTTPS_PROXY) and run again: {download_command(models_dir)}\nor copy the model files into {models_dir} "
        f"by hand (the README lists them).")


def git_blob_sha1(path: str | os.PathLike[str]) -> str:
    """The git object id of a file's content (what ``git hash-object`` prints)."""
    path = Path(path)
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_from_url(remote: RemoteFile, dest: Path, *, progress: bool, force: bool,
                    report: Report | None = None) -> Path:
    models_dir = dest.parent
    if dest.is_file() and not force:
        if _existing_file_ok(remote, dest):
            logger.info("%s: already present", remote.dest)
            return dest
        logger.warning("%s: present but does not match the expected file; downloading it again.",
                       remote.dest)
    logger.info("Downloading %s from %s", remote.dest, remote.url)
    http_download(remote.url, dest, expected_size=remote.size, progress=progress, report=report)
    if remote.git_blob_sha1 and git_blob_sha1(dest) != remote.git_blob_sha1:
        dest.unlink()
        raise DownloadError(
            f"The file downloaded from {remote.url} does not have the expected content (git blob "
            f"{remote.git_blob_sha1}); it was deleted. Run again: {download_command(models_dir)}")
    return dest


def _existing_file_ok(remote: RemoteFile, dest: Path) -> bool:
    if remote.size is not None and dest.stat().st_size != remote.size:
        return False
    if remote.git_blob_sha1 is not None:
        return git_blob_sha1(dest) == remote.git_blob_sha1
    return True


def _open_url(request: urllib.request.Request, timeout: float):
    """Indirection so tests can replace the network."""
    return urllib.request.urlopen(request, timeout=timeout)


_CHUNK = 1 << 20


def http_download(url: str, dest: str | os.PathLike[str], *, expected_size: int | None = None,
                  progress: bool = True, timeout: float = 60.0, report: Report | None = None) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a previous ``.part``.

    A partial ``.part`` file is continued with an HTTP Range request (servers that ignore
    the range restart from zero). The size is checked against ``Content-Length`` /
    ``Content-Range`` and ``expected_size``; the ``.part`` file is renamed only when complete.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "ComfyUI-RAIN"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = _open_url(urllib.request.Request(url, headers=headers), timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the .part already holds the whole file
            total = _total_from_content_range(exc.headers.get("Content-Range"))
            if total == offset:
                return _finish_part(part, dest, total, expected_size, url)
            part.unlink()
            return http_download(url, dest, expected_size=expected_size, progress=progress,
                                 timeout=timeout, report=report)
        raise DownloadError(f"Downloading {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        if isinstance(getattr(exc, "reason", None), socket.gaierror):
            raise _unresolvable_error(urllib.parse.urlsplit(url).hostname, dest.name, dest.parent,
                                      exc.reason) from None
        raise DownloadError(f"Downloading {url} failed: {describe_error(exc)}. Check the network connection and "
                            f"run again; the download will resume.") from exc
    with response:
        status = getattr(response, "status", None) or response.getcode()
        length = response.headers.get("Content-Length")
        if offset and status == 206:
            total = _total_from_content_range(response.headers.get("Content-Range"))
            if total is None and length is not None:
                total = offset + int(length)
            mode = "ab"
        else:
            offset, mode = 0, "wb"  # no range support: start again
            total = int(length) if length is not None else None
        with part.open(mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=dest.name,
                                         disable=not progress) as bar:
            try:
                done = offset
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
                    done += len(chunk)
                    if report is not None:
                        report(dest.name, done, total)
            except OSError as exc:
                raise DownloadError(f"Download of {url} was interrupted ({describe_error(exc)}); run again to "
                                    f"resume from {part.stat().st_size:,} bytes.") from exc
    return _finish_part(part, dest, total, expected_size, url)


def _total_from_content_range(value: str | None) -> int | None:
    # "bytes 100-199/200" or "bytes */200"
    match = re.search(r"/(\d+)\s*$", value or "")
    return int(match.group(1)) if match else None


def _finish_part(part: Path, dest: Path, total: int | None, expected_size: int | None,
                 url: str) -> Path:
    size = part.stat().st_size
    if total is not None and size < total:
        raise DownloadError(f"Download of {url} stopped at {size:,} of {total:,} bytes; run again "
                            f"to resume.")
    for want in (total, expected_size):
        if want is not None and size != want:
            part.unlink()
            raise DownloadError(
                f"The download of {dest.name} from {url} is {size:,} bytes but should be "
                f"{want:,} bytes; the partial file was deleted. Run again: "
                f"{download_command(dest.parent)}")
    os.replace(part, dest)
    return dest
