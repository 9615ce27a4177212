"""KMeansTokenizer: reconstruction quality against a mean-colour baseline, determinism, and input checks."""
import numpy as np
import pytest
import skimage.data
import skimage.transform

from unimodal_jax.vq import kmeans

SIZE, PATCH = 32, 8


@pytest.fixture(scope="module")
def images():
  out = []
  for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry"):
    image = getattr(skimage.data, name)()
    side = min(image.shape[:2])
    small = skimage.transform.resize(image[:side, :side], (SIZE, SIZE), anti_aliasing=True)
    small = (small * 255).round().astype(np.uint8)
    out += [small, small[:, ::-1]]
  return np.stack(out)


def test_round_trip_beats_mean_colour_baseline(images):
  tok = kmeans.KMeansTokenizer.fit(images, num_codes=64, patch_size=PATCH, seed=0)
  recon = tok.decode(tok.encode(images))
  mse = np.mean((recon.astype(np.float64) - images) ** 2)
  baseline = np.mean((images - images.mean(axis=(1, 2), keepdims=True)) ** 2)
  assert recon.dtype == np.uint8 and recon.shape == images.shape
  assert mse < 0.3 * baseline


def test_codes_lie_in_range_on_a_row_major_grid(images):
  tok = kmeans.KMeansTokenizer.fit(images, num_codes=64, patch_size=PATCH, seed=0)
  codes = tok.encode(images)
  assert codes.dtype == np.int32 and codes.shape == (len(images), SIZE // PATCH, SIZE // PATCH)
  assert codes.min() >= 0 and codes.max() < 64
  # Row-major grid: code (r, c) is the codebook entry nearest to pixels [r*P, (r+1)*P) x [c*P, (c+1)*P).
  patch = images[0, PATCH:2 * PATCH, 2 * PATCH:3 * PATCH].reshape(-1).astype(np.float64)
  assert codes[0, 1, 2] == np.argmin(np.sum((tok.codebook - patch) ** 2, axis=1))
  np.testing.assert_array_equal(tok.decode(codes)[0, PATCH:2 * PATCH, 2 * PATCH:3 * PATCH],
                                np.rint(tok.codebook[codes[0, 1, 2]]).reshape(PATCH, PATCH, 3))

def test_fit_is_deterministic_for_a_seed(images):
  a = kmeans.KMeansTokenizer.fit(images, num_codes=32, patch_size=PATCH, seed=3)
  b = kmeans.KMeansTokenizer.fit(images, num_codes=32, patch_size=PATCH, seed=3)
  c = kmeans.KMeansTokenizer.fit(images, num_codes=32, patch_size=PATCH, seed=4)
  np.testing.assert_array_equal(a.codebook, b.codebook)
  assert not np.array_equal(a.codebook, c.codebook)


def test_save_load_round_trip(images, tmp_path):
  tok = kmeans.KMeansTokenizer.fit(images, num_codes=16, patch_size=PATCH, seed=0)
  path = str(tmp_path / "codebook")
  tok.save(path)
  loaded = kmeans.KMeansTokenizer.load(path)
  np.testing.assert_array_equal(loaded.codebook, tok.codebook)
  assert (loaded.patch_size, loaded.image_size) == (PATCH, SIZE)


def test_bad_inputs_raise(images):
  with pytest.raises(ValueError, match="uint8"):
    kmeans.KMeansTokenizer.fit(images.astype(np.float32), num_codes=16, patch_size=PATCH, seed=0)
  with pytest.raises(ValueError, match="square"):
    kmeans.KMeansTokenizer.fit(images[:, :, :24], num_codes=16, patch_size=PATCH, seed=0)
  with pytest.raises(ValueError, match="vq.patch_size"):
    kmeans.KMeansTokenizer.fit(images[:, :30, :30], num_codes=16, patch_size=PATCH, seed=0)
  with pytest.raises(ValueError, match="vq.num_codes"):
    kmeans.KMeansTokenizer.fit(images[:1], num_codes=17, patch_size=PATCH, seed=0)
  tok = kmeans.KMeansTokenizer.fit(images, num_codes=16, patch_size=PATCH, seed=0)
  with pytest.raises(ValueError, match="vq.image_size"):
    tok.encode(images[:, :16, :16])
  with pytest.raises(ValueError, match=r"\[0, 16\)"):
    tok.decode(np.full((1, 4, 4), 16))
  with pytest.raises(ValueError, match=r"\[N, 4, 4\]"):
    tok.decode(np.zeros((1, 3, 4), np.int32))
