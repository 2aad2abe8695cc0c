"""How an exception is named inside a user-facing message: its type and its text (``OSError: [Errno 13]
Permission denied: 'x.png'``), never the text alone, which can be empty or say nothing without its type."""


def describe_error(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
