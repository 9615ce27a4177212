"""The embedded default dataset: real text and images that ship inside installed packages, nothing downloaded.

Text is the standard library's `pydoc_data.topics`; images are scikit-image's bundled samples with
hand-written captions. `prepare` fits the text tokenizer (and, for vq.kind='kmeans', a k-means codebook) on them,
or codes the photos with the VQGAN at vq.tokenizer_path, and writes ArrayRecord shards (`data/documents.py`).
"""
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np
import pydoc_data.topics
import skimage.data
from etils import epath

from unimodal_jax.data import documents
from unimodal_jax.data import tokenizer as tokenizer_lib
from unimodal_jax.data import vocab as vocab_lib
from unimodal_jax.vq import codes as codes_lib
from unimodal_jax.vq import images as images_lib
from unimodal_jax.vq import kmeans

BUILD_VERSION = 3  # bump when the documents built from the same config change
NUM_SHARDS = 4
KINDS = documents.KINDS
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
CODEBOOK_FILE = "codebook.npz"
IMAGES_PER_INTERLEAVED = 3
INTERLEAVED_INTRO = "Pictures from the scikit-image sample collection, each followed by its caption."
CROP = 0.85  # side of the zoomed variant, as a fraction of the centre square

# (skimage.data loader, index into its result or None, caption true of the centre square and its variants)
IMAGES = (
    ("astronaut", None, "An astronaut in an orange spacesuit smiling, with a model of the space shuttle behind her."),
    ("brick", None, "A grayscale photo of a brick wall."),
    ("camera", None, "A grayscale photo of a man in a dark coat looking through a camera on a tripod."),
    ("cell", None, "A grayscale microscope image of a single round cell."),
    ("checkerboard", None, "A black and white checkerboard."),
    ("chelsea", None, "A close-up of a ginger tabby cat's face."),
    ("clock", None, "A motion-blurred grayscale photo of a wall clock."),
    ("coffee", None, "A cup of coffee on a red saucer with a spoon, on a wooden table."),
    ("coins", None, "A grayscale photo of rows of old coins on a dark background."),
    ("colorwheel", None, "A color wheel: a disc of rainbow hues that fade to white at its center, on black."),
    ("grass", None, "A grayscale close-up of grass."),
    ("gravel", None, "A grayscale close-up of gravel."),
    ("horse", None, "A black silhouette of a standing horse on a white background."),
    ("hubble_deep_field", None, "The Hubble Deep Field: many small, faint galaxies on a black sky."),
    ("immunohistochemistry", None, "A microscope image of tissue stained brown and blue."),
    ("logo", None, "The scikit-image logo: a snake in a circle of green and orange."),
    ("microaneurysms", None, "A grayscale close-up of a retina, with thin dark blood vessels."),
    ("moon", None, "A grayscale photo of the surface of the Moon."),
    ("page", None, "A grayscale photo of a page of printed English text."),
    ("retina", None, "A color photo of the back of a human eye: an orange-red retina with branching blood vessels."),
    ("rocket", None, "A white rocket standing on its launch pad at night."),
    ("shepp_logan_phantom", None, "The Shepp-Logan phantom: grey ellipses inside a white oval on black, a test image "
     "for CT scans."),
    ("text", None, "A grayscale photo of handwritten mathematical formulas."),
    ("stereo_motorcycle", 0, "A red motorcycle parked in a garage."),
    ("lfw_subset", 0, "A small grayscale photo of a man's face with his mouth open."),
    ("lfw_subset", 1, "A small grayscale photo of a smiling man's face."),
    ("lfw_subset", 3, "A small grayscale photo of a man's face, seen from the front."),
    ("lfw_subset", 6, "A small grayscale photo of an older man's face."),
)


def texts() -> list[str]:
  """The text corpus: pydoc topics in sorted topic order."""
  return [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]


