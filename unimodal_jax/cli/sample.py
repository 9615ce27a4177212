"""`unimodal-sample`: texts, images and interleaved documents from a run's checkpoint or a transformers Chameleon
directory, with classifier-free guidance (docs/sampling.md).

  unimodal-sample --workdir runs/demo --prompt "A close-up of a ginger tabby cat's face." --mode image --cfg 3.0 \
      --num_samples 4 --seed 0 --out_dir samples/
  unimodal-sample --hf_dir hf/chameleon --prompt "Once upon a time" --mode text --temperature 0 --out_dir samples/

Writes samples.txt (one sample per line), every complete image as image_<sample>_<k>.png (when the model has an
image decoder), their grid as images.png, and the generated ids as tokens.npy; prints where.
"""
import sys

import numpy as np
from absl import app, flags
from etils import epath

from unimodal_jax.cli import common
from unimodal_jax.sample import constraints, decode, images as images_lib, load, periodic, text as text_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "A unimodal-train run directory (config.json, checkpoints/).")
_STEP = flags.DEFINE_integer("step", None, "--workdir: the checkpoint step (default: the newest).")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "Instead of --workdir: a transformers Chameleon directory (what "
                              "`unimodal-convert from-hf` reads).")
_PROMPTS = flags.DEFINE_multi_string("prompt", [""], "Prompt text after <bos>; repeat the flag for several prompts. "
                                     "'' is the null condition.")
_IMAGE = flags.DEFINE_string("image", None, "An image file placed before every prompt's text (encoded with the "
                             "model's image tokenizer).")
_MODE = flags.DEFINE_enum("mode", "text", constraints.MODES, "text: no images; image: one image per sample after "
                          "the prompt; interleaved: text that may open images.")
_NEXT = flags.DEFINE_enum("next_segment", "", decode.NEXT_SEGMENT, "--mode interleaved: 'image' opens an image right "
                          "after the prompt, 'text' starts with text.")
_CFG = flags.DEFINE_float("cfg", 0.0, "Classifier-free guidance scale of the text condition at image tokens; "
                          "0 = no guidance.")
_CFG_IMAGE = flags.DEFINE_float("cfg_image", 1.0, "With --cfg: guidance scale of an image in the prompt.")
_CD_K = flags.DEFINE_integer("cd_k", 0, "CM3Leon's CD-K at image tokens: keep ids with probability >= cd_alpha x the "
                             "cd_k-th largest; 0 = off.")
_CD_ALPHA = flags.DEFINE_float("cd_alpha", 0.1, "CD-K's alpha.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 4, "Samples per prompt.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed: one seed, one output.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Tokens to generate at most (--mode image: one image).")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature; 0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely ids; 0 = off.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass; 1 = off.")
_REPETITION = flags.DEFINE_float("repetition_penalty", 1.0, "Penalty on text ids already in the row; 1 = off.")
_TEXT_TOKENIZER = flags.DEFINE_string("text_tokenizer", "", "A tokenizer.json to use instead of the run's (its ids "
                                      "are the checkpoint's own with --hf_dir).")
_VQ_TOKENIZER = flags.DEFINE_string("vq_tokenizer", "", "--hf_dir: our VQGAN tokenizer directory to encode and "
                                    "decode images with (default: the decoder to-hf wrote beside the checkpoint).")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write samples.txt, the PNGs and tokens.npy.")
flags.mark_flag_as_required("out_dir")


def load_model() -> load.Model:
  if (_WORKDIR.value is None) == (_HF_DIR.value is None):
    raise app.UsageError("give exactly one of --workdir and --hf_dir")
  if _WORKDIR.value is not None:
    return load.from_run(_WORKDIR.value, _STEP.value, _TEXT_TOKENIZER.value)
  return load.from_hf(_HF_DIR.value, _TEXT_TOKENIZER.value, _VQ_TOKENIZER.value)


def main():
  options = decode.Options(
      mode=_MODE.value, max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
      top_p=_TOP_P.value, repetition_penalty=_REPETITION.value, cfg=_CFG.value or None, cfg_image=_CFG_IMAGE.value,
      cd_k=_CD_K.value, cd_alpha=_CD_ALPHA.value, next_segment=_NEXT.value)
  try:
    options.check()
  except ValueError as e:
    raise app.UsageError(str(e).replace("sampling option ", "--")) from e
  m = load_model()
  image = m.image_prompt_tokens(_IMAGE.value) if _IMAGE.value else None
  texts = [p for p in _PROMPTS.value for _ in range(_NUM_SAMPLES.value)]
  prompts = [text_lib.prompt(p, m.codec, image) for p in texts]
  sampler = decode.Sampler(m.model_config, m.vocab, m.grid[0] * m.grid[1], m.mesh, m.rules)
  samples = sampler.generate(m.params, prompts, options, seed=_SEED.value)
  rendered, _ = periodic.sample_rows(samples, m.vocab, m.codec, m.grid)

  out = epath.Path(_OUT_DIR.value)
  out.mkdir(parents=True, exist_ok=True)
  with (out / "tokens.npy").open("wb") as f:
    np.save(f, samples.tokens)
  (out / "samples.txt").write_text("".join(f"[{p}] {t}\n" for p, t in zip(texts, rendered)))
  print(f"wrote {len(texts)} samples to {out / 'samples.txt'} (ids in tokens.npy)")
  images = [(i, k, codes) for i, row in enumerate(samples.continuations(m.vocab))
            for k, codes in enumerate(images_lib.images_in(row, m.vocab, m.grid))]
  if images and m.decode_images is None:
    print(f"{len(images)} images generated; no image decoder to turn their codes into pixels (see tokens.npy)")
  elif images:
    pixels = m.decode_images(np.stack([codes for _, _, codes in images]))
    for (i, k, _), picture in zip(images, pixels):
      images_lib.write_png(picture, out / f"image_{i}_{k}.png")
    grid = images_lib.write_png(images_lib.grid(pixels, columns=_NUM_SAMPLES.value), out / "images.png")
    print(f"wrote {len(images)} images ({pixels.shape[1]}x{pixels.shape[2]}) as {out}/image_<sample>_<k>.png and "
          f"their grid {grid}")


def run():
  common.run(sys.modules[__name__], main)


if __name__ == "__main__":
  run()
