"""The object users hold: loaded models plus a fused reference; ``stream`` yields frames, ``render``
returns them all.

One frame's way: pose image → ``PoseGuider`` (once per frame, cached with its group) → the stream
window (``sampling.stream``) → ``VideoUNet`` with the reference attached → per-frame LCM step →
decoder (TAESDV with memory, or the SD VAE) → frame.
"""

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .decoders import Decoder, make_decoder
from .io.images import to_rgb
from .loading import RainModels, load_models
from .models.embeddings import guidance_scale_embedding
from .models.image_encoder import encode_image
from .models.vae import encode_reference, vae_pixels
from .sampling.noise import InjectedNoise, SeededNoise
from .sampling.state import StreamState
from .sampling.stream import RainStream, SteadyStep, StreamSettings

ImageLike = Image.Image | np.ndarray | torch.Tensor


@dataclass
class Reference:
    """A fused reference: what the denoiser attends to, computed once (spec §4).

    ``features`` are the 16 cached ``norm1`` outputs (concatenated along tokens when several images
    were fused), ``context`` the CLIP token. Kept in float16 as the official code hands them over.
    """
    features: dict[str, torch.Tensor]
    context: torch.Tensor
    height: int
    width: int
    images: list[Image.Image] = field(default_factory=list, repr=False)

    @property
    def count(self) -> int:
        return len(self.images)


# -- input conversion ---------------------------------------------------------------------------------------
def to_pil(image: ImageLike) -> Image.Image:
    """Any reference image (PIL of any mode, uint8 HxWxC array, float [H,W,C] tensor in [0,1]) → RGB PIL."""
    if isinstance(image, Image.Image):
        return to_rgb(image)  # EXIF orientation, 16-bit/float scaling, transparency on white
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"expected an image as H×W×C, got an array of shape {list(array.shape)}")
    if array.dtype != np.uint8:
        if not np.isfinite(array).all():
            raise ValueError("the reference image contains NaN or infinite values")
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    channels = array.shape[2]
    if channels == 1:
        array = np.repeat(array, 3, axis=2)
    elif channels == 4:
        return to_pil(Image.fromarray(array, "RGBA"))
    elif channels != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got {channels}")
    return Image.fromarray(array, "RGB")


