"""The 134-point whole-body layout used throughout :mod:`rain.pose`.

DWPose predicts the 133 COCO-WholeBody keypoints; a neck point (mean of the shoulders) is inserted at index 17 and
the 18 body points are reordered to OpenPose order, giving 134 points:

* 0-17   body, OpenPose-18 order (nose, neck, r-shoulder, r-elbow, r-wrist, l-shoulder, l-elbow, l-wrist, r-hip,
  r-knee, r-ankle, l-hip, l-knee, l-ankle, r-eye, l-eye, r-ear, l-ear)
* 18-23  feet (COCO-WholeBody order; OpenPose JSON has no slot for them)
* 24-91  face, 68 points in iBUG order
* 92-112 left hand, 113-133 right hand (21 points each)
"""

from __future__ import annotations

WHOLEBODY_POINTS = 134
BODY = slice(0, 18)
FEET = slice(18, 24)
FACE = slice(24, 92)
LEFT_HAND = slice(92, 113)
RIGHT_HAND = slice(113, 134)

#: COCO-WholeBody index of the neck's neighbours (left and right shoulder) before the neck is inserted.
SHOULDERS_COCO = (5, 6)
NECK_INDEX = 17

#: After inserting the neck at 17, OpenPose slot ``OPENPOSE_SLOTS[k]`` takes the point at ``COCO_SOURCES[k]``.
COCO_SOURCES = (17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3)
OPENPOSE_SLOTS = (1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17)

#: OpenPose-18 eyes, used to pad the 68 face points to OpenPose's 70.
BODY_RIGHT_EYE = 14
BODY_LEFT_EYE = 15
