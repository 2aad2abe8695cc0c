"""DWPose whole-body detection on onnxruntime (spec section 8): YOLOX person box -> DWPose SimCC keypoints.

RAIN-specific choices, kept from the official code:

* every frame is first **stretched** to the detection size (512x512 by default) with PIL bilinear, aspect not
  preserved (pitfall 15; crop a centred square first if that matters, see :mod:`rain.pose.driving`);
* the YOLOX input is the RGB frame without normalisation (pitfall 18);
* of several people only the **largest** box is used; with no person the whole image is the box.

Model input sizes come from the ONNX files.  Providers: CUDA when onnxruntime offers it, else CPU.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from . import wholebody, yolox
from .model_files import locate_dwpose_models
from .skeleton import FACE, WHOLEBODY_POINTS

DEFAULT_DETECTION_SIZE = (512, 512)  # (H, W), hard-coded in the official morpher
_DEFAULT_DETECTOR_INPUT = (640, 640)
_DEFAULT_POSE_INPUT = (256, 192)     # (H, W) when an ONNX file leaves it symbolic


def onnxruntime_module():
    """onnxruntime (any build: CPU, -gpu, -directml …), or one message saying how to get it."""
    from ..optional import import_optional
    return import_optional("onnxruntime", "DWPose (face and body keypoints)")


def default_providers(*, tensorrt: bool = False, engine_cache: "str | os.PathLike | None" = None) -> list:
    """onnxruntime providers to use: TensorRT (only if asked; fp16, its engines cached in ``engine_cache``),
    CUDA when available (onnxruntime-gpu), always CPU last."""
    ort = onnxruntime_module()

    available = set(ort.get_available_providers())
    providers: list = []
    if tensorrt and "TensorrtExecutionProvider" in available:
        options = {"trt_fp16_enable": True}
        if engine_cache is not None:
            options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(engine_cache))
        providers.append(("TensorrtExecutionProvider", options))
    if "CUDAExecutionProvider" in available:
        providers.append("CUDAExecutionProvider")
    return providers + ["CPUExecutionProvider"]


class StageTimes:
    """Accumulated wall time per named stage (for benchmarks); cheap enough to leave on."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.calls[name] = self.calls.get(name, 0) + 1

    def milliseconds_per_call(self) -> dict[str, float]:
        return {k: 1000.0 * v / max(self.calls[k], 1) for k, v in self.seconds.items()}


