"""Bridges to other tools. Each submodule imports its tool, so nothing here is imported by ``adafuse`` itself.

* :mod:`adafuse.integrations.lm_eval` - the lm-evaluation-harness model ``adafuse``.
"""
