"""Our VQGAN tokenizer <-> the VQ part of a transformers Chameleon directory: `model.vqmodel.*` tensors (encoder,
quantizer, quant convs) + `vq_config` in config.json, and our decoder beside them (transformers keeps no decoder).

Only the tokenizer here; the transformer's tensors are hf_chameleon.py's. Export needs no torch.
"""
import json
import os

import jax
import numpy as np
from flax import traverse_util
from safetensors.numpy import save_file

from unimodal_jax.convert import tensors
from unimodal_jax.convert.tensors import ConversionError, Tensor
from unimodal_jax.vq import vqgan
from unimodal_jax.vq import weights as vq_weights

VQ_PREFIX = "model.vqmodel."  # where a transformers Chameleon keeps its VQ tokenizer (encoder + quantizer)
# prefixes under which Chameleon checkpoints keep the tokenizer: transformers' and the original release's
CHECKPOINT_PREFIXES = (VQ_PREFIX, "vqmodel.")
ENCODE_ONLY_MISSING = ("decoder.",)  # transformers ships the tokenizer encode-only: its checkpoints lack these
VQ_SHARD = "model-vqmodel.safetensors"  # listed in the index: transformers loads it into model.vqmodel
DECODER_FILE = "vq_decoder.safetensors"  # not in the index: taming/Chameleon names, read by us only
DECODER_CONFIG = "vq_decoder.json"  # our config.vqgan (incl. norm_groups and beta, which vq_config lacks)
DECODER_KEYS = ("decoder.", "post_quant_conv.")  # what turns codebook rows into pixels
HF_NORM_GROUPS = 32  # transformers' ChameleonVQVAE hard-codes GroupNorm(num_groups=32)
# config.vqgan keys that vq_config carries; the rest (norm_groups, beta) are not in transformers' config
HF_KEYS = ("resolution", "in_channels", "base_channels", "channel_multiplier", "num_res_blocks", "attn_resolutions",
           "latent_channels", "embed_dim", "num_embeddings")


def hf_vq_config(c) -> dict:
  """The `vq_config` from which transformers builds the ChameleonVQVAE of our `config.vqgan` `c`."""
  return {"embed_dim": c.embed_dim, "num_embeddings": c.num_embeddings, "double_latent": False,
          "latent_channels": c.latent_channels, "resolution": c.resolution, "in_channels": c.in_channels,
          "base_channels": c.base_channels, "channel_multiplier": list(c.channel_multiplier),
          "num_res_blocks": c.num_res_blocks, "attn_resolutions": list(c.attn_resolutions), "dropout": 0.0,
          "attn_type": "vanilla"}


def _check_codes(num_embeddings, vocab, where):
  if num_embeddings != vocab.num_image_codes:
    raise ConversionError(
        f"{where} has {num_embeddings} codes; the vocabulary has {vocab.num_image_codes} image ids (vq.num_codes)")


def read_tokenizer(tokenizer_dir, vocab):
  """(params, config.vqgan) of a tokenizer directory (vq_weights.save_tokenizer's), checked to be one that
  transformers' ChameleonVQVAE reproduces and whose codes are `vocab`'s image codes."""
  params, config = vq_weights.load_tokenizer(tokenizer_dir)
  if config.norm_groups != HF_NORM_GROUPS:
    raise ConversionError(
        f"{tokenizer_dir}/config.json: vqgan.norm_groups={config.norm_groups}; transformers' ChameleonVQVAE "
        f"hard-codes GroupNorm with {HF_NORM_GROUPS} groups")
  _check_codes(config.num_embeddings, vocab, f"{tokenizer_dir}/config.json: vqgan.num_embeddings")
  return params, config


def write_tokenizer(params, config, out_dir) -> tuple[dict, dict, int]:
  """Write the encoder, quantizer and quant convs as `model.vqmodel.*` (VQ_SHARD) and the decoder with
  post_quant_conv beside them (DECODER_FILE, DECODER_CONFIG). Returns (vq_config, index weight_map entries,
  their bytes)."""
  state = vq_weights.export_state_dict(params)
  encoder = {VQ_PREFIX + k: v for k, v in state.items() if not k.startswith("decoder.")}
  decoder = {k: v for k, v in state.items() if k.startswith(DECODER_KEYS)}
  save_file(encoder, os.path.join(out_dir, VQ_SHARD), metadata={"format": "pt"})
  save_file(decoder, os.path.join(out_dir, DECODER_FILE), metadata={"format": "pt"})
  with open(os.path.join(out_dir, DECODER_CONFIG), "w") as f:
    json.dump(vq_weights.config_to_json(config), f, indent=1, sort_keys=True)
  return hf_vq_config(config), dict.fromkeys(encoder, VQ_SHARD), sum(v.nbytes for v in encoder.values())


def has_decoder(hf_dir) -> bool:
  return os.path.isfile(os.path.join(hf_dir, DECODER_FILE))