class OnnxModel:
    """An onnxruntime session plus what the runner needs to know about its input."""

    def __init__(self, model: "str | os.PathLike | bytes", providers: Sequence[str] | None = None):
        ort = onnxruntime_module()
        source = model if isinstance(model, bytes) else str(model)
        options = ort.SessionOptions()
        # Idle worker threads would otherwise spin after each call and steal the CPU from the NumPy pre/post
        # processing (and the rest of the pipeline) that runs between calls.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(source, sess_options=options,
                                            providers=list(providers or default_providers()))
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.output_names = [o.name for o in self.session.get_outputs()]
        shape = list(first.shape)
        if len(shape) != 4:
            raise ValueError(f"expected an NCHW image input, {self.input_name!r} has shape {shape}")
        # A symbolic (str) or missing dimension means the model accepts any size there.
        self.fixed_batch: int | None = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.input_hw: tuple[int | None, int | None] = tuple(d if isinstance(d, int) and d > 0 else None
                                                             for d in shape[2:])  # type: ignore[assignment]
        self.dtype = np.float16 if "float16" in first.type else np.float32

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run on ``[N, C, H, W]``: in one call when the batch axis is dynamic, else in chunks of the fixed size
        (the last chunk padded by repeating its last item)."""
        batch = np.ascontiguousarray(batch, dtype=self.dtype)
        if self.fixed_batch is None or self.fixed_batch == len(batch):
            return [np.asarray(o) for o in self.session.run(self.output_names, {self.input_name: batch})]
        size, pieces = self.fixed_batch, []
        for start in range(0, len(batch), size):
            chunk = batch[start:start + size]
            real = len(chunk)
            if real < size:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - real, axis=0)])
            outs = self.session.run(self.output_names, {self.input_name: chunk})
            pieces.append([np.asarray(o)[:real] for o in outs])
        return [np.concatenate(parts) for parts in zip(*pieces)]


@dataclass
class PoseDetection:
    """Whole-body result for one frame, in pixels of the detection image (134-point :mod:`skeleton` layout)."""

    keypoints: np.ndarray            # [134, 2] float64 pixels
    scores: np.ndarray               # [134] float64
    box: np.ndarray | None           # xyxy of the person used; None = nobody found, the whole image was used
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # every person box found
    image_size: tuple[int, int] = DEFAULT_DETECTION_SIZE                 # (H, W) of the detection image

    @property
    def person_found(self) -> bool:
        return self.box is not None

    def normalised(self, threshold: float = wholebody.VISIBLE_SCORE) -> np.ndarray:
        """[134, 2] in [0, 1] units of the detection image; points scoring below ``threshold`` are (-1, -1).
        Divides first, then masks - the official order."""
        height, width = self.image_size
        points = self.keypoints.astype(np.float64, copy=True)
        points[:, 0] /= float(width)
        points[:, 1] /= float(height)
        points[self.scores < threshold] = -1.0
        return points

    def face(self, threshold: float = wholebody.VISIBLE_SCORE) -> np.ndarray:
        """The 68 face points, normalised, (-1, -1) where not visible (no temporal fill-in here)."""
        return self.normalised(threshold)[FACE]


class DWPoseDetector:
    """YOLOX + DWPose on onnxruntime.  Stateless: temporal fill-in lives in :mod:`rain.pose.face_tracking`."""

    def __init__(self, detector: OnnxModel, pose: OnnxModel, *,
                 detection_size: tuple[int, int] | None = DEFAULT_DETECTION_SIZE,
                 stage_times: StageTimes | None = None):
        self.detector, self.pose = detector, pose
        self.detection_size = detection_size
        self.stage_times = stage_times
        self.detector_input = tuple(d or f for d, f in zip(detector.input_hw, _DEFAULT_DETECTOR_INPUT))
        self.pose_input = tuple(d or f for d, f in zip(pose.input_hw, _DEFAULT_POSE_INPUT))  # (H, W)

    @classmethod
    def from_files(cls, detector_path: "str | os.PathLike | bytes", pose_path: "str | os.PathLike | bytes", *,
                   providers: Sequence[str] | None = None, **kwargs) -> "DWPoseDetector":
        """Open the two ONNX files (or serialized models)."""
        return cls(OnnxModel(detector_path, providers), OnnxModel(pose_path, providers), **kwargs)

    @classmethod
    def from_models_dir(cls, models_dir: "str | os.PathLike | None", *, detector: str | None = None,
                        pose: str | None = None, providers: Sequence[str] | None = None,
                        extra_dirs: Sequence["str | os.PathLike"] = (), **kwargs) -> "DWPoseDetector":
        """Find the files (``<models>/dwpose/``, comfyui_controlnet_aux's ckpts, ``extra_dirs``) and open them.
        Raises :class:`~rain.pose.model_files.DWPoseModelsNotFound` with instructions when they are missing."""
        det_path, pose_path = locate_dwpose_models(models_dir, detector=detector, pose=pose, extra_dirs=extra_dirs)
        return cls.from_files(det_path, pose_path, providers=providers, **kwargs)

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        if self.stage_times is None:
            yield
        else:
            with self.stage_times.stage(name):
                yield

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """Stretch an RGB uint8 frame to the detection size (PIL bilinear, as the official torchvision Resize on a
        PIL image); unchanged when it already has that size or ``detection_size`` is None."""
        if self.detection_size is None or frame.shape[:2] == tuple(self.detection_size):
            return np.ascontiguousarray(frame)
        height, width = self.detection_size
        return np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))

    def find_person(self, image: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """(largest person box or None, all person boxes) for a detection-size image."""
        with self._stage("detector_pre"):
            canvas, ratio = yolox.letterbox(image, self.detector_input)
            net_input = yolox.to_network_input(canvas)
        with self._stage("detector_run"):
            raw = self.detector.run(net_input)[0]
        with self._stage("detector_post"):
            boxes = yolox.person_boxes(raw[0], self.detector_input, ratio)
            return yolox.largest_box(boxes), boxes

    def find_people(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray | None, np.ndarray]]:
        """:meth:`find_person` for several images, the detector run once on all of them (in chunks when its
        batch size is fixed): on a GPU one launch per group of frames instead of one per frame."""
        with self._stage("detector_pre"):
            prepared = [yolox.letterbox(image, self.detector_input) for image in images]
            batch = np.concatenate([yolox.to_network_input(canvas) for canvas, _ in prepared])
        with self._stage("detector_run"):
            raw = self.detector.run(batch)[0]
        with self._stage("detector_post"):
            found = []
            for index, (_, ratio) in enumerate(prepared):
                boxes = yolox.person_boxes(raw[index], self.detector_input, ratio)
                found.append((yolox.largest_box(boxes), boxes))
            return found

    def detect(self, frame: np.ndarray) -> PoseDetection:
        """Detect the (largest) person's 134 whole-body keypoints in one RGB uint8 frame of any size."""
        return self.detect_batch([frame])[0]

    def detect_batch(self, frames: Sequence[np.ndarray]) -> list[PoseDetection]:
        """Like :meth:`detect` for several frames; the pose model sees them as one batch when it allows it."""
        if len(frames) == 0:
            return []
        with self._stage("resize"):
            images = [self.prepare(f) for f in frames]
        found = self.find_people(images)
        pose_h, pose_w = self.pose_input
        with self._stage("pose_pre"):
            crops = [wholebody.crop_for_pose(image, box, (pose_w, pose_h)) for image, (box, _) in zip(images, found)]
            batch = np.stack([c[0] for c in crops])
        with self._stage("pose_run"):
            outputs = self.pose.run(batch)
        with self._stage("pose_post"):
            simcc_x, simcc_y = self._simcc(outputs)
            locations, scores = wholebody.decode_simcc(simcc_x, simcc_y)
            points = np.stack([wholebody.back_project(loc, centre, scale, (pose_w, pose_h))
                               for loc, (_, centre, scale) in zip(locations, crops)])
            keypoints, scores = wholebody.to_openpose_layout(points, scores)
        return [PoseDetection(keypoints[i], scores[i], box, boxes, image.shape[:2])
                for i, (image, (box, boxes)) in enumerate(zip(images, found))]

    def _simcc(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        names = self.pose.output_names
        if "simcc_x" in names and "simcc_y" in names:
            return outputs[names.index("simcc_x")], outputs[names.index("simcc_y")]
        return outputs[0], outputs[1]


def empty_detection(image_size: tuple[int, int] = DEFAULT_DETECTION_SIZE) -> PoseDetection:
    """A detection with nothing visible (all scores 0) - e.g. for a frame that could not be processed."""
    return PoseDetection(np.full((WHOLEBODY_POINTS, 2), -1.0), np.zeros(WHOLEBODY_POINTS), None,
                         np.zeros((0, 4)), image_size)
