"""Render a posed forearm + hand mesh as RGBA at the full-body set's average camera (paper App. A).

Runs inside Blender's Python: either the `bpy` module (`python render_hands.py -- --serve`) or
Blender itself (`blender -b --factory-startup -P render_hands.py -- --job job.json`). It imports
nothing from the project, only `bpy` and numpy (which Blender bundles).

A job (JSON) describes one image; the geometry is prepared by `mst render-hands`:

    mesh       .npz with `vertices` [V, 3] float (x, y in full-body units, x right, y down;
               z = depth in full-body units, smaller = nearer the camera) and `faces` [F, 3] int
    out        PNG path to write (RGBA, 8-bit, straight alpha); written atomically
    res        output size in pixels (square)
    crop       [x0, y0, side]: the full-body-space square the image covers
    engine     cycles | eevee | workbench
    samples    render samples (Cycles / EEVEE)
    threads    CPU threads (0 = automatic)
    seed       noise seed of the renderer
    skin       [r, g, b] linear base colour
    texture    image to project onto the skin (box projection), or null
    hdr        environment image (.hdr/.exr) to light with, or null for a neutral studio setup
    light      {"azimuth", "elevation", "strength", "hdr_rotation"}: lighting variation

Because the camera is orthographic and looks straight down the depth axis, a mesh vertex at
(x, y, z) lands exactly at full-body position (x, y): the camera *is* the weak-perspective
camera ᾱ, and the image pixel -> full-body map is the crop's scale + translation.

Modes:
    --job FILE     render every job of FILE (one object or a list); exit 1 if any failed
    --serve        read one job per line on stdin, answer one JSON line per job on stdout
                   ({"ok": true, "seconds": ...} or {"ok": false, "error": ...}); Blender's own
                   log goes to stderr so the protocol stream stays clean
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

import bpy
import numpy as np

# Full-body space (x right, y down, depth z) -> Blender world (X right, Y into the scene, Z up).
# (x, y, z) -> (x, z, -y) is a proper rotation, so face orientation (normals) is preserved.
CAMERA_DISTANCE = 10.0


def to_blender(vertices: np.ndarray) -> np.ndarray:
    v = np.asarray(vertices, dtype=np.float64)
    return np.stack([v[:, 0], v[:, 2], -v[:, 1]], axis=1)


def reset_scene() -> bpy.types.Scene:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


def add_mesh(scene: bpy.types.Scene, vertices: np.ndarray, faces: np.ndarray) -> bpy.types.Object:
    mesh = bpy.data.meshes.new("hand")
    verts = to_blender(vertices)
    mesh.vertices.add(len(verts))
    mesh.vertices.foreach_set("co", verts.astype(np.float32).ravel())
    faces = np.asarray(faces, dtype=np.int32)
    n = len(faces)
    mesh.loops.add(3 * n)
    mesh.loops.foreach_set("vertex_index", faces.ravel())
    mesh.polygons.add(n)
    mesh.polygons.foreach_set("loop_start", np.arange(0, 3 * n, 3, dtype=np.int32))
    mesh.polygons.foreach_set("loop_total", np.full(n, 3, dtype=np.int32))
    mesh.polygons.foreach_set("use_smooth", np.ones(n, dtype=bool))
    mesh.update()
    mesh.validate()
    obj = bpy.data.objects.new("hand", mesh)
    scene.collection.objects.link(obj)
    return obj


def load_image(path: str) -> bpy.types.Image:
    """Load an image, failing loudly: Blender would otherwise render a missing image as pink."""
    image = bpy.data.images.load(path)
    if image.size[0] == 0:  # reading the size loads the file; 0 when it could not be decoded
        raise RuntimeError(f"cannot read image {path}")
    return image


def skin_material(skin: list[float], texture: str | None, seed: int) -> bpy.types.Material:
    """Principled skin: base colour (optionally a box-projected texture), slight mottling, SSS."""
    mat = bpy.data.materials.new("skin")
    if mat.node_tree is None:  # Blender < 5 creates materials without nodes
        mat.use_nodes = True
    mat.diffuse_color = (*skin, 1.0)  # Workbench shows this colour
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = nodes.get("Principled BSDF")
    bsdf.inputs["Roughness"].default_value = 0.55
    for name, value in (("Subsurface Weight", 0.15), ("Subsurface Scale", 0.002)):
        if name in bsdf.inputs:
            bsdf.inputs[name].default_value = value
    coords = nodes.new("ShaderNodeTexCoord")
    if texture:
        img = nodes.new("ShaderNodeTexImage")
        img.image = load_image(texture)
        img.projection = "BOX"
        img.projection_blend = 0.3
        mapping = nodes.new("ShaderNodeMapping")
        mapping.inputs["Scale"].default_value = (8.0, 8.0, 8.0)
        links.new(coords.outputs["Object"], mapping.inputs["Vector"])
        links.new(mapping.outputs["Vector"], img.inputs["Vector"])
        base = img.outputs["Color"]
    else:
        rgb = nodes.new("ShaderNodeRGB")
        rgb.outputs[0].default_value = (*skin, 1.0)
        base = rgb.outputs[0]
    # Mottling: low-contrast noise in object space so the skin is not a flat colour.
    noise = nodes.new("ShaderNodeTexNoise")
    noise.noise_dimensions = "4D"  # before touching W, which exists only in 4D
    noise.inputs["Scale"].default_value = 60.0
    noise.inputs["W"].default_value = float(seed % 1000)
    ramp = nodes.new("ShaderNodeMapRange")
    ramp.inputs["To Min"].default_value = 0.85
    ramp.inputs["To Max"].default_value = 1.1
    links.new(coords.outputs["Object"], noise.inputs["Vector"])
    links.new(noise.outputs["Fac"], ramp.inputs["Value"])
    mix = nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"
    mix.blend_type = "MULTIPLY"
    mix.inputs["Factor"].default_value = 1.0
    links.new(base, mix.inputs["A"])
    links.new(ramp.outputs["Result"], mix.inputs["B"])
    links.new(mix.outputs["Result"], bsdf.inputs["Base Color"])
    return mat


def light_scene(scene: bpy.types.Scene, hdr: str | None, light: dict) -> None:
    world = bpy.data.worlds.new("world")
    scene.world = world
    if world.node_tree is None:
        world.use_nodes = True
    nodes, links = world.node_tree.nodes, world.node_tree.links
    background = nodes.get("Background")
    if hdr:
        env = nodes.new("ShaderNodeTexEnvironment")
        env.image = load_image(hdr)
        mapping = nodes.new("ShaderNodeMapping")
        mapping.inputs["Rotation"].default_value = (0.0, 0.0, float(light.get("hdr_rotation", 0.0)))
        coords = nodes.new("ShaderNodeTexCoord")
        links.new(coords.outputs["Generated"], mapping.inputs["Vector"])
        links.new(mapping.outputs["Vector"], env.inputs["Vector"])
        links.new(env.outputs["Color"], background.inputs["Color"])
        background.inputs["Strength"].default_value = float(light.get("strength", 1.0))
        return
    # Neutral studio: soft grey ambient, a key light from the camera's side and a weak rim light.
    background.inputs["Color"].default_value = (0.8, 0.8, 0.8, 1.0)
    background.inputs["Strength"].default_value = 0.35
    az, el = float(light.get("azimuth", 0.5)), float(light.get("elevation", 0.6))
    strength = float(light.get("strength", 1.0))
    for name, azimuth, elevation, energy in (("key", az, el, 3.0), ("rim", az + math.pi, 0.3, 1.2)):
        sun = bpy.data.lights.new(name, "SUN")
        sun.energy = energy * strength
        sun.angle = math.radians(20.0)
        obj = bpy.data.objects.new(name, sun)
        # Direction the light comes from, in Blender coordinates (camera looks along +Y).
        d = np.array([math.sin(azimuth) * math.cos(elevation), -math.cos(azimuth) * math.cos(elevation),
                      math.sin(elevation)])
        obj.rotation_euler = direction_to_euler(-d)
        scene.collection.objects.link(obj)


def direction_to_euler(direction: np.ndarray) -> tuple[float, float, float]:
    """Euler angles turning Blender's default light/camera axis (-Z) onto DIRECTION."""
    import mathutils

    vec = mathutils.Vector([float(x) for x in direction]).normalized()
    return tuple(vec.to_track_quat("-Z", "Y").to_euler())


