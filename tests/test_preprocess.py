"""One image preprocessing (`vq/images.prepare`) behind every path: the embedded dataset, unimodal-make-shards,
unimodal-tokenize and VQ training see the same pixels, so the same photo gets the same codes on each path."""
import numpy as np
import pytest
from PIL import Image

from test_tokenize import RESOLUTION, read_documents, tokenizer_dir  # noqa: F401  (a random 16px VQGAN, 4x4 codes)
from unimodal_jax import config as config_lib
from unimodal_jax.data import embedded, photos
from unimodal_jax.data import tokenizer as tokenizer_lib
from unimodal_jax.ingest import build, encoders, sources
from unimodal_jax.vq import codes
from unimodal_jax.vq import images as images_lib

# a grayscale, an RGB and an RGBA sample (in sorted order, as a folder is read): PNG files decode to the arrays
# scikit-image ships
SAMPLES = ("camera", "chelsea", "logo")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("photos")
  for name in SAMPLES:
    Image.fromarray(embedded.sample_image(name, None)).save(root / f"{name}.png")
    (root / f"{name}.txt").write_text(f"A photo named {name}.")
  return root


def lm_config(tokenizer_path):
  c = config_lib.default_config()
  c.vq.kind, c.vq.tokenizer_path = "vqgan", tokenizer_path
  c.vq.image_size, c.vq.patch_size, c.vq.num_codes = RESOLUTION, 4, 32
  c.vocab.text_size = 300
  return c


def test_the_four_paths_give_the_same_pixels_and_codes_for_the_same_photo(folder, tokenizer_dir, tmp_path):  # noqa
  config = lm_config(tokenizer_dir)
  encode = codes.image_tokenizer(config)
  index = {n: i for i, (n, _, _) in enumerate(embedded.IMAGES)}

  all_images, _ = embedded.load_images(RESOLUTION)  # 4 variants per sample; the first is the centre square
  pixels = {"embedded": np.stack([all_images[4 * index[n]] for n in SAMPLES])}
  pixels["files"] = np.stack([images_lib.prepare((folder / f"{n}.png").read_bytes(), RESOLUTION)[0] for n in SAMPLES])
  crops = photos.PhotoCrops(RESOLUTION, seed=0, images=[(n, (folder / f"{n}.png").read_bytes()) for n in SAMPLES])
  pixels["train-vq (files)"] = crops.eval_images()
  shipped = photos.PhotoCrops(RESOLUTION, seed=0)
  pixels["train-vq (embedded)"] = np.stack([shipped.eval_images()[shipped.names.index(n)] for n in SAMPLES])
  for name, p in pixels.items():
    np.testing.assert_array_equal(p, pixels["embedded"], err_msg=name)
  want = encode(pixels["embedded"])
  assert len({w.tobytes() for w in want}) == len(SAMPLES)  # distinct photos, distinct codes: a mix-up would show

  got = {}
  text_tok = _text_tokenizer(tmp_path)
  tok, plan = encoders.from_config(config, text_tok)  # unimodal-make-shards
  build.write_documents(sources.FolderSource(str(folder)), str(tmp_path / "docs"), tok, plan=plan, progress=False)
  got["make-shards"] = np.stack([d.segments[1] for d in read_documents(tmp_path / "docs")])
  tok, plan = encoders.from_vqgan(text_tok, tokenizer_dir, batch_size=8, max_document_tokens=1000)  # unimodal-tokenize
  build.write_documents(sources.FolderSource(str(folder)), str(tmp_path / "codes"), tok, plan=plan, progress=False)
  got["tokenize"] = np.stack([d.segments[1] for d in read_documents(tmp_path / "codes")])
  got["embedded"] = embedded.encode_images(config, pixels["embedded"], str(tmp_path))
  for name, g in got.items():
    np.testing.assert_array_equal(g, want, err_msg=name)


def _text_tokenizer(tmp_path) -> str:
  path = str(tmp_path / "tokenizer.json")
  tokenizer_lib.TextTokenizer.train([f"A photo named {n}." for n in SAMPLES] * 10, 300).save(path)
  return path


def test_crop_none_resizes_the_short_side_and_keeps_the_aspect():
  image = np.random.default_rng(0).integers(0, 256, (30, 60, 3), np.uint8)
  out, converted = images_lib.prepare(image, 10, crop=None)
  assert out.shape == (10, 20, 3) and converted == ""
  square, _ = images_lib.prepare(image, 10)
  assert square.shape == (10, 10, 3)


@pytest.mark.parametrize("array, mode", [
    (np.ones((8, 8), bool), "L"), (np.full((8, 8), 0.5), "L"), (np.full((8, 8, 3), 257 * 200, np.uint16), "RGB")])
def test_decoded_arrays_of_any_dtype_become_uint8_rgb(array, mode):
  out, converted = images_lib.prepare(array, 8)
  assert out.dtype == np.uint8 and out.shape == (8, 8, 3) and converted == ("" if mode == "RGB" else mode)
  expected = {"bool": 255, "float64": 128, "uint16": 200}[array.dtype.name]
  assert np.all(out == expected)


def test_an_array_that_is_not_an_image_is_skipped_with_a_reason():
  with pytest.raises(images_lib.Skip, match="not_an_image: array of shape"):
    images_lib.prepare(np.zeros((4, 4, 5), np.uint8), 8)
