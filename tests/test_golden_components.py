"""Each model component against the official implementation's outputs (golden cases a–i)."""

import json

import torch
from PIL import Image
from safetensors.torch import load_file

from parity import assert_close_to_golden, tolerance
from rain.models.embeddings import guidance_scale_embedding
from rain.models.image_encoder import clip_pixel_values, encode_image
from rain.models.taesdv import TAESDVMemory
from rain.models.vae import encode_reference, vae_pixels
from rain.sampling.lcm import PerFrameLCM, alphas_cumprod


def case(golden_dir, name):
    return load_file(golden_dir / "cases" / f"{name}.safetensors"), json.loads(
        (golden_dir / "cases" / f"{name}.json").read_text())


def test_guidance_embedding_all_scales(golden_dir):
    tensors, meta = case(golden_dir, "a_guidance_embedding")
    for key, w in meta["w_values"].items():
        assert_close_to_golden(guidance_scale_embedding(w), tensors[key], key)


def test_per_frame_timestep_embedding(golden_dir, golden_pipeline):
    tensors, _ = case(golden_dir, "b_timestep_embedding")
    unet = golden_pipeline.models.video_unet
    for prefix in ("groups", "mixed"):
        timesteps = tensors[f"{prefix}_timesteps"]
        assert_close_to_golden(unet.time_proj(timesteps.reshape(-1)), tensors[f"{prefix}_sinusoid_32"])
        from diffusers.models.embeddings import Timesteps
        full_width = Timesteps(320, flip_sin_to_cos=True, downscale_freq_shift=0)(timesteps.reshape(-1))
        assert_close_to_golden(full_width, tensors[f"{prefix}_sinusoid_320"])
        batch, frames = timesteps.shape
        with torch.no_grad():
            emb = unet.time_embeddings(timesteps, batch, frames, tensors["w_embedding"])
            emb_zero = unet.time_embeddings(timesteps, batch, frames, torch.zeros(1, 512))
        # The UNet keeps [(B·F), 4·C0]; the official layout is [B, 4·C0, F].
        assert_close_to_golden(emb.T[None], tensors[f"{prefix}_emb"], prefix)
        assert_close_to_golden(emb_zero.T[None], tensors[f"{prefix}_emb_zero_w"], prefix + " zero w")


def test_pose_guider(golden_dir, golden_pipeline):
    tensors, _ = case(golden_dir, "c_pose_guider")
    poses = tensors["pose_images_uint8"].permute(3, 0, 1, 2)[None].float() / 255
    with torch.no_grad():
        assert_close_to_golden(golden_pipeline.models.pose_guider(poses), tensors["features"])


def test_clip_image_encoder(golden_dir, golden_pipeline):
    tensors, _ = case(golden_dir, "d_clip_image_encoder")
    image = Image.open(golden_dir / "inputs" / "reference_image.png")
    assert_close_to_golden(clip_pixel_values(image), tensors["pixel_values"])
    assert_close_to_golden(encode_image(golden_pipeline.models.image_encoder, image), tensors["encoder_hidden_states"])


def test_vae_encode_reference(golden_dir, golden_pipeline):
    tensors, _ = case(golden_dir, "e_vae_encode_reference")
    image = Image.open(golden_dir / "inputs" / "reference_image.png")
    height, width = tensors["vae_input"].shape[2:]
    assert_close_to_golden(vae_pixels(image, height, width), tensors["vae_input"])
    assert_close_to_golden(encode_reference(golden_pipeline.models.vae, tensors["vae_input"]),
                           tensors["reference_latent"])


def test_reference_unet_features(golden_dir, golden_pipeline):
    tensors, _ = case(golden_dir, "f_reference_unet_features")
    features = golden_pipeline.models.reference_unet.reference_features(tensors["sample"],
                                                                        tensors["encoder_hidden_states"])
    assert list(features) == ["d00", "d01", "d10", "d11", "d20", "d21", "m", "u10", "u11", "u12",
                              "u20", "u21", "u22", "u30", "u31", "u32"]
    for name, value in features.items():
        assert_close_to_golden(value, tensors[name], name)


