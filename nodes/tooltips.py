"""Tooltips for inputs that mean the same on every node that has them (the sampler's window, DWPose choices,
the 13 face-calibration sliders…), so each says what it does, its unit and its trade-off once, identically
everywhere. A node's own tooltip, where it has one, wins."""

from __future__ import annotations

_SLIDER = ("Face calibration (human→anime), applied to the detected landmarks before RAIN draws its face dots. ")

SHARED = {
    "rain_model": "The RAIN model set from Load RAIN Model (denoiser, reference UNet, pose guider, decoders).",
    "reference": "The character, fused once by Fuse RAIN Reference; a new image re-fuses, the same one is reused.",
    "latents": "Clean latents from RAIN Stream Sampler's LATENT output (4 channels, 1/8 of the frame size).",
    "pose_keypoint": "Keypoints per frame in comfyui_controlnet_aux's POSE_KEYPOINT format (from the RAIN "
                     "landmark/pose nodes or another pack).",
    "seed": "Seed of the stream's noise. The same seed, inputs and settings give the same frames; a resumed "
            "render needs the seed it started with.",
    "frames_per_group": "Frames per noise level in the 16-frame window (4 as trained). Fewer: lower latency and "
                        "a shorter window (less temporal consistency); each UNet call finishes this many frames.",
    "num_groups": "Noise levels in the window (4 as trained). Fewer: faster warm-up and lower latency, rougher "
                  "frames; the window holds frames_per_group × num_groups frames.",
    "steps_per_group": "LCM steps per noise level (1 as distilled: one UNet call per group). More: slower, "
                       "rarely better with the distilled weights.",
    "guidance_scale": "Guidance the distilled model was trained to take (2.5 face, 3.5 style transfer). Higher "
                      "follows the reference more strongly, with harsher colours; free in speed.",
    "temporal_strength": "Weight of the motion modules (1 as trained). Below 1: frames flicker more but follow "
                         "the pose faster; above 1: smoother, slower to react.",
    "height": "Frame height in pixels (multiple of 8). A model set that declares its size (make-tiny-models) "
              "renders at that many pixels instead. Larger costs memory and time with the pixel count.",
    "width": "Frame width in pixels (multiple of 8); see height.",
    "decoder": "taesdv: the tiny temporal decoder, fast and steady across frames (live, long videos); vae: the "
               "SD VAE, sharper and several times slower, frame by frame.",
    "missing": "Frames where DWPose finds no face/person: hold the last landmarks (smooth), or blank (no dots).",
    "detector": "DWPose person detector (YOLOX ONNX) in models/rain/dwpose; auto picks yolox_l.onnx.",
    "pose_model": "DWPose whole-body keypoint model (ONNX) in models/rain/dwpose; auto picks dw-ll_ucoco_384.",
    "provider": "Where DWPose runs: auto = the GPU when onnxruntime-gpu is installed, else the CPU; cpu keeps "
                "the GPU free for RAIN.",
    "format": "Output file type: mp4 (H.264, plays everywhere, resumable), webm, mkv, gif (not resumable) or "
              "png frames.",
    "skip_first_frames": "Driving-video frames to skip at the start (frames, not seconds).",
    "preview_frames": "How many evenly spaced frames the IMAGE output holds (0: none); the video file always "
                      "holds every frame. More costs memory.",
    "depth_model": "Depth estimator folder inside models/rain for the depth task (auto: depth_estimator/); "
                   "train and animate with the same one.",
    "preset": "Face transform: calibration (the 13 sliders below), startup (the official morpher's start-up "
              "values), none (landmarks as detected).",
    "face_length_ratio": _SLIDER + "Face length ×ratio (0.75: a shorter anime face). Lower: rounder face.",
    "eye_height_ratio": _SLIDER + "Eye opening ×ratio (3.0: big anime eyes). Higher: taller eyes.",
    "eye_width_ratio": _SLIDER + "Eye width ×ratio (1.6). Higher: wider eyes.",
    "mouth_height_ratio": _SLIDER + "Mouth opening ×ratio (1.2). Higher: the mouth opens more when you talk.",
    "mouth_width_ratio": _SLIDER + "Mouth width ×ratio (0.67: a small anime mouth).",
    "jaw_width_ratio": _SLIDER + "Jaw width ×ratio (0.9). Lower: a narrower chin.",
    "eye_horizontal_correction": _SLIDER + "Moves the eyes sideways, as a fraction of the face width.",
    "eye_distance_correction": _SLIDER + "Spreads (+) or narrows (−) the eyes, as a fraction of the face width.",
    "eye_vertical_correction": _SLIDER + "Moves the eyes up (+) or down (−), as a fraction of the face height.",
    "mouth_horizontal_correction": _SLIDER + "Moves the mouth sideways, as a fraction of the face width.",
    "mouth_vertical_correction": _SLIDER + "Moves the mouth up (+) or down (−), as a fraction of the face height.",
    "nose_horizontal_correction": _SLIDER + "Moves the nose sideways, as a fraction of the face width.",
    "nose_vertical_correction": _SLIDER + "Moves the nose up (+) or down (−), as a fraction of the face height.",
}


def with_tooltips(input_types: dict) -> dict:
    """``INPUT_TYPES()``'s result with a shared tooltip on every input that has none of its own."""
    for group in ("required", "optional"):
        for name, spec in input_types.get(group, {}).items():
            if name not in SHARED:
                continue
            options = dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if not options.get("tooltip"):
                options["tooltip"] = SHARED[name]
                input_types[group][name] = (spec[0], options, *spec[2:])
    return input_types


def apply(node_class) -> None:
    """Make ``node_class.INPUT_TYPES`` fill in the shared tooltips (called once per class at import)."""
    original = node_class.INPUT_TYPES.__func__

    def input_types(cls):
        return with_tooltips(original(cls))
    node_class.INPUT_TYPES = classmethod(input_types)
