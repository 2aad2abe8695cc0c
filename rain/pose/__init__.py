"""Pose stage of RAIN: driving frame -> landmarks -> human-to-anime transform -> pose image.

Modules (import what you need; this package import stays cheap and loads neither cv2 nor onnxruntime):

* ``landmark_transform`` - the human->anime translation lists as data and the pure function applying them.
* ``render``             - the RAIN face-dot renderer and the OpenPose-style whole-body renderer.
* ``skeleton``           - the 134-point whole-body layout (OpenPose body order + feet, face, hands).
* ``yolox``              - YOLOX person-detector pre/post-processing (letterbox, decode, NMS) in NumPy.
* ``wholebody``          - DWPose (SimCC) pre/post-processing in NumPy/OpenCV.
* ``dwpose``             - onnxruntime sessions and the detection runner (``DWPoseDetector``).
* ``face_tracking``      - per-stream landmark state: thresholds, fill-in, missing-face policy, counts.
* ``smoothing``          - optional One-Euro temporal filter.
* ``keypoints``          - ComfyUI ``POSE_KEYPOINT`` (OpenPose JSON) reading and writing.
* ``driving``            - frames in, pose images out (generator; one frame in memory at a time).
* ``model_files``        - catalogue of the DWPose ONNX files and where they are looked for.
* ``stand_in_models``    - tiny ONNX models with the DWPose signatures (tests, benchmarks, smoke runs).
"""
