"""ComfyUI nodes of the RAIN pack. Thin: each node converts ComfyUI types and calls the engine in ``rain/``.

Imported only as a subpackage of the pack (``from .nodes import ...``): ComfyUI has its own top-level ``nodes``
module, so nothing here may be imported as top-level ``nodes``. Every call into ComfyUI goes through ``host``.
"""

from . import (calibration, depth_nodes, engine_nodes, farm_nodes, host, live_nodes, model_nodes, pose_nodes,
               render_nodes, tooltips)

NODE_CLASS_MAPPINGS = {**model_nodes.NODE_CLASS_MAPPINGS, **engine_nodes.NODE_CLASS_MAPPINGS,
                       **pose_nodes.NODE_CLASS_MAPPINGS, **depth_nodes.NODE_CLASS_MAPPINGS,
                       **live_nodes.NODE_CLASS_MAPPINGS, **render_nodes.NODE_CLASS_MAPPINGS,
                       **farm_nodes.NODE_CLASS_MAPPINGS}
NODE_DISPLAY_NAME_MAPPINGS = {**model_nodes.NODE_DISPLAY_NAME_MAPPINGS, **engine_nodes.NODE_DISPLAY_NAME_MAPPINGS,
                              **pose_nodes.NODE_DISPLAY_NAME_MAPPINGS, **depth_nodes.NODE_DISPLAY_NAME_MAPPINGS,
                              **live_nodes.NODE_DISPLAY_NAME_MAPPINGS, **render_nodes.NODE_DISPLAY_NAME_MAPPINGS,
                              **farm_nodes.NODE_DISPLAY_NAME_MAPPINGS}
for _node in NODE_CLASS_MAPPINGS.values():
    tooltips.apply(_node)


def setup() -> None:
    """Once per import by the host: register models/rain (merging with user paths) and the HTTP routes."""
    host.register_model_folder()
    calibration.register_routes()
    live_nodes.register_routes()
