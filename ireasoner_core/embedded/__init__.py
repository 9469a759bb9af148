"""The embedded default model: a tiny Qwen2.5-VL built from scratch on this machine.

``tokenizer`` trains the BPE and chat template, ``architecture`` shapes the config and processor,
``corpus`` renders the synthetic QA as the two roles' targets, ``warmstart`` fine-tunes the model
on them, and ``build`` writes a complete model directory. ``ireasoner_core.model`` caches and loads it.
"""