def add_camera(scene: bpy.types.Scene, crop: list[float]) -> None:
    x0, y0, side = (float(c) for c in crop)
    cam = bpy.data.cameras.new("alpha_bar")
    cam.type = "ORTHO"
    cam.ortho_scale = side
    cam.clip_start = 0.01
    cam.clip_end = 2 * CAMERA_DISTANCE
    obj = bpy.data.objects.new("alpha_bar", cam)
    # Looking along +Y with +Z up: image right = +X = full-body x, image down = -Z = full-body y.
    obj.location = (x0 + side / 2, -CAMERA_DISTANCE, -(y0 + side / 2))
    obj.rotation_euler = (math.pi / 2, 0.0, 0.0)
    scene.collection.objects.link(obj)
    scene.camera = obj


def engine_id(name: str) -> str:
    items = {i.identifier for i in bpy.types.RenderSettings.bl_rna.properties["engine"].enum_items}
    if name == "cycles":
        return "CYCLES"
    if name == "workbench":
        return "BLENDER_WORKBENCH"
    if name == "eevee":
        for ident in ("BLENDER_EEVEE", "BLENDER_EEVEE_NEXT"):
            if ident in items:
                return ident
    raise ValueError(f"unknown engine {name!r} (cycles, eevee, workbench)")


