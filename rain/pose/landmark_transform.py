"""Human -> anime landmark transform (RAIN spec section 9), as plain data plus one pure function.

A face is a float64 array ``[68, 2]`` of (x, y) in normalised image coordinates (x right, y down, [0, 1]) in iBUG-68
order; a point the detector could not see is ``(-1, -1)``.  A :class:`Translation` rescales / shifts one slice of
the face in a frame aligned with two of its own points; a list of translations is applied in order, each one seeing
the result of the previous ones (including the distances it uses as its unit length).

Two lists exist in the official code and they differ (pitfall 20): :data:`STARTUP_TRANSLATIONS`, what the streaming
morpher uses until a calibration slider is touched, and the 17-row list that :func:`calibration_translations` builds
from the 13 "Face Calibration" parameters.  Pick one explicitly; :data:`TRANSLATION_PRESETS` names them for UIs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Iterable, Mapping, Sequence

import numpy as np

FACE_POINTS = 68
MISSING = -1.0  # the detector's marker for an unseen point (both coordinates)


@dataclass(frozen=True)
class Translation:
    """One step of the transform, applied to ``landmarks[lindex:rindex]``.

    ``xaxis`` = (a, b): indices *local to the slice*; the step works in the frame whose x axis points from slice
    point a to slice point b.  ``relative_length`` = (i, j): indices into the *whole* face; the transitions are
    multiples of |p_i - p_j| measured on the current (already partly transformed) face, else of 1.0.
    """

    lindex: int
    rindex: int
    horizontal_scale: float = 1.0
    vertical_scale: float = 1.0
    horizontal_transition: float = 0.0
    vertical_transition: float = 0.0
    xaxis: tuple[int, int] | None = None
    relative_length: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        # Lists arrive from JSON / UI code; normalise pairs to tuples so instances stay hashable and comparable.
        for name in ("xaxis", "relative_length"):
            value = getattr(self, name)
            if value is not None:
                if len(value) != 2:
                    raise ValueError(f"Translation.{name} must be a pair of indices, got {value!r}")
                object.__setattr__(self, name, (int(value[0]), int(value[1])))
        if not 0 <= self.lindex < self.rindex <= FACE_POINTS:
            raise ValueError(f"Translation slice [{self.lindex}:{self.rindex}] is not inside the 68-point face")

    def to_dict(self) -> dict:
        """JSON-ready dict (pairs as lists), the layout of ``golden/landmarks/landmarks.json``."""
        data = asdict(self)
        for name in ("xaxis", "relative_length"):
            if data[name] is not None:
                data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> "Translation":
        """Inverse of :meth:`to_dict`; unknown keys are an error (typos should not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown Translation keys {sorted(unknown)}; expected some of {sorted(known)}")
        return cls(**dict(data))


def missing_points(landmarks: np.ndarray) -> np.ndarray:
    """Boolean ``[N]`` mask of points marked missing by the detector (both coordinates exactly -1)."""
    points = np.asarray(landmarks)
    return np.all(points == MISSING, axis=-1)


def _apply_one(face: np.ndarray, step: Translation) -> None:
    """Apply one translation in place.  The order of float64 operations follows the official code so that
    results agree to rounding (golden tolerance 1e-9)."""
    part = face[step.lindex:step.rindex]
    rotate = step.xaxis is not None
    if rotate:
        a, b = step.xaxis
        theta = math.atan2(part[b, 1] - part[a, 1], part[b, 0] - part[a, 0])
        cos_t, sin_t = math.cos(theta), math.sin(theta)
        # Row vectors times this matrix rotate by -theta, i.e. into the slice's own axis-aligned frame.
        to_local = np.array([[cos_t, -sin_t], [sin_t, cos_t]])
    unit = 1.0
    if step.relative_length is not None:
        i, j = step.relative_length
        unit = np.linalg.norm(face[i] - face[j])
    centre = part.mean(axis=0)
    local = part - centre
    if rotate:
        local = local @ to_local
    local[:, 0] = local[:, 0] * step.horizontal_scale + step.horizontal_transition * unit
    local[:, 1] = local[:, 1] * step.vertical_scale + step.vertical_transition * unit
    if rotate:
        local = local @ to_local.T
    face[step.lindex:step.rindex] = centre + local


def apply_translations(landmarks: np.ndarray, translations: Iterable[Translation], *,
                       keep_missing: bool = True) -> np.ndarray:
    """Return a new ``[68, 2]`` float64 face with ``translations`` applied sequentially.

    Missing points take part in the slice means and rotation axes exactly as in the official code (so the points
    around a missing one move too).  ``keep_missing=True`` (default) then writes the points that were missing on
    input back to (-1, -1): the translations could otherwise carry them to positive, drawable coordinates
    (pitfall 19).  ``keep_missing=False`` returns the official arithmetic untouched, missing points included.
    """
    face = np.array(landmarks, dtype=np.float64, copy=True)
    if face.shape != (FACE_POINTS, 2):
        raise ValueError(f"landmarks must have shape (68, 2), got {face.shape}")
    was_missing = missing_points(face)
    for step in translations:
        _apply_one(face, step)
    if keep_missing and was_missing.any():
        face[was_missing] = MISSING
    return face


# --- the official start-up list (spec 9.1) -------------------------------------------------------------------

STARTUP_TRANSLATIONS: tuple[Translation, ...] = (
    Translation(0, 68, vertical_scale=0.75, xaxis=(2, 14)),
    Translation(36, 42, horizontal_scale=1.6, vertical_scale=3.0, xaxis=(0, 3)),
    Translation(42, 48, horizontal_scale=1.6, vertical_scale=3.0, xaxis=(0, 3)),
    Translation(60, 68, horizontal_scale=0.67, vertical_scale=1.2, xaxis=(0, 4)),
    Translation(36, 42, horizontal_transition=0.1, xaxis=(0, 3), relative_length=(33, 13)),
    Translation(42, 48, horizontal_transition=0.15, xaxis=(0, 3), relative_length=(33, 13)),
    Translation(36, 42, horizontal_transition=-0.15, xaxis=(0, 3), relative_length=(33, 3)),
    Translation(42, 48, horizontal_transition=-0.1, xaxis=(0, 3), relative_length=(33, 3)),
    Translation(36, 42, vertical_transition=0.1, xaxis=(0, 3), relative_length=(19, 6)),
    Translation(42, 48, vertical_transition=0.1, xaxis=(0, 3), relative_length=(26, 12)),
    Translation(60, 68, horizontal_transition=0.15, xaxis=(0, 4), relative_length=(33, 13)),
    Translation(60, 68, horizontal_transition=-0.15, xaxis=(0, 4), relative_length=(33, 3)),
    Translation(4, 13, horizontal_scale=0.9, xaxis=(0, 8)),
)


# --- the calibration parameters (spec 9.2) -------------------------------------------------------------------

@dataclass(frozen=True)
class FaceCalibration:
    """The 13 "Face Calibration" parameters.  Field defaults are the demo's params-dict values
    (:data:`DEMO_DEFAULTS`); the official generator function's own defaults are :data:`FUNCTION_DEFAULTS`."""

    face_length_ratio: float = 0.75
    eye_height_ratio: float = 3.0
    eye_width_ratio: float = 1.6
    mouth_height_ratio: float = 1.2
    mouth_width_ratio: float = 0.67
    jaw_width_ratio: float = 0.9
    eye_horizontal_correction: float = 0.15
    eye_distance_correction: float = 0.05
    eye_vertical_correction: float = 0.10
    mouth_horizontal_correction: float = 0.15
    mouth_vertical_correction: float = 0.03
    nose_horizontal_correction: float = 0.1
    nose_vertical_correction: float = 0.05

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, float]) -> "FaceCalibration":
        """Build from a (possibly partial) dict; missing keys keep the demo defaults, unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown calibration parameters {sorted(unknown)}; expected some of {sorted(known)}")
        return cls(**{k: float(v) for k, v in data.items()})


DEMO_DEFAULTS = FaceCalibration()
FUNCTION_DEFAULTS = replace(DEMO_DEFAULTS, mouth_vertical_correction=0.0, nose_horizontal_correction=0.0,
                            nose_vertical_correction=0.0)

#: (min, max, step) of each demo slider, for UI widgets.
SLIDER_RANGES: dict[str, tuple[float, float, float]] = {
    "face_length_ratio": (0.1, 1.5, 0.01),
    "eye_height_ratio": (0.1, 4.0, 0.01),
    "eye_width_ratio": (0.1, 3.0, 0.01),
    "mouth_height_ratio": (0.1, 3.0, 0.01),
    "mouth_width_ratio": (0.1, 3.0, 0.01),
    "jaw_width_ratio": (0.1, 1.5, 0.01),
    "eye_horizontal_correction": (-0.25, 0.25, 0.01),
    "eye_distance_correction": (-0.25, 0.25, 0.01),
    "eye_vertical_correction": (-0.25, 0.25, 0.01),
    "mouth_horizontal_correction": (-0.25, 0.25, 0.01),
    "mouth_vertical_correction": (-0.25, 0.25, 0.01),
    "nose_horizontal_correction": (-0.25, 0.25, 0.01),
    "nose_vertical_correction": (-0.25, 0.25, 0.01),
}


def calibration_translations(params: FaceCalibration = DEMO_DEFAULTS) -> list[Translation]:
    """The 17-row parameterised list of the demo / ``pipeline_example`` (spec 9.2)."""
    p = params
    ehc, edc = p.eye_horizontal_correction, p.eye_distance_correction
    mhc, nhc = p.mouth_horizontal_correction, p.nose_horizontal_correction
    eye_l, eye_r, mouth, nose = (36, 42), (42, 48), (60, 68), (27, 36)
    eye_axis, mouth_axis, nose_axis = (0, 3), (0, 4), (4, 8)
    return [
        Translation(0, 68, vertical_scale=p.face_length_ratio, xaxis=(2, 14)),
        Translation(*eye_l, horizontal_scale=p.eye_width_ratio, vertical_scale=p.eye_height_ratio, xaxis=eye_axis),
        Translation(*eye_r, horizontal_scale=p.eye_width_ratio, vertical_scale=p.eye_height_ratio, xaxis=eye_axis),
        Translation(*mouth, horizontal_scale=p.mouth_width_ratio, vertical_scale=p.mouth_height_ratio,
                    xaxis=mouth_axis),
        # Yaw compensation: shift eyes sideways by the nose-tip-to-jaw distances on either side.
        Translation(*eye_l, horizontal_transition=ehc - edc, xaxis=eye_axis, relative_length=(33, 13)),
        Translation(*eye_r, horizontal_transition=ehc, xaxis=eye_axis, relative_length=(33, 13)),
        Translation(*eye_l, horizontal_transition=-ehc, xaxis=eye_axis, relative_length=(33, 3)),
        Translation(*eye_r, horizontal_transition=-(ehc - edc), xaxis=eye_axis, relative_length=(33, 3)),
        Translation(*eye_l, vertical_transition=p.eye_vertical_correction, xaxis=eye_axis,
                    relative_length=(19, 6)),
        Translation(*eye_r, vertical_transition=p.eye_vertical_correction, xaxis=eye_axis,
                    relative_length=(24, 10)),
        Translation(*mouth, horizontal_transition=mhc, xaxis=mouth_axis, relative_length=(33, 13)),
        Translation(*mouth, horizontal_transition=-mhc, xaxis=mouth_axis, relative_length=(33, 3)),
        Translation(*mouth, vertical_transition=p.mouth_vertical_correction, xaxis=mouth_axis,
                    relative_length=(27, 8)),
        Translation(*nose, vertical_transition=p.nose_vertical_correction, xaxis=nose_axis,
                    relative_length=(27, 8)),
        Translation(*nose, horizontal_transition=nhc, xaxis=nose_axis, relative_length=(22, 16)),
        Translation(*nose, horizontal_transition=-nhc, xaxis=nose_axis, relative_length=(21, 0)),
        Translation(4, 13, horizontal_scale=p.jaw_width_ratio, xaxis=(0, 8)),
    ]


#: Named lists for UIs / CLI flags.  "startup" is the streaming morpher's list; "calibration" the demo's
#: parameterised list at its defaults; "calibration_function_defaults" the generator's own defaults; "none" = human.
TRANSLATION_PRESETS: dict[str, tuple[Translation, ...]] = {
    "startup": STARTUP_TRANSLATIONS,
    "calibration": tuple(calibration_translations(DEMO_DEFAULTS)),
    "calibration_function_defaults": tuple(calibration_translations(FUNCTION_DEFAULTS)),
    "none": (),
}


def translations_from_dicts(rows: Sequence[Mapping]) -> list[Translation]:
    """Parse a JSON list of translation dicts (e.g. a user's saved calibration)."""
    return [Translation.from_dict(row) for row in rows]
