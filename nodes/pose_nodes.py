"""Pose nodes: DWPose landmarks (face / whole body) → POSE_KEYPOINT, the human→anime landmark transform, and
drawing POSE_KEYPOINT as pose images. onnxruntime is imported only when a detector node runs."""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import torch

from . import calibration, host

log = logging.getLogger("ComfyUI-RAIN")

CATEGORY = "RAIN/pose"
POSE_KEYPOINT = "POSE_KEYPOINT"
UNTRANSFORMED_KEY = "rain_face_untransformed"   # per person: the face before the transform (sets the dot radius)
CROP_KEY = "rain_crop"                          # per frame: the centre-square crop fraction the detector saw
MISSING_POLICIES = ["hold", "blank"]
PROVIDERS = ["auto", "cpu"]
DRAW_STYLES = ["face dots", "whole body"]
FACE_POINTS = 68
DEFAULT_DOT_RADIUS = 3  # when the chin or nose bridge is unseen (the official radius would be meaningless)


def _onnx_choices(kind: str) -> list[str]:
    names = [f for f in host.list_model_files() if f.lower().endswith(".onnx")]
    if kind == "detector":
        picked = [f for f in names if "yolox" in f.lower().rsplit("/", 1)[-1]]
    else:
        picked = [f for f in names if f.lower().rsplit("/", 1)[-1].startswith("dw")]
    return ["auto"] + picked


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


_detectors: "OrderedDict[tuple, object]" = OrderedDict()
MAX_DETECTORS = 2


def dwpose_paths(detector: str = "auto", pose_model: str = "auto"):
    """(detector, pose) ONNX paths: models/rain/dwpose/ (every models/rain folder), models/dwpose/ and
    comfyui_controlnet_aux's downloads. Raises the engine's message naming what to put where."""
    from ..rain.pose.model_files import locate_dwpose_models

    def choice(value):
        if value == "auto":
            return None
        path = host.model_file_path(value)
        return str(path) if path is not None else value.rsplit("/", 1)[-1]

    det, pose = choice(detector), choice(pose_model)
    roots = host.model_roots()
    # <ComfyUI>/models/rain first: the message names it as the place to put them (and the download command
    # for it), and comfyui_controlnet_aux's downloads are found from it; then every other models/rain folder.
    comfy_models = host.comfy_models_dir()
    home = comfy_models / host.MODEL_FOLDER if comfy_models is not None else (roots[0] if roots else None)
    extra = [d for r in roots if r != home for d in (r / "dwpose", r)]
    if comfy_models is not None:
        extra.append(comfy_models / "dwpose")
    return locate_dwpose_models(home, detector=det, pose=pose, extra_dirs=extra)


def get_detector(detector: str = "auto", pose_model: str = "auto", provider: str = "auto"):
    """An onnxruntime DWPose detector, kept for the next run (sessions are slow to create)."""
    from ..rain.pose.dwpose import DWPoseDetector, default_providers

    det_path, pose_path = dwpose_paths(detector, pose_model)
    key = (str(det_path), str(pose_path), provider)
    if key in _detectors:
        _detectors.move_to_end(key)
        return _detectors[key]
    providers = default_providers() if provider == "auto" else ["CPUExecutionProvider"]
    log.info("RAIN: DWPose %s + %s on %s", det_path.name, pose_path.name, providers[0])
    instance = DWPoseDetector.from_files(det_path, pose_path, providers=providers)
    _detectors[key] = instance
    while len(_detectors) > MAX_DETECTORS:
        _detectors.popitem(last=False)
    return instance


