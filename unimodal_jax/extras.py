"""Optional dependencies, imported where they are needed with a message naming the extra that installs them."""
import importlib

EXTRAS = {  # module -> the setup.py extra that installs it
    "tensorflow_datasets": "tfds",
    "torch": "torch",
    "transformers": "torch",
    "libtpu": "tpu",
}


class MissingExtraError(ModuleNotFoundError):
  """An optional dependency is not installed; the message names the pip extra."""


def require(module: str, purpose: str):
  """`importlib.import_module(module)`, or MissingExtraError saying which extra `purpose` needs."""
  try:
    return importlib.import_module(module)
  except ModuleNotFoundError as e:
    if e.name != module.split(".")[0]:
      raise
    extra = EXTRAS[module.split(".")[0]]
    raise MissingExtraError(f"{purpose} needs {module.split('.')[0]}: pip install 'unimodal_jax[{extra}]'",
                            name=e.name) from e
