"""What sampling needs from a run directory or a transformers Chameleon directory: params on this machine's mesh,
the vocabulary, the text codec, the image tokenizer's encoder and decoder (when there is one) and the code grid."""
import dataclasses
import json
import tempfile
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from unimodal_jax import config as config_lib
from unimodal_jax.convert import hf_chameleon, hf_vq, tensors, vocab_map
from unimodal_jax.data import vocab as vocab_lib
from unimodal_jax.model.transformer import Transformer
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.sample import periodic, text as text_lib
from unimodal_jax.train import checkpoint, state as state_lib
from unimodal_jax.vq import codes as codes_lib, images as vq_images


@dataclasses.dataclass
class Model:
  model_config: ml_collections.ConfigDict
  params: dict
  vocab: vocab_lib.Vocab
  codec: text_lib.TextCodec
  grid: tuple[int, int]  # codes per image side: (h, w)
  image_size: int
  mesh: jax.sharding.Mesh
  rules: tuple
  decode_images: Callable | None  # codes [n, h, w] -> uint8 [n, H, W, 3], or None: no decoder
  encode_images: Callable | None  # uint8 [n, H, W, 3] -> codes [n, h, w], or None: no encoder

  def image_prompt_tokens(self, path: str) -> np.ndarray:
    """An image file as stream tokens (<boi> codes <eoi>): centre crop, resized to the tokenizer's resolution."""
    if self.encode_images is None:
      raise ValueError(f"--image {path}: this model has no image tokenizer to encode it with")
    pixels, _ = vq_images.prepare(epath.Path(path).read_bytes(), self.image_size, min_size=1, max_pixels=1 << 28)
    return self.vocab.image_tokens(np.asarray(self.encode_images(pixels[None]))[0])


def sampling_mesh(mesh_config):
  """The run's mesh when this machine's devices fit it, else data parallelism over all of them."""
  try:
    return mesh_lib.create_mesh(mesh_config)
  except ValueError as e:
    logging.warning("the run's mesh does not fit %d devices (%s); sampling data-parallel", jax.device_count(), e)
    fallback = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "dcn_data": 1, "dcn_fsdp": 1,
                                          "dcn_tensor": 1})
    return mesh_lib.create_mesh(fallback)


def _place(params, model, mesh, rules):
  shardings = mesh_lib.logical_to_shardings(state_lib.param_logical_specs(model, 8), mesh, rules)
  return jax.device_put(params, shardings)


def latest_step_dir(workdir: str, step: int | None = None) -> str:
  root = checkpoint.checkpoint_dir(workdir)
  steps = sorted(int(d.name) for d in root.iterdir() if d.name.isdigit()) if root.is_dir() else []
  if not steps:
    raise FileNotFoundError(f"{root} holds no checkpoint")
  if step is not None and step not in steps:
    raise FileNotFoundError(f"{root} has no step {step} (it has {steps})")
  return str(root / str(steps[-1] if step is None else step))


def from_run(workdir: str, step: int | None = None, text_tokenizer: str = "") -> Model:
  """A run of unimodal-train: its config.json, a checkpoint's params (any mesh it was saved on), its tokenizers."""
  config_file = epath.Path(workdir) / "config.json"
  if not config_file.exists():
    raise FileNotFoundError(f"{workdir} is not a run directory (no config.json)")
  config = ml_collections.ConfigDict(json.loads(config_file.read_text()))
  step_dir = latest_step_dir(workdir, step)
  mesh, rules = sampling_mesh(config.mesh), mesh_lib.axis_rules(config)
  model = Transformer(config.model)
  shardings = mesh_lib.logical_to_shardings(state_lib.param_logical_specs(model, 8), mesh, rules)
  params = checkpoint.restore_params(step_dir, state_lib.abstract_params(model, 8, shardings))
  vocab = vocab_lib.from_config(config)
  codec = text_lib.TextCodec.for_run(text_tokenizer or periodic.text_tokenizer_path(config, workdir), vocab)
  encode, decode = periodic.image_codec(config, workdir)
  return Model(config.model, params, vocab, codec, periodic.grid_size(config), config.vq.image_size, mesh, rules,
               decode, encode)


def from_hf(hf_dir: str, text_tokenizer: str = "", vq_tokenizer: str = "") -> Model:
  """A transformers Chameleon directory (`unimodal-convert from-hf` reads the same). Images decode with our VQ
  tokenizer directory `vq_tokenizer`, else with the decoder to-hf wrote beside the checkpoint, else not at all."""
  params, overrides, vocab = hf_chameleon.from_hf(hf_dir)
  config = config_lib.default_config()
  config.model.update(overrides)
  config.model.dtype = "float32"
  hf_config = tensors.read_config(hf_dir)
  hf_id_of, _ = vocab_map.permutation(vocab_map.layout_from_config(hf_config))
  path = text_tokenizer or str(epath.Path(hf_dir) / "tokenizer.json")
  if not epath.Path(path).exists():
    raise FileNotFoundError(f"{hf_dir} has no tokenizer.json: give its text tokenizer (--text_tokenizer)")
  codec = text_lib.TextCodec.for_checkpoint(path, hf_id_of)
  vq = hf_config.get("vq_config") or {}
  image_size, down = vq.get("resolution", 512), 2 ** (len(vq.get("channel_multiplier", (1,) * 5)) - 1)
  encode = decode = None
  if not vq_tokenizer and hf_vq.has_decoder(hf_dir):
    vq_tokenizer = str(epath.Path(tempfile.mkdtemp(prefix="vq_")) / "tokenizer")
    hf_vq.import_tokenizer(hf_dir, vq_tokenizer, vocab)
  if vq_tokenizer:
    image_size, down, num_codes = codes_lib.vqgan_dims(vq_tokenizer)
    if num_codes != vocab.num_image_codes:
      raise ValueError(f"{vq_tokenizer}: a VQGAN of {num_codes} codes, but {hf_dir} has {vocab.num_image_codes}")
    tokenizer = codes_lib.VQGANTokenizer(vq_tokenizer)
    encode, decode = tokenizer.encode, tokenizer.decode
  mesh, rules = sampling_mesh(config.mesh), mesh_lib.axis_rules(config)
  params = _place(params, Transformer(config.model), mesh, rules)
  g = image_size // down
  return Model(config.model, params, vocab, codec, (g, g), image_size, mesh, rules, decode, encode)
