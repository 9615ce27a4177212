"""Launching `unimodal-train` on TPU pods: the exact gcloud (TPU VMs, queued resources) and xpk (GKE) commands.

Each function returns command lists and runs nothing; `common.run_commands` prints or runs them.
"""