def _config(hf_dir, hf: dict):
  """config.vqgan: vq_config's dims, plus norm_groups and beta from DECODER_CONFIG when the directory has it."""
  if not isinstance(hf.get("vq_config"), dict):
    raise ConversionError(f"{hf_dir}/config.json has no vq_config")
  from_hf = vq_weights.config_from_hf(hf["vq_config"], norm_groups=HF_NORM_GROUPS)
  if not has_decoder(hf_dir):
    return from_hf
  if not os.path.isfile(os.path.join(hf_dir, DECODER_CONFIG)):
    raise ConversionError(f"{hf_dir} has {DECODER_FILE} but not its config {DECODER_CONFIG}")
  with open(os.path.join(hf_dir, DECODER_CONFIG)) as f:
    ours = vq_weights.config_from_hf(json.load(f))
  for key in HF_KEYS:
    if tuple(np.atleast_1d(ours[key])) != tuple(np.atleast_1d(from_hf[key])):
      raise ConversionError(f"{hf_dir}: {DECODER_CONFIG} has {key}={ours[key]!r}, config.json "
                                         f"vq_config.{key}={from_hf[key]!r}")
  return ours


def _expected_shapes(shapes) -> dict:
  """torch key -> transformers' (OIHW) shape for every param of our tokenizer."""
  flat = traverse_util.flatten_dict(shapes)
  return {vq_weights.torch_key(p): tuple(s.shape[i] for i in (3, 2, 0, 1)) if p[-1] == "kernel" else tuple(s.shape)
          for p, s in flat.items()}


def _read_all(names_shapes: dict, files: dict, where) -> dict:
  """{name: float32 array}, each checked against its header shape first; errors name the tensor."""
  out = {}
  for name, shape in names_shapes.items():
    out[name] = tensors.read(files, Tensor(name, name, None, shape, shape, "reshape"), where)
  return out


def import_tokenizer(hf_dir, out_dir, vocab=None) -> bool:
  """Write our tokenizer directory (vq_weights.load_tokenizer reads it) from `hf_dir`'s `model.vqmodel.*`
  tensors and, when present, our decoder file. Returns whether the decoder was imported; without it the decoder's
  weights are zeros (encoding works; decoding gives a flat gray image), written so that load_tokenizer reads it."""
  config = _config(hf_dir, tensors.read_config(hf_dir))
  vqgan.validate(config)
  if vocab is not None:
    _check_codes(config.num_embeddings, vocab, f"{hf_dir}/config.json: vq_config.num_embeddings")
  shapes = jax.eval_shape(lambda: vqgan.init_params(config, jax.random.key(0)))
  expected = _expected_shapes(shapes)
  files = tensors.tensor_files(hf_dir)
  vq_names = {n for n in files if n.startswith(VQ_PREFIX)}
  if not vq_names:
    raise ConversionError(f"{hf_dir} holds no {VQ_PREFIX}* tensors (an export without "
                                       "--vq_tokenizer): there is no tokenizer to import")
  wanted = {VQ_PREFIX + k: s for k, s in expected.items() if not k.startswith("decoder.")}
  unexpected = sorted(vq_names - set(wanted))
  if unexpected:
    raise ConversionError(f"{hf_dir}: VQ tensors that vq_config's ChameleonVQVAE does not have: "
                                       f"{unexpected[:5]}")
  state = {k[len(VQ_PREFIX):]: v for k, v in _read_all(wanted, files, hf_dir).items()}
  decoder = has_decoder(hf_dir)
  if decoder:
    path = os.path.join(hf_dir, DECODER_FILE)
    decoder_files = tensors.file_headers(path)
    extra = sorted(set(decoder_files) - {k for k in expected if k.startswith(DECODER_KEYS)})
    if extra:
      raise ConversionError(f"{path}: tensors that are not our decoder's: {extra[:5]}")
    decoder_state = _read_all({k: s for k, s in expected.items() if k.startswith(DECODER_KEYS)}, decoder_files, path)
    for key in (k for k in decoder_state if k.startswith("post_quant_conv.")):
      if not np.array_equal(decoder_state[key], state[key]):
        raise ConversionError(f"{path}: tensor {key} differs from {VQ_PREFIX}{key}")
    state.update(decoder_state)
    template = shapes
  else:
    # zeros, not an init: a random decoder would pass for a trained one, and its init compiles the whole VQGAN
    template = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)
  params = vq_weights.import_state_dict(state, template, allow_missing=() if decoder else ("decoder.",))
  vq_weights.save_tokenizer(params, config, out_dir)
  return decoder


def import_chameleon(path: str, template):
  """A transformers `ChameleonVQVAE` or whole Chameleon checkpoint (file or directory; only its tokenizer's tensors
  are read) -> params like `template`; the decoder keeps `template`'s values when the checkpoint has none
  (transformers' converter drops it)."""
  state = vq_weights.load_state_dict(path, prefixes=CHECKPOINT_PREFIXES) or vq_weights.load_state_dict(path)
  return vq_weights.import_state_dict(state, template, allow_missing=ENCODE_ONLY_MISSING)
