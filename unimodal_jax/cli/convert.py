"""`unimodal-convert`: a run's checkpoint -> a transformers Chameleon directory (to-hf), and back (from-hf); a
(Mixture-of-Transformers) run's checkpoint -> a PyTorch directory in BAGEL's naming (to-torch), and back (from-torch).

  unimodal-convert to-hf --config configs/tiny.py --checkpoint runs/tiny/checkpoints/20 --out_dir hf/tiny \
      --vq_tokenizer runs/vq/tokenizer
  unimodal-convert from-hf --hf_dir hf/tiny --out_dir runs/imported/init --config configs/tiny.py \
      --vq_out runs/imported/tokenizer
  unimodal-convert to-torch --config configs/mot_tiny.py --checkpoint runs/mot/checkpoints/20 --out_dir pt/mot
  unimodal-convert from-torch --torch_dir pt/mot --out_dir runs/mot_imported/init --config configs/mot_tiny.py

Each prints its time and peak RSS; --self_check then compares logits with transformers or with the PyTorch MoT
reference (convert/torch_mot.py); it needs torch.
"""
import resource
import shlex
import sys
import time

import tokenizers
from absl import app, flags, logging
from ml_collections import config_flags

from unimodal_jax import config as config_lib
from unimodal_jax.cli import common
from unimodal_jax.convert import checkpoint, hf_chameleon, hf_vq, mot, parity, tensors, vocab_map
from unimodal_jax.data import vocab as vocab_lib

