"""The image tokenizer a run uses, built from config: uint8 images [n, H, W, 3] -> int32 codes [n, h, w].

`image_tokenizer` is the one place that picks the tokenizer by `config.vq.kind`; callers (the shard converter,
the embedded dataset's users) see only the function it returns.
"""
from collections.abc import Callable

import numpy as np

from unimodal_jax.vq import kmeans


def image_tokenizer(config) -> Callable[[np.ndarray], np.ndarray]:
  """Loads the tokenizer saved at `config.vq.tokenizer_path` and checks it against config.vq."""
  vq, path = config.vq, config.vq.tokenizer_path
  if not path:
    raise ValueError("config.vq.tokenizer_path: needs the saved image tokenizer (vq.kind="
                     f"{vq.kind!r}) to tokenize images")
  if vq.kind == "kmeans":
    tokenizer = kmeans.KMeansTokenizer.load(path)
    found = (tokenizer.image_size, tokenizer.patch_size, tokenizer.num_codes)
    if found != (vq.image_size, vq.patch_size, vq.num_codes):
      raise ValueError(f"config.vq.tokenizer_path={path}: a codebook for image_size, patch_size, num_codes = {found}, "
                       f"but config.vq has {(vq.image_size, vq.patch_size, vq.num_codes)}")
    return lambda images: tokenizer.encode(images).astype(np.int32)
  if vq.kind == "vqgan":
    import jax  # jax/flax only when the VQGAN is used
    from unimodal_jax.vq import tokenize, vq_convert, vqgan
    params, model = vq_convert.load_tokenizer(path)
    found = (model.resolution, vqgan.downsampling(model), model.num_embeddings)
    if found != (vq.image_size, vq.patch_size, vq.num_codes):
      raise ValueError(f"config.vq.tokenizer_path={path}: a VQGAN for image_size, patch_size, num_codes = {found}, "
                       f"but config.vq has {(vq.image_size, vq.patch_size, vq.num_codes)}")
    return tokenize.make_encoder(params, model, batch_size=8 * jax.device_count())
  raise ValueError(f"config.vq.kind={vq.kind!r} has no image tokenizer here (known: 'kmeans', 'vqgan')")