class _DWPoseNode:
    TASK = "face"
    RETURN_TYPES = (POSE_KEYPOINT,)
    RETURN_NAMES = ("pose_keypoint",)
    FUNCTION = "detect"
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Driving frames (a video's frames as an IMAGE batch)."}),
                "detector": (_onnx_choices("detector"), {"default": "auto", "tooltip": "YOLOX person detector "
                             "(models/rain/dwpose/). auto: the best one found, also in comfyui_controlnet_aux's "
                             "downloads."}),
                "pose_model": (_onnx_choices("pose"), {"default": "auto", "tooltip": "DWPose whole-body model "
                               "(dw-ll_ucoco_384.onnx, dw-mm_ucoco.onnx, ...)."}),
                "crop": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "0: use the "
                         "whole frame (stretched to a square for detection). >0: first crop a centred square of "
                         "this fraction of the short side (the official live demo uses 0.9)."}),
                "missing": (MISSING_POLICIES, {"default": "hold", "tooltip": "Frames where nothing is found: "
                            "hold the last landmarks (official) or leave them empty."}),
                "smoothing": ("BOOLEAN", {"default": False, "tooltip": "One-Euro filter against jitter "
                              "(off = official output)."}),
                "provider": (PROVIDERS, {"default": "auto", "tooltip": "auto: CUDA in onnxruntime when available."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def detect(self, images, detector, pose_model, crop, missing, smoothing, provider, unique_id=None):
        from ..rain.pose.driving import center_square_crop, check_frame
        from ..rain.pose.face_tracking import BodyKeypointTracker, FaceLandmarkTracker
        from ..rain.pose.keypoints import to_pose_keypoint_frame
        from ..rain.pose.skeleton import FACE
        from ..rain.pose.smoothing import OneEuroFilter

        if images.ndim != 4:
            raise ValueError(f"images must be an IMAGE batch [frames, H, W, C], got shape {list(images.shape)}")
        model = get_detector(detector, pose_model, provider)
        tracker_class = FaceLandmarkTracker if self.TASK == "face" else BodyKeypointTracker
        tracker = tracker_class(missing=missing, smoothing=OneEuroFilter() if smoothing else None)
        total = int(images.shape[0])
        progress = host.progress_bar(total, node_id=unique_id)
        frames = []
        for index in range(total):
            host.check_interrupted()
            frame = check_frame(_to_uint8(images[index]), index)
            if crop > 0:
                frame = center_square_crop(frame, float(crop))
            detection = model.detect(frame)
            points = tracker.update(detection)
            people = []
            if points is not None:
                if self.TASK == "face":
                    person = detection.normalised(tracker.score_threshold)
                    person[FACE] = points
                    people = [person]
                else:
                    people = [points]
            entry = to_pose_keypoint_frame(people, *frame.shape[:2])
            if crop > 0:
                entry[CROP_KEY] = float(crop)
            frames.append(entry)
            progress.update_absolute(index + 1, total)
        log.info("RAIN %s landmarks: %s", self.TASK, tracker.stats.summary())
        return (frames,)


class RainFaceLandmarks(_DWPoseNode):
    DESCRIPTION = ("Finds the 68 face landmarks of the (largest) person in every frame with DWPose. Points that "
                   "drop out are filled in from the previous frame, as the official RAIN demo does.")
    TASK = "face"


class RainWholeBodyPose(_DWPoseNode):
    DESCRIPTION = "Finds the whole-body keypoints (body, hands, face) of the (largest) person in every frame with DWPose."
    TASK = "body"


def _is_normalised(triples: np.ndarray) -> bool:
    seen = triples[triples[:, 2] > 0, :2]
    return len(seen) > 0 and bool(np.all(np.abs(seen) <= 1.0))


def _face_array(triples: np.ndarray, height: int, width: int, normalised: bool) -> np.ndarray:
    face = np.full((FACE_POINTS, 2), -1.0)
    seen = triples[:FACE_POINTS, 2] > 0
    scale = np.array([1.0, 1.0]) if normalised else np.array([float(width), float(height)])
    face[seen] = triples[:FACE_POINTS][seen, :2] / scale
    return face


def _face_triples(values) -> np.ndarray | None:
    if not values:
        return None
    triples = np.asarray(values, dtype=np.float64).reshape(-1, 3)
    if len(triples) < FACE_POINTS:
        triples = np.concatenate([triples, np.zeros((FACE_POINTS - len(triples), 3))])
    return triples


def untransformed_face(person: dict, height: int, width: int) -> np.ndarray | None:
    """The face a person entry had before the RAIN transform (or its face, if it was never transformed)."""
    triples = _face_triples(person.get(UNTRANSFORMED_KEY) or person.get("face_keypoints_2d"))
    if triples is None:
        return None
    return _face_array(triples, height, width, _is_normalised(triples))


class RainLandmarkTransform:
    DESCRIPTION = ("RAIN's human → anime face transform: stretches eyes, mouth, face length and jaw of the "
                   "landmarks so they fit a character. The preview in the node updates as you move a slider, over "
                   "a sample face, or over your frame once the graph has run (connect the driving frames to "
                   "'preview_images' to see them behind the landmarks).")
    CATEGORY = CATEGORY
    RETURN_TYPES = (POSE_KEYPOINT,)
    RETURN_NAMES = ("pose_keypoint",)
    FUNCTION = "transform"

    @classmethod
    def INPUT_TYPES(cls):
        from ..rain.pose.landmark_transform import DEMO_DEFAULTS, SLIDER_RANGES

        required = {
            "pose_keypoint": (POSE_KEYPOINT,),
            "preset": (list(calibration.PRESETS), {"default": "calibration", "tooltip": "calibration: the 13 "
                       "sliders below (demo defaults); startup: the official stream's fixed list (sliders "
                       "ignored); none: keep the human face."}),
        }
        defaults = DEMO_DEFAULTS.to_dict()
        for name, (low, high, step) in SLIDER_RANGES.items():
            required[name] = ("FLOAT", {"default": defaults[name], "min": low, "max": high, "step": step,
                                        "display": "slider", "round": step})
        return {"required": required,
                "optional": {"preview_images": ("IMAGE", {"tooltip": "Only for the calibration preview: the "
                                                          "driving frames the landmarks came from."})},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    def transform(self, pose_keypoint, preset, preview_images=None, unique_id=None, **params):
        from ..rain.pose.keypoints import load_pose_keypoint
        from ..rain.pose.landmark_transform import apply_translations

        translations = calibration.translations_for(preset, params)
        out, seen = [], None
        for index, frame in enumerate(load_pose_keypoint(pose_keypoint)):
            if index % 64 == 0:
                host.check_interrupted()
            height, width = int(frame["canvas_height"]), int(frame["canvas_width"])
            people = []
            for person in frame.get("people") or []:
                person = dict(person)
                triples = _face_triples(person.get("face_keypoints_2d"))
                if triples is not None and (triples[:FACE_POINTS, 2] > 0).any():
                    normalised = _is_normalised(triples)
                    face = _face_array(triples, height, width, normalised)
                    if seen is None:
                        seen = calibration.SeenFrame(face.copy(), None, index)
                    moved = apply_translations(face, translations)
                    scale = np.array([1.0, 1.0]) if normalised else np.array([float(width), float(height)])
                    new = triples.copy()
                    visible = new[:FACE_POINTS, 2] > 0
                    new[:FACE_POINTS][visible, :2] = moved[visible] * scale
                    person.setdefault(UNTRANSFORMED_KEY, person["face_keypoints_2d"])
                    person["face_keypoints_2d"] = new.reshape(-1).tolist()
                people.append(person)
            out.append({**frame, "people": people})
        if seen is not None:
            if preview_images is not None and len(preview_images) > 0:
                image = _to_uint8(preview_images[min(seen.frame_index, len(preview_images) - 1)])
                crop = out[seen.frame_index].get(CROP_KEY)
                if crop:
                    from ..rain.pose.driving import center_square_crop
                    image = center_square_crop(image, float(crop))
                seen.image = image
            calibration.remember(unique_id, seen)
        return {"ui": {"rain_calibration": [{"frame": None if seen is None else seen.frame_index}]},
                "result": (out,)}


class RainDrawPose:
    DESCRIPTION = ("Draws POSE_KEYPOINT as the pose images RAIN is driven by: RAIN's coloured face dots (of the "
                   "largest person), or an OpenPose-style whole-body skeleton (everyone).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("pose_images",)
    FUNCTION = "draw"

    @classmethod
    def INPUT_TYPES(cls):
        size = {"min": 64, "max": 4096, "step": 8}
        return {"required": {
            "pose_keypoint": (POSE_KEYPOINT,),
            "style": (DRAW_STYLES, {"default": "face dots", "tooltip": "face dots: RAIN's 26 coloured dots (the "
                      "released checkpoints); whole body: OpenPose-style body, hands and face."}),
            "width": ("INT", {"default": 512, **size, "tooltip": "Pose image width (the sampler's frame size)."}),
            "height": ("INT", {"default": 512, **size}),
        }}

    def draw(self, pose_keypoint, style, width, height):
        from ..rain.pose.keypoints import largest_person, load_pose_keypoint, read_pose_keypoint
        from ..rain.pose.render import face_dot_radius, render_face_pose, render_wholebody_pose
        from ..rain.pose.skeleton import FACE

        if style not in DRAW_STYLES:
            raise ValueError(f"style must be one of {DRAW_STYLES}, got {style!r}")
        raw = load_pose_keypoint(pose_keypoint)
        images = []
        for index, (entry, frame) in enumerate(zip(raw, read_pose_keypoint(raw))):
            if index % 64 == 0:
                host.check_interrupted()
            if style == "whole body":
                images.append(render_wholebody_pose(frame.people, height, width))
                continue
            # RAIN is driven by one face: the largest person's, as the detector picks it.
            canvas = np.zeros((height, width, 3), np.uint8)
            index = largest_person(frame)
            face = frame.people[index][FACE] if index is not None else None
            if face is not None and not np.all(face < 0):
                original = untransformed_face(entry["people"][index], *frame.canvas_size)
                sizing = original if original is not None else face
                radius = face_dot_radius(sizing) if np.all(sizing[[8, 27]] >= 0) else DEFAULT_DOT_RADIUS
                render_face_pose(face, None, height, width, radius=radius, canvas=canvas)
            images.append(canvas)
        if not images:
            raise ValueError("POSE_KEYPOINT holds no frames")
        return (torch.from_numpy(np.stack(images)).float().div_(255.0),)


NODE_CLASS_MAPPINGS = {
    "RAIN_FaceLandmarks": RainFaceLandmarks,
    "RAIN_WholeBodyPose": RainWholeBodyPose,
    "RAIN_LandmarkTransform": RainLandmarkTransform,
    "RAIN_DrawPose": RainDrawPose,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RAIN_FaceLandmarks": "RAIN Face Landmarks (DWPose)",
    "RAIN_WholeBodyPose": "RAIN Whole-Body Pose (DWPose)",
    "RAIN_LandmarkTransform": "RAIN Face Landmark Transform",
    "RAIN_DrawPose": "Draw RAIN Pose",
}