COMMANDS = ("to-hf", "from-hf", "to-torch", "from-torch")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A configs/*.py file. to-hf, to-torch: the run's (required). from-hf, from-torch: the config "
    "the imported model should fit; the flags it lacks are printed (default: config.default_config()).",
    lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None,
                                  "to-hf, to-torch: a checkpoint step directory, <workdir>/checkpoints/<step>.")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "from-hf: a transformers ChameleonForConditionalGeneration directory.")
_TORCH_DIR = flags.DEFINE_string("torch_dir", None, "from-torch: a directory that to-torch wrote.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "to-hf, to-torch: the directory to write. from-hf, from-torch: the "
                               "checkpoint step directory to write (its state/ holds the params).")
_TEXT_TOKENIZER = flags.DEFINE_string("text_tokenizer", None, "to-hf: our BPE tokenizer.json, whose tokens name the "
                                      "text ids in the vocabulary_map (default: placeholder names).")
_LAYOUT_FROM = flags.DEFINE_string("layout_from", None, "to-hf: a transformers Chameleon directory whose token ids to "
                                   "export into, e.g. the one the run was imported from (default: our ids).")
_VQ_TOKENIZER = flags.DEFINE_string("vq_tokenizer", None, "to-hf: our VQGAN tokenizer directory (unimodal-train-vq's "
                                    "<workdir>/tokenizer); its encoder becomes model.vqmodel.*, its decoder is written "
                                    "beside (default: no VQ weights).")
_VQ_OUT = flags.DEFINE_string("vq_out", None, "from-hf: write the checkpoint's VQ tokenizer here as our tokenizer "
                              "directory (config.vq.tokenizer_path); encoder-only without vq_decoder.safetensors.")
_MAX_SHARD_GB = flags.DEFINE_float("max_shard_gb", 2.0, "to-hf, to-torch: the largest safetensors shard, in GB.")
_SELF_CHECK = flags.DEFINE_bool("self_check", False, "Compare the logits of both models on a random batch.")
_TOLERANCE = flags.DEFINE_float("tolerance", 1e-4, "--self_check: the largest relative logit error that passes.")


def _required(flag):
  if flag.value is None:
    raise app.UsageError(f"--{flag.name} is required here")
  return flag.value


def _text_token_names(path):
  if path is None:
    return None
  tokenizer = tokenizers.Tokenizer.from_file(path)
  return [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]


def to_hf():
  """Returns what --self_check needs: model config, vocab, a loader of our params, the transformers dir."""
  config, out_dir = _required(_CONFIG), _required(_OUT_DIR)
  params = checkpoint.read_params(_required(_CHECKPOINT))
  layout = None
  if _LAYOUT_FROM.value:
    layout = vocab_map.layout_from_config(tensors.read_config(_LAYOUT_FROM.value))
  vocab = vocab_lib.from_config(config)
  hf_chameleon.to_hf(params, config.model, vocab, out_dir, text_token_names=_text_token_names(_TEXT_TOKENIZER.value),
                     layout=layout, vq_tokenizer_dir=_VQ_TOKENIZER.value,
                     max_shard_bytes=int(_MAX_SHARD_GB.value * 1e9), progress=True)
  print(f"wrote {out_dir}: ChameleonForConditionalGeneration.from_pretrained({out_dir!r}) loads it")
  if _VQ_TOKENIZER.value:
    print(f"VQ tokenizer {_VQ_TOKENIZER.value}: encoder, quantizer and quant convs as model.vqmodel.* in "
          f"{hf_vq.VQ_SHARD}; our decoder (transformers has none) in {hf_vq.DECODER_FILE} + {hf_vq.DECODER_CONFIG}")
  else:
    print("no VQ weights were written (no --vq_tokenizer): transformers initialises model.vqmodel randomly")
  return config.model, vocab, lambda: checkpoint.load_all(params), out_dir


def run_flags(config, overrides: dict, vocab) -> list[str]:
  """The --config.* flags that make `config` fit an imported model."""
  wanted = {f"model.{k}": v for k, v in overrides.items()}
  wanted.update({"vocab.text_size": vocab.text_size, "vq.num_codes": vocab.num_image_codes})
  current = {key: config[key.split(".")[0]][key.split(".")[1]] for key in wanted}
  return [shlex.quote(f"--config.{key}={value}") for key, value in wanted.items() if current[key] != value]


def fits_line(missing: list[str]) -> str:
  """How the given --config fits the imported model; the flags on a line of their own, so they paste as they are."""
  return "The model fits --config with these flags:\n  " + " ".join(missing) + "\n" if missing else \
      "The model fits --config as given.\n"


def from_hf():
  """Like to_hf(), for the other direction."""
  hf_dir, out_dir = _required(_HF_DIR), _required(_OUT_DIR)
  params, overrides, vocab = hf_chameleon.from_hf(hf_dir, vq_out=_VQ_OUT.value, progress=True)
  state_dir = checkpoint.write_params(params, out_dir)
  if _VQ_OUT.value:
    print(f"wrote the VQ tokenizer to {_VQ_OUT.value} (--config.vq.tokenizer_path): " + (
        "encoder, quantizer and decoder" if hf_vq.has_decoder(hf_dir) else
        f"ENCODER ONLY, {hf_dir} has no {hf_vq.DECODER_FILE}; its decoder weights are zeros"))
  config = _CONFIG.value or config_lib.default_config()
  missing = run_flags(config, overrides, vocab)
  print(f"wrote {state_dir} ({vocab}).\n{fits_line(missing)}A dense run starts from it with "
        f"--config.train.init_from={out_dir}, a MoT run with --config.train.upcycle_from={out_dir} (docs/convert.md).")
  model_config = config.model.copy_and_resolve_references()
  model_config.update(overrides)
  return model_config, vocab, lambda: params, hf_dir


def peak_rss_mib() -> float:
  """This process's peak resident memory. VmHWM where /proc has it: unlike ru_maxrss, it does not start from
  the parent's peak when a process is forked and exec'd."""
  try:
    with open("/proc/self/status") as f:
      return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
  except OSError:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def to_torch():
  """Like to_hf(), for the PyTorch (MoT) layout."""
  config, out_dir = _required(_CONFIG), _required(_OUT_DIR)
  params = checkpoint.read_params(_required(_CHECKPOINT))
  vocab = vocab_lib.from_config(config)
  mot.to_torch(params, config.model, vocab, out_dir, max_shard_bytes=int(_MAX_SHARD_GB.value * 1e9), progress=True)
  print(f"wrote {out_dir}: unimodal_jax.convert.torch_mot.load({out_dir!r}) loads it")
  return config.model, vocab, lambda: checkpoint.load_all(params), out_dir


def from_torch():
  """Like from_hf(), for the PyTorch (MoT) layout."""
  torch_dir, out_dir = _required(_TORCH_DIR), _required(_OUT_DIR)
  params, overrides, vocab = mot.from_torch(torch_dir, progress=True)
  state_dir = checkpoint.write_params(params, out_dir)
  config = _CONFIG.value or config_lib.default_config()
  missing = run_flags(config, overrides, vocab)
  print(f"wrote {state_dir} ({vocab}).\n{fits_line(missing)}A run starts from it with "
        f"--config.train.init_from={out_dir} (docs/convert.md).")
  model_config = config.model.copy_and_resolve_references()
  model_config.update(overrides)
  return model_config, vocab, lambda: params, torch_dir


def main(args):
  if len(args) != 1 or args[0] not in COMMANDS:
    raise app.UsageError(f"usage: unimodal-convert {{{','.join(COMMANDS)}}} --flags (got {args})")
  start = time.perf_counter()
  command = {"to-hf": to_hf, "from-hf": from_hf, "to-torch": to_torch, "from-torch": from_torch}[args[0]]
  model_config, vocab, load_params, hf_dir = command()
  print(f"{args[0]}: {time.perf_counter() - start:.1f} s, peak RSS {peak_rss_mib():.0f} MiB")
  if _SELF_CHECK.value:
    from transformers.utils import logging as transformers_logging  # the torch extra: only the self-check needs it
    transformers_logging.set_verbosity_error()  # its load report lists VQ weights an export without --vq_tokenizer lacks
    if args[0].endswith("torch"):
      error, reference = parity.max_relative_error_torch(hf_dir, load_params(), model_config, vocab), "torch_mot"
    else:
      error, reference = parity.max_relative_error(hf_dir, load_params(), model_config, vocab), "transformers"
    verdict = "passed" if error <= _TOLERANCE.value else "FAILED"
    print(f"self-check {verdict}: max relative logit error vs {reference} {error:.2e} (tolerance {_TOLERANCE.value})")
    if verdict == "FAILED":
      sys.exit(1)


def run():
  # orbax warns that a step's state/ has no metadata of its own (a run keeps it one level up)
  common.run(sys.modules[__name__], main, max_positional=1, verbosity=logging.ERROR)


if __name__ == "__main__":
  run()