def to_pose_tensor(frame: ImageLike) -> torch.Tensor:
    """A pose frame (uint8 HxWx3, float [H,W,3] in [0,1], or PIL) → float32 [3, H, W] in [0, 1]."""
    if isinstance(frame, Image.Image):
        frame = np.asarray(frame.convert("RGB"))
    if isinstance(frame, np.ndarray):
        if frame.dtype == np.uint8:
            tensor = torch.from_numpy(np.array(frame)).float() / 255.0
        else:
            tensor = torch.from_numpy(np.asarray(frame, dtype=np.float32))
    else:
        tensor = frame.float() if frame.dtype != torch.uint8 else frame.float() / 255.0
    if tensor.ndim != 3 or tensor.shape[-1] not in (3, 4):
        raise ValueError(f"a pose frame must be H×W×3, got shape {list(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError("a pose frame contains NaN or infinite values")
    return tensor[..., :3].permute(2, 0, 1).contiguous()


def check_size(height: int, width: int) -> None:
    if height % 8 or width % 8 or height < 64 or width < 64:
        def near(v):
            return max(64, v - v % 8)
        raise ValueError(f"frames are {width}×{height} (W×H); RAIN needs both sides to be multiples of 8 and at "
                         f"least 64 — resize the pose frames to e.g. {near(width)}×{near(height)}")


# -- the pipeline ---------------------------------------------------------------------------------------------
class RainPipeline:
    def __init__(self, models: RainModels, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 models_dir: str | Path | None = None):
        self.models = models
        self.device = torch.device(device)
        self.dtype = dtype
        # Where accelerated artefacts are cached (``<models_dir>/tensorrt``, ``<models_dir>/onnx``).
        self.models_dir = Path(models_dir) if models_dir is not None else None
        self.accelerated = {}  # backend artefacts built for these models, by key (rain.accel.backends)

    @classmethod
    def from_models_dir(cls, models_dir, *, device="cpu", dtype=torch.float32, **load_options) -> "RainPipeline":
        models = load_models(models_dir, device=device, dtype=dtype, **load_options)
        return cls(models, device=device, dtype=dtype, models_dir=models_dir)

    # -- reference ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fuse_reference(self, images: ImageLike | Sequence[ImageLike], height: int = 512, width: int = 512,
                       cache_dtype: torch.dtype = torch.float16) -> Reference:
        """Encode one reference image (or several, attended to together) for frames of ``height``×``width``."""
        check_size(height, width)
        if self.models.reference_unet is None or self.models.image_encoder is None or self.models.vae is None:
            raise RuntimeError("this pipeline was loaded without the reference models (reference UNet, CLIP, VAE)")
        if isinstance(images, (list, tuple)):
            pil_images = [to_pil(i) for i in images]
        elif isinstance(images, torch.Tensor) and images.ndim == 4:
            pil_images = [to_pil(i) for i in images]
        else:
            pil_images = [to_pil(images)]
        if not pil_images:
            raise ValueError("no reference image given")
        self._reference_part_to(self.device)
        per_image, contexts = [], []
        for image in pil_images:
            context = encode_image(self.models.image_encoder, image).to(self.dtype)
            latent = encode_reference(self.models.vae, vae_pixels(image, height, width)).to(self.dtype)
            features = self.models.reference_unet.reference_features(latent, context)
            per_image.append(features)
            contexts.append(context)
        features = {name: torch.cat([f[name] for f in per_image], dim=1).to(cache_dtype) for name in per_image[0]}
        # Several references share one cross-attention token: their mean CLIP embedding.
        context = torch.stack(contexts).mean(0)
        return Reference(features, context, height, width, pil_images)

    def _reference_part_to(self, device: torch.device | str) -> None:
        for module in (self.models.reference_unet, self.models.image_encoder, self.models.vae):
            if module is not None:
                module.to(device)

    def offload_reference(self, device: torch.device | str = "cpu", *, keep_vae: bool = False) -> None:
        """Move the reference part (reference UNet, CLIP image encoder and, unless ``keep_vae`` for VAE
        decoding, the VAE) off the GPU once references are fused: fused references stay usable, synthesis needs
        only the denoiser, pose guider and TAESDV (the official demo's "unload reference module"). Fusing
        again brings them back."""
        for module in (self.models.reference_unet, self.models.image_encoder,
                       None if keep_vae else self.models.vae):
            if module is not None:
                module.to(device)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def refit(self, reference: Reference, height: int, width: int) -> Reference:
        """The same reference for another frame size (the reference latent must match the frames)."""
        if (reference.height, reference.width) == (height, width):
            return reference
        if not reference.images:
            raise ValueError(f"the reference was fused for {reference.width}×{reference.height} and its images "
                             f"are not kept; fuse it again for {width}×{height}")
        return self.fuse_reference(reference.images, height, width,
                                   cache_dtype=next(iter(reference.features.values())).dtype)

    # -- streaming ------------------------------------------------------------------------------------------
    def open_stream(self, reference: Reference, settings: StreamSettings | None = None, *,
                    height: int | None = None, width: int | None = None,
                    noise: Callable | Iterable[torch.Tensor] | None = None,
                    record_calls: bool = False, state: StreamState | None = None,
                    steady_step: SteadyStep | None = None, backend: str = "eager",
                    precompute: bool = True, **backend_options) -> "PipelineStream":
        """A live stream for frames of the reference's size (or ``height``×``width``): push pose frames
        ([3,H,W] in [0,1]) and receive finished frames ([H,W,3] in [0,1], or latents with decoder 'none').

        ``state`` continues a saved stream (resume). ``backend`` runs the steady-state calls as one fused
        step (``rain.accel``): "eager" (plain PyTorch, the reference), "compiled" (``torch.compile``, with
        CUDA-graph replay on a GPU), "onnx" (onnxruntime) or "tensorrt" (falls back to "compiled", saying how
        to install it, where TensorRT is missing); ``backend_options`` go to ``rain.accel.backends``. Or pass
        your own ``steady_step``. ``precompute=False`` runs cross-attention and time embeddings in full on
        every call (the official arithmetic; for comparisons)."""
        settings = settings or StreamSettings()
        height = height or reference.height
        width = width or reference.width
        check_size(height, width)
        if state is None:
            if noise is None:
                noise = SeededNoise(settings.seed)
            elif not callable(noise):
                noise = InjectedNoise(noise)
        stream = PipelineStream(self, self.refit(reference, height, width), settings, height=height, width=width,
                                noise=noise, record_calls=record_calls, state=state, steady_step=steady_step,
                                precompute=precompute or backend != "eager")
        if backend != "eager" and steady_step is None:
            from .accel.backends import steady_step_for
            stream.use_steady_step(steady_step_for(self, backend, settings, height, width,
                                                   stream.steady_constants(), **backend_options))
        return stream

    def make_decoder(self, name: str) -> Decoder | None:
        """This pipeline's decoder ``name`` (see ``rain.decoders``): (latents, memory) → (frames, memory)."""
        return make_decoder(self.models, name, self.device, self.dtype)

    def stream(self, poses: Iterable[ImageLike], reference: Reference, settings: StreamSettings | None = None, *,
               noise=None, **stream_options) -> Iterator[torch.Tensor]:
        """Yield finished frames ([H,W,3] float32 in [0,1] on the CPU) as soon as they are clean; the size
        comes from the first pose frame. A finite input is drained so every frame comes out.
        ``stream_options`` go to ``open_stream`` (e.g. ``backend="tensorrt"``)."""
        poses = iter(poses)
        first = next(poses, None)
        if first is None:
            raise ValueError("no pose frames were given")
        first = to_pose_tensor(first)
        height, width = first.shape[1:]
        stream = self.open_stream(reference, settings, height=height, width=width, noise=noise,
                                  **stream_options)

        def tensors():
            yield first
            for frame in poses:
                tensor = to_pose_tensor(frame)
                if tensor.shape != first.shape:
                    raise ValueError(f"pose frames change size mid-stream ({list(first.shape[1:])} → "
                                     f"{list(tensor.shape[1:])}); resize them all to one size")
                yield tensor
        yield from stream.run(tensors())

    def render(self, poses: Iterable[ImageLike], reference: Reference, settings: StreamSettings | None = None, *,
               noise=None, progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """All frames as one [T, H, W, 3] float32 tensor (ComfyUI's IMAGE layout)."""
        frames = []
        for frame in self.stream(poses, reference, settings, noise=noise):
            frames.append(frame)
            if progress is not None:
                progress(len(frames))
        return torch.stack(frames) if frames else torch.zeros(0, 0, 0, 3)


class PipelineStream(RainStream):
    """A ``RainStream`` bound to a pipeline's models and one reference, which can be swapped mid-stream
    (``set_reference``: the character changes from the next call on, the window and its motion carry on).

    Everything constant over the stream is computed once: the reference keys/values and cross-attention
    outputs per layer (``VideoUNet.attention_inputs``), and the time embedding of each timestep pattern."""

    def __init__(self, pipeline: RainPipeline, reference: Reference, settings: StreamSettings, *, height: int,
                 width: int, noise, record_calls: bool, state: StreamState | None,
                 steady_step: SteadyStep | None, precompute: bool = True):
        self.pipeline = pipeline
        self.reference = reference
        models = pipeline.models
        self._unet = models.video_unet
        self._guider = models.pose_guider
        self._guidance = guidance_scale_embedding(settings.guidance_scale, dtype=pipeline.dtype,
                                                  device=pipeline.device)
        self.precompute = precompute
        self._temb: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._reference_inputs(settings)
        super().__init__(pose_features=self._pose_features_of, denoise=self._denoise_window,
                         decode=pipeline.make_decoder(settings.decoder), noise=noise,
                         latent_shape=(4, height // 8, width // 8), settings=settings, device=pipeline.device,
                         dtype=pipeline.dtype, record_calls=record_calls, steady_step=steady_step, state=state)

    def _reference_inputs(self, settings: StreamSettings) -> None:
        self._context = self.reference.context.to(self.pipeline.device, self.pipeline.dtype)
        self._attention = (self._unet.attention_inputs(self.reference.features, self._context)
                           if self.precompute else None)
        self._attach(settings)

    def _attach(self, settings: StreamSettings) -> None:
        self._unet.set_reference(self.reference.features)
        self._unet.set_temporal_strength(settings.temporal_strength)

    def set_reference(self, reference: Reference) -> None:
        """Attend to another fused reference from the next UNet call on (fused for this stream's frame size
        or re-fitted to it)."""
        height, width = self.latent_shape[1] * 8, self.latent_shape[2] * 8
        self.reference = self.pipeline.refit(reference, height, width)
        self._reference_inputs(self.settings)
        if hasattr(self.steady_step, "set_constants"):
            self.steady_step.set_constants(self.steady_constants())

    def use_steady_step(self, steady_step: SteadyStep) -> None:
        """Run steady-state calls with this fused step from now on (e.g. one built by ``rain.accel``)."""
        if self.settings.steps_per_group != 1:
            raise ValueError("the fused steady-state step does one LCM step per group; use steps_per_group=1 "
                             "or the eager backend")
        if self.record_calls:
            raise ValueError("record_calls inspects the eager call; open the stream without a fused step")
        self.steady_step = steady_step

    def steady_constants(self) -> dict[str, torch.Tensor]:
        """The fused step's per-reference inputs for this stream: the steady window's time embedding and
        the attention constants (see ``rain.accel.fused_step``)."""
        attention = self._attention
        if attention is None:
            attention = self._unet.attention_inputs(self.reference.features, self._context)
        levels = list(range(self.settings.num_groups))
        return {"temb": self._time_embedding(self._timesteps(levels, 0)), **attention}

    def _time_embedding(self, timesteps: torch.Tensor) -> torch.Tensor:
        # The stream keeps one timesteps tensor per pattern for its whole life, so its identity is the key.
        cached = self._temb.get(id(timesteps))
        if cached is None or cached[0] is not timesteps:
            with torch.no_grad():
                temb = self._unet.time_embeddings(timesteps, 1, timesteps.shape[-1], self._guidance)
            cached = self._temb[id(timesteps)] = (timesteps, temb)
        return cached[1]

    @torch.no_grad()
    def _denoise_window(self, sample, timesteps, pose_features):
        sample = sample.to(self.dtype)
        if self.precompute:
            # Everything reference-dependent arrives as inputs: nothing to re-attach between streams.
            self._unet.set_temporal_strength(self.settings.temporal_strength)
            return self._unet(sample, timesteps, self._context, pose_features, temb=self._time_embedding(timesteps),
                              attention=self._attention)
        # Streams share the UNet: re-attach this stream's reference if another one was used meanwhile.
        if self._unet.reference_processors["d00"].reference is not self.reference.features["d00"]:
            self._attach(self.settings)
        return self._unet(sample, timesteps, self._context, pose_features, self._guidance)

    @torch.no_grad()
    def _pose_features_of(self, poses):
        return self._guider(poses.to(self.device, self.dtype))
