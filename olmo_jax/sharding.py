"""THE table of logical axis -> mesh axis rules, and mesh construction.

Every parameter, batch array and named activation carries logical axis names (see model.py);
this module is the only place that says how those names map onto the device mesh ('data',
'fsdp', 'tensor'). A mesh axis is used once per array, first come first served: activations
[batch, length, embed] put the batch on (data, fsdp), so their embed dim (fsdp for params)
stays whole, while heads, MLP and vocab activations split over 'tensor' like their weights.
Activations are constrained with `constrain(x, axes)` while a mesh is set
(`activation_mesh(mesh)`, which the planned compile of the train step enters).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axis (or tuple of mesh axes, or None for replicated).
RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "length": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "layers": None,
    "norm": None,
    "heads": "tensor",  # activations [B, L, H, K]
    "head_dim": None,
}

_WARNED: set = set()


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
  """Resolves one -1 entry to fill the devices; raises ValueError naming mesh.* otherwise."""
  dims = {"data": data, "fsdp": fsdp, "tensor": tensor}
  free = [k for k, v in dims.items() if v == -1]
  if len(free) > 1:
    raise ValueError(f"at most one of mesh.data/fsdp/tensor may be -1, got {dims}")
  for k, v in dims.items():
    if v == 0 or v < -1:
      raise ValueError(f"mesh.{k}={v} must be a positive size or -1 (fill)")
  fixed = math.prod(v for v in dims.values() if v != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(f"mesh {dims}: {num_devices} devices are not divisible by {fixed}")
    dims[free[0]] = num_devices // fixed
  if math.prod(dims.values()) != num_devices:
    raise ValueError(f"mesh.data*fsdp*tensor = {math.prod(dims.values())} but there are "
                     f"{num_devices} devices; set one of them to -1 to fill")
  return dims["data"], dims["fsdp"], dims["tensor"]


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh with classic (Auto) GSPMD axis semantics."""
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(data, fsdp, tensor, len(devices))
  try:
    from jax.experimental import mesh_utils
    arr = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # non-TPU topologies the helper does not know: plain reshape
    arr = np.array(devices).reshape(shape)
  return Mesh(arr, MESH_AXES)


def spec_for(axes: Sequence[str | None], shape: Sequence[int] | None = None,
             mesh: Mesh | None = None, name: str = "") -> P:
  """PartitionSpec for logical axes.

  A dim its mesh axes do not divide is replicated, with a warning naming `name` (once).
  """
  out, used = [], set()
  for i, axis in enumerate(axes):
    if axis is not None and axis not in RULES:
      raise KeyError(f"logical axis {axis!r} has no rule in sharding.RULES")
    target = RULES.get(axis) if axis is not None else None
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    targets = tuple(t for t in targets if t not in used)
    if mesh is not None:
      targets = tuple(t for t in targets if mesh.shape[t] > 1)
      if shape is not None and targets:
        size = math.prod(mesh.shape[t] for t in targets)
        if shape[i] % size:
          msg = (f"sharding: {name or 'array'} dim {i} ({axis}, size {shape[i]}) is not "
                 f"divisible by mesh {'x'.join(targets)}={size}: replicated over it")
          if msg not in _WARNED:
            _WARNED.add(msg)
            logging.warning(msg)
          targets = ()
    used.update(targets)
    out.append(targets[0] if len(targets) == 1 else (targets or None))
  return P(*out)


def tree_shardings(mesh: Mesh, axes_tree, shapes_tree) -> Any:
  """NamedShardings for a tree of logical-axes tuples with a matching tree of shapes."""
  is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)
  return jax.tree_util.tree_map_with_path(
      lambda path, axes, s: NamedSharding(
          mesh, spec_for(axes, s.shape, mesh, name=jax.tree_util.keystr(path, simple=True,
                                                                        separator="/"))),
      axes_tree, shapes_tree, is_leaf=is_axes)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of [B, L] token batches: batch over data x fsdp."""
  return NamedSharding(mesh, spec_for(("batch", "length"), None, mesh))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def activation_mesh(mesh):
  """`with activation_mesh(mesh):` code traced inside sees `mesh`, and `constrain` applies.

  (jax.set_mesh: it takes effect when called, so always use it in a `with` statement.)
  """
  return jax.set_mesh(mesh)


def constrain(x: jax.Array, axes: Sequence[str | None], name: str = "") -> jax.Array:
  """x constrained to the sharding the rules give its logical axes; a no-op without a mesh.

  Use inside traced model code: under `activation_mesh(mesh)` it is
  jax.lax.with_sharding_constraint(x, spec); outside it (single device, eager) it returns x.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return x
  spec = spec_for(axes, x.shape, mesh, name=name or "activation " + "/".join(map(str, axes)))
  return jax.lax.with_sharding_constraint(x, spec)