def test_fused_reference_matches_official_float16_features(golden_dir, golden_pipeline):
    """End to end from the PNG: features as the denoiser receives them (float16-rounded), within one fp16 step."""
    tensors, _ = case(golden_dir, "g_denoising_unet_forward")
    image = Image.open(golden_dir / "inputs" / "reference_image.png")
    # The frame size the set fused for is the size of its VAE input (case e), never a number assumed here.
    height, width = case(golden_dir, "e_vae_encode_reference")[0]["vae_input"].shape[2:]
    reference = golden_pipeline.fuse_reference(image, height, width)
    for name, value in reference.features.items():
        golden = tensors[f"ref_{name}"]
        assert value.dtype == torch.float16
        one_step = golden.abs().max().item() * 2 ** -10
        assert (value.float() - golden).abs().max().item() <= one_step + tolerance(golden), name


def test_denoising_unet_forward_and_taps(golden_dir, golden_pipeline):
    tensors, _ = case(golden_dir, "g_denoising_unet_forward")
    unet = golden_pipeline.models.video_unet
    taps = {}
    hooks = [getattr(unet, part).register_forward_hook(lambda m, i, o, part=part: taps.__setitem__(part, o))
             for part in ("conv_in", "mid_block")]
    hooks += [block.register_forward_hook(lambda m, i, o, name=f"{kind}.{index}": taps.__setitem__(name, o))
              for kind in ("down_blocks", "up_blocks") for index, block in enumerate(getattr(unet, kind))]
    unet.set_reference({k[4:]: v for k, v in tensors.items() if k.startswith("ref_")})
    unet.set_temporal_strength(1.0)
    try:
        with torch.no_grad():
            out = unet(tensors["sample"], tensors["timesteps"], tensors["encoder_hidden_states"],
                       tensors["pose_cond_fea"], tensors["timestep_cond"])
    finally:
        for hook in hooks:
            hook.remove()
        unet.set_reference(None)

    batch, _, frames = tensors["sample"].shape[:3]

    def video(x):  # [(B·F), C, h, w] → [B, C, F, h, w]
        return x.unflatten(0, (batch, frames)).transpose(1, 2)

    assert_close_to_golden(video(taps["conv_in"]), tensors["tap_conv_in_out_before_pose"], "conv_in")
    for i in range(4):
        assert_close_to_golden(video(taps[f"down_blocks.{i}"][0]), tensors[f"tap_down_blocks.{i}_out"], f"down {i}")
        assert_close_to_golden(video(taps[f"up_blocks.{i}"]), tensors[f"tap_up_blocks.{i}_out"], f"up {i}")
    assert_close_to_golden(video(taps["mid_block"]), tensors["tap_mid_block_out"], "mid")
    assert_close_to_golden(out, tensors["model_output"], "model_output")


def test_lcm_step(golden_dir):
    tensors, _ = case(golden_dir, "h_lcm_step")
    scheduler = PerFrameLCM(4)
    assert scheduler.timesteps == tensors["scheduler_timesteps"].tolist()
    assert_close_to_golden(alphas_cumprod(), tensors["alphas_cumprod"])
    prev, denoised = scheduler.step(tensors["model_output"], tensors["timesteps"], tensors["sample"], tensors["noise"])
    assert_close_to_golden(prev, tensors["prev_sample"])
    assert_close_to_golden(denoised, tensors["denoised"])
    assert torch.equal(prev[:, :, :4], denoised[:, :, :4])  # the t=249 group comes out clean


def test_taesdv_chunked_decode_with_memory(golden_dir, golden_pipeline):
    tensors, _ = case(golden_dir, "i_taesdv_decode")
    taesdv = golden_pipeline.models.taesdv
    memory = TAESDVMemory()
    latents = tensors["latents"][0]
    decoded = [taesdv.decode(latents[i:i + 4], memory) for i in range(0, latents.shape[0], 4)]  # 4-frame groups
    assert_close_to_golden(torch.cat(decoded)[None], tensors["decoded_chunked"])
    first = TAESDVMemory()
    taesdv.decode(latents[:4], first)
    for k in range(3):
        assert_close_to_golden(first.inputs[k], tensors[f"mem_after_chunk0_{k}"], f"memory {k}")
    # Frame by frame is the same sequence (batching round-off only).
    one_by_one = TAESDVMemory()
    sequential = torch.cat([taesdv.decode(latents[i:i + 1], one_by_one) for i in range(latents.shape[0])])
    assert (sequential - torch.cat(decoded)).abs().max() < 1e-4
