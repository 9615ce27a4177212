"""unimodal_jax: pretrain early-fusion multimodal token models (Chameleon-style, MoT) with JAX/Flax."""