def sample_image(name: str, index) -> np.ndarray:
  """The scikit-image sample `name` (item `index` of a collection such as lfw_subset) as shipped: any dtype/channels."""
  image = getattr(skimage.data, name)()
  return image if index is None else image[index]


def load_images(image_size: int) -> tuple[np.ndarray, list[str]]:
  """uint8 [4 * len(IMAGES), image_size, image_size, 3] and the caption of each.

  Per sample (`vq/images.prepare`, as every image path of the package): the centre square, its mirror image, a CROP
  zoom, and the zoom mirrored.
  """
  images, captions = [], []
  for name, index, caption in IMAGES:
    image = sample_image(name, index)
    full, zoom = (images_lib.prepare(image, image_size, crop=c)[0] for c in (1.0, CROP))
    images += [full, full[:, ::-1], zoom, zoom[:, ::-1]]
    captions += [caption] * 4
  return np.stack(images), captions


def build_documents(text_tok: tokenizer_lib.TextTokenizer, codes: np.ndarray, captions: list[str],
                    seed: int) -> list[documents.Document]:
  """Text documents, one image_text_pair per image and interleaved documents, in a seeded random order.

  `codes` [N, grid, grid] pairs with `captions`; the pipeline's task stage picks each pair's order.
  """
  text_ids = {c: text_tok.encode(c) for c in set(captions)}
  docs = [documents.Document("text", (text_tok.encode(t),)) for t in texts()]
  docs += [documents.Document("image_text_pair", (text_ids[c], image)) for image, c in zip(codes, captions)]
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(captions))
  intro = text_tok.encode(INTERLEAVED_INTRO)
  for start in range(0, len(order) - IMAGES_PER_INTERLEAVED + 1, IMAGES_PER_INTERLEAVED):
    group = order[start:start + IMAGES_PER_INTERLEAVED]
    docs.append(documents.Document(
        "interleaved", (intro, *[s for i in group for s in (codes[i], text_ids[captions[i]])])))
  return [docs[i] for i in rng.permutation(len(docs))]


def image_tokenizer_entry(config) -> dict:
  """Which image tokenizer codes the photos: a k-means codebook fitted here, or a saved VQGAN by content hash."""
  if config.vq.kind == "kmeans":
    return {"kind": "kmeans"}
  path = config.vq.tokenizer_path if "://" in config.vq.tokenizer_path else os.path.abspath(config.vq.tokenizer_path)
  return {"kind": config.vq.kind, "path": path, "sha256": codes_lib.fingerprint(path)}


def _build_key(config) -> str:
  """Hash of every config value the shards depend on (not data.seq_len: splitting happens at load time)."""
  tokenizer = {k: v for k, v in image_tokenizer_entry(config).items() if k != "path"}  # moved copies still match
  keys = {"build_version": BUILD_VERSION, "seed": config.seed, "vocab.text_size": config.vocab.text_size,
          "vq.kind": config.vq.kind, "vq.image_size": config.vq.image_size, "vq.patch_size": config.vq.patch_size,
          "vq.num_codes": config.vq.num_codes, "vq.tokenizer": tokenizer}
  return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()


def shard_names() -> list[str]:
  return [f"train-{i:05d}-of-{NUM_SHARDS:05d}.array_record" for i in range(NUM_SHARDS)]


def _file_names(kind: str) -> list[str]:
  """The files a build writes: a VQGAN build keeps no codebook (the manifest names the tokenizer)."""
  return [TOKENIZER_FILE, *([CODEBOOK_FILE] if kind == "kmeans" else []), *shard_names()]


