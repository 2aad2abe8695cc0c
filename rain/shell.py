"""Commands suggested in messages, written so that the user can paste them into the shell they have.

POSIX shells take ``shlex.quote``'s single quotes; cmd.exe and PowerShell do not (a single-quoted path is a
literal with quotes in it for cmd.exe), and both take double quotes around an argument with spaces. The Python
that runs us is named by its full path when it is not a plain ``python`` on PATH: ComfyUI's Windows portable
build runs ``python_embeded\\python.exe``, whose ``._pth`` file ignores the current folder, so ``python -m rain``
only works there through the pack's launcher script (``rain_cli.py`` beside this package's folder).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

#: The launcher at the top of the pack's folder (a clone); absent from an installed wheel.
LAUNCHER = Path(__file__).resolve().parent.parent / "rain_cli.py"


def is_windows(platform: str | None = None) -> bool:
    return (platform or os.name) == "nt"


def quote(argument: str, *, windows: bool | None = None) -> str:
    """``argument`` quoted for the user's shell: POSIX quoting, or double quotes for cmd.exe / PowerShell."""
    text = str(argument)
    if not (is_windows() if windows is None else windows):
        return shlex.quote(text)
    if text and not any(c in text for c in ' \t&()[]{}^=;!\'+,`~%$@"<>|'):
        return text
    # cmd.exe has no escape for a double quote inside double quotes; such paths cannot occur on Windows (NTFS
    # refuses '"' in names), so doubling it is only for the odd argument that is not a path.
    return '"' + text.replace('"', '""') + '"'


def command(*arguments: str, windows: bool | None = None) -> str:
    return " ".join(quote(str(a), windows=windows) for a in arguments)


def embedded_python(executable: str | None = None) -> bool:
    """True for an interpreter with a ``._pth`` file beside it (the Windows embeddable package that ComfyUI's
    portable build ships): the current folder is not on its import path."""
    folder = Path(executable or sys.executable).parent
    try:
        return any(p.suffix == "._pth" or p.name.endswith("._pth") for p in folder.iterdir())
    except OSError:
        return False


def python_command(*, windows: bool | None = None, executable: str | None = None) -> str:
    """How to start the Python that runs us: ``python`` when that is what a user types, else its full path."""
    executable = executable or sys.executable
    return quote(executable, windows=windows) if embedded_python(executable) else "python"


def rain_command(*arguments: str, windows: bool | None = None, executable: str | None = None) -> str:
    """``python -m rain ARGS`` for this interpreter; the launcher script where ``-m rain`` cannot work."""
    executable = executable or sys.executable
    if embedded_python(executable) and LAUNCHER.is_file():
        head = f"{quote(executable, windows=windows)} {quote(str(LAUNCHER), windows=windows)}"
    else:
        head = f"{python_command(windows=windows, executable=executable)} -m rain"
    return " ".join([head, *(quote(str(a), windows=windows) for a in arguments)])


def pip_command(*arguments: str, windows: bool | None = None, executable: str | None = None) -> str:
    """``python -m pip install …`` for this interpreter (``python_embeded\\python.exe -m pip`` on the portable
    build, where a bare ``pip`` installs into another Python)."""
    return " ".join([python_command(windows=windows, executable=executable), "-m", "pip",
                     *(quote(str(a), windows=windows) for a in arguments)])


def tolerant_console() -> None:
    """Never crash on printing: a Windows console or a pipe in a legacy code page (cp1252, cp437) cannot encode
    '→' or '×'; such characters are printed as '?' instead of raising UnicodeEncodeError mid-command."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding in ("utf8", "utf_8") or not hasattr(stream, "reconfigure"):
            continue
        try:
            stream.reconfigure(errors="replace")
        except (ValueError, OSError):   # a closed or detached stream: nothing will be printed there anyway
            pass
