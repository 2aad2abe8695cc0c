"""Live sessions: a camera (a browser page, a local camera) drives the stream and the animated frames go back to
the page, an OBS browser source or a virtual camera, with a bounded queue so latency never grows.

``session``: the engine side (newest-frame-wins queue, worker, subscribers) with ``pose_stage`` (camera frame →
pose image per task) and ``stats``; ``protocol``: the websocket messages and what a route accepts; ``server``:
the aiohttp routes shared by ComfyUI and the standalone server (paths in ``routes``); ``devices``: an OpenCV camera
and a virtual camera; ``standalone``: ``python -m rain live``; ``static/``: the panel and viewer pages. Nothing
here imports ComfyUI.
"""