def _read_manifest(data_dir: str) -> dict | None:
  try:
    return json.loads((epath.Path(data_dir) / MANIFEST).read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def _ready(data_dir: str, key: str, kind: str) -> bool:
  manifest = _read_manifest(data_dir)
  return (manifest is not None and manifest.get("key") == key
          and all((epath.Path(data_dir) / n).exists() for n in _file_names(kind)))


def encode_images(config, images: np.ndarray, out_dir: str) -> np.ndarray:
  """int32 codes [N, grid, grid] of the photos: a k-means codebook fitted on them (saved to out_dir) or the VQGAN."""
  if config.vq.kind == "kmeans":
    image_tok = kmeans.KMeansTokenizer.fit(images, config.vq.num_codes, config.vq.patch_size, config.seed)
    image_tok.save(os.path.join(out_dir, CODEBOOK_FILE))
    return image_tok.encode(images).astype(np.int32)
  return codes_lib.image_tokenizer(config)(images)


def _build(config, out_dir: str) -> dict:
  """Writes tokenizer, codebook (k-means) and shards into out_dir; returns the manifest's summary of them."""
  vocab = vocab_lib.from_config(config)
  text_tok = tokenizer_lib.TextTokenizer.train(texts(), config.vocab.text_size)
  text_tok.check_fits(vocab)
  images, captions = load_images(config.vq.image_size)
  docs = build_documents(text_tok, encode_images(config, images, out_dir), captions, config.seed)
  text_tok.save(os.path.join(out_dir, TOKENIZER_FILE))
  documents.write_shards(docs, [os.path.join(out_dir, n) for n in shard_names()])
  return {"documents": {k: sum(d.kind == k for d in docs) for k in KINDS},
          "tokens": int(sum(len(documents.render(d.segments, vocab)) for d in docs)),
          "text_tokenizer_size": text_tok.size, "image_tokenizer": image_tokenizer_entry(config)}


def prepare(config, data_dir: str) -> list[str]:
  """Train shard paths in data_dir, built on the first call for this config and reused afterwards.

  The build goes to a local temporary folder (inside data_dir when it is local); files move (or, to gs://..., are
  uploaded) into data_dir and the manifest comes last, so an interrupted build is never taken for a finished one.
  """
  directory = epath.Path(data_dir)
  local = "://" not in data_dir
  directory.mkdir(parents=True, exist_ok=True)
  key = _build_key(config)
  paths = [str(directory / n) for n in shard_names()]
  if _ready(data_dir, key, config.vq.kind):
    return paths
  for name in (MANIFEST, CODEBOOK_FILE):  # a stale codebook would outlive a VQGAN rebuild
    if (directory / name).exists():
      (directory / name).unlink()
  tmp = tempfile.mkdtemp(prefix=".build-", dir=data_dir if local else None)
  try:
    summary = _build(config, tmp)
    with open(os.path.join(tmp, MANIFEST), "w") as f:
      json.dump({"key": key, "shards": shard_names(), **summary}, f, indent=2)
    for name in [*_file_names(config.vq.kind), MANIFEST]:
      if local:
        os.replace(os.path.join(tmp, name), directory / name)
      else:
        with open(os.path.join(tmp, name), "rb") as f:
          (directory / name).write_bytes(f.read())
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return paths


def load_tokenizers(data_dir: str, vocab: vocab_lib.Vocab | None = None):
  """(TextTokenizer, image tokenizer) of a `prepare`d folder: the KMeansTokenizer it fitted, or a VQGANTokenizer
  for the VQGAN its manifest names (both have grid_size, encode, decode); with `vocab`, checks the text ids fit it."""
  text_tok = tokenizer_lib.TextTokenizer.load(str(epath.Path(data_dir) / TOKENIZER_FILE), vocab)
  entry = (_read_manifest(data_dir) or {}).get("image_tokenizer", {"kind": "kmeans"})
  if entry["kind"] == "kmeans":
    return text_tok, kmeans.KMeansTokenizer.load(str(epath.Path(data_dir) / CODEBOOK_FILE))
  if codes_lib.fingerprint(entry["path"]) != entry["sha256"]:
    raise ValueError(f"{epath.Path(data_dir) / MANIFEST}: the VQGAN at {entry['path']} changed since the build "
                     f"(sha256 {entry['sha256']}); rerun `prepare` with its config")
  return text_tok, codes_lib.VQGANTokenizer(entry["path"])
