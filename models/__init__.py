"""Models of stages I-III: presets, speech encoder + adapter, S2T, T2C/Echo decoders, save/load.

Import the submodules directly (`from models.s2t import build_s2t`); this package imports nothing heavy.
"""
