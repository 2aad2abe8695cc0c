"""Live sessions: a camera (a browser page, a local camera) drives the stream and the animated frames go back to
the page, an OBS browser source or a virtual camera, with a bounded queue so latency never grows.

``session``: the engine side (queue, pose stage, worker, subscribers, stats); ``protocol``: the websocket
messages; ``server``: the aiohttp routes shared by ComfyUI and the standalone server; ``standalone``:
``python -m rain live``. Nothing here imports ComfyUI.
"""