def configure_render(scene: bpy.types.Scene, job: dict) -> None:
    r = scene.render
    r.engine = engine_id(job["engine"])
    r.resolution_x = r.resolution_y = int(job["res"])
    r.resolution_percentage = 100
    r.film_transparent = True
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGBA"
    r.image_settings.color_depth = "8"
    threads = int(job.get("threads", 0))
    r.threads_mode = "FIXED" if threads > 0 else "AUTO"
    if threads > 0:
        r.threads = threads
    scene.view_settings.view_transform = "Standard"
    samples = int(job.get("samples", 16))
    if r.engine == "CYCLES":
        scene.cycles.device = "CPU"
        scene.cycles.samples = samples
        scene.cycles.seed = int(job["seed"]) % (2**31)
        scene.cycles.use_adaptive_sampling = False
        scene.cycles.use_denoising = False
        scene.cycles.max_bounces = 4
    elif r.engine.startswith("BLENDER_EEVEE"):
        scene.eevee.taa_render_samples = samples
    else:
        shading = scene.display.shading
        shading.light = "STUDIO"
        shading.color_type = "MATERIAL"
        scene.display.render_aa = "8"


def render_job(job: dict) -> float:
    start = time.perf_counter()
    data = np.load(job["mesh"])
    scene = reset_scene()
    obj = add_mesh(scene, data["vertices"], data["faces"])
    obj.data.materials.append(skin_material(list(job["skin"]), job.get("texture"), int(job["seed"])))
    light_scene(scene, job.get("hdr"), job.get("light", {}))
    add_camera(scene, job["crop"])
    configure_render(scene, job)
    out = job["out"]
    tmp = out + ".tmp.png"  # Blender keeps a .png suffix; renamed only once complete
    scene.render.filepath = tmp
    bpy.ops.render.render(write_still=True)
    if not os.path.exists(tmp):
        raise RuntimeError("Blender rendered but wrote no image")
    os.replace(tmp, out)
    return time.perf_counter() - start


def serve() -> int:
    # Keep the protocol on the original stdout; everything Blender prints goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            seconds = render_job(json.loads(line))
            answer = {"ok": True, "seconds": seconds}
        except Exception as e:  # a failed job is reported; the worker stays alive for the next
            answer = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
        proto.write(json.dumps(answer) + "\n")
        proto.flush()
    return 0


def run_jobs(path: str) -> int:
    with open(path) as f:
        jobs = json.load(f)
    failed = 0
    for job in jobs if isinstance(jobs, list) else [jobs]:
        try:
            print(f"rendered {job['out']} in {render_job(job):.2f} s")
        except Exception:
            failed += 1
            traceback.print_exc()
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    # Blender passes its own arguments first; the script's come after "--".
    if "--" in argv:
        argv = argv[argv.index("--") + 1:]
    parser = argparse.ArgumentParser(prog="render_hands.py", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--job", help="JSON file with one job or a list of jobs")
    group.add_argument("--serve", action="store_true", help="render jobs read line by line from stdin")
    args = parser.parse_args(argv)
    return serve() if args.serve else run_jobs(args.job)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
