"""SMPL-format body models: file loading without chumpy, linear blend skinning, joint layouts."""
