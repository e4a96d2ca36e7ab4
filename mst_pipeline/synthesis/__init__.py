"""Data the project makes itself, with exact homographies: people rendered from the body model
(`people`, `people_plan`, `people_truth`, `mesh_render`), synthetic hands composited on real patches
(`hands`, `hand_geometry`, `backgrounds`, `blender`), the SR lower-body source (`derive_sr`) and
simple synthetic figures (`synthetic`)."""
