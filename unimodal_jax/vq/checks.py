"""Validation of the `config.vq` keys of a run (the image tokenizer it trains on)."""
from unimodal_jax.config import ConfigError, check as _check
from unimodal_jax.vq import codes

VQ_KINDS = ("kmeans", "vqgan")  # vq/codes.py; the embedded dataset fits its own k-means or uses vq.tokenizer_path


def check(config) -> None:
  vq = config.vq
  for key in ("image_size", "patch_size", "num_codes"):
    _check(vq[key] >= 1, f"vq.{key}", f"must be >= 1, got {vq[key]}")
  _check(vq.kind in VQ_KINDS, "vq.kind", f"{vq.kind!r} is not one of {VQ_KINDS}")
  _check(vq.image_size % vq.patch_size == 0, "vq.image_size",
         f"{vq.image_size} is not a multiple of vq.patch_size={vq.patch_size}")
  if config.data.source == "embedded" and vq.kind == "vqgan":  # the build tokenizes the photos with this VQGAN
    _check(bool(vq.tokenizer_path), "vq.tokenizer_path",
           "data.source='embedded' with vq.kind='vqgan' needs the saved VQGAN's directory")
    try:
      codes.check_vqgan_dims(config)
    except ValueError as e:
      raise ConfigError(str(e)) from e
