"""The device mesh: one axis, "clients", over which the market axis of every stacked array is
sharded, in the federated round (fecosr_jax.federated.round), in fine-tuning
(fecosr_jax.finetune.loop) and in evaluation (fecosr_jax.evaluation). A device computes its own
markets; only what a host reads (metrics, ranks) is gathered to it (`to_host`). After
jax.distributed.initialize() the mesh spans every process's devices, so a multi-device or
multi-host run splits the markets instead of repeating them.

Markets are padded to a multiple of the device count (stack_markets(...,
num_markets_multiple=devices)); the run axis R, when there is one, leads the market axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fecosr_jax.errors import ConfigError

AXIS = "clients"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named "clients" over the given devices (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (AXIS,))


def run_devices(num_devices: int = 0) -> list[jax.Device]:
    """The devices a run computes on: the first `num_devices` of jax.devices(), 0 = all.
    A multi-process run uses every device (each process computes its own markets).

    Raises:
      ConfigError: `num_devices` is negative, above the device count, or not all of them in
        a multi-process run.
    """
    devices = jax.devices()
    if num_devices == 0 or num_devices == len(devices):
        return devices
    if not isinstance(num_devices, int) or not 0 < num_devices < len(devices):
        raise ConfigError(
            f"config.num_devices={num_devices!r}: expected 0 (every device) or 1 to "
            f"{len(devices)} (the devices JAX sees)"
        )
    if jax.process_count() > 1:
        raise ConfigError(
            f"config.num_devices={num_devices}: a run over {jax.process_count()} processes "
            f"uses every device (0 or {len(devices)})"
        )
    return devices[:num_devices]


def is_sharded(mesh: Mesh | None) -> bool:
    """Whether work is split over the mesh (more than one device)."""
    return mesh is not None and mesh.devices.size > 1


def markets(runs: bool) -> P:
    """The spec of an array whose leading axis is the market axis M, or [R, M, ...]."""
    return P(None, AXIS) if runs else P(AXIS)


def put(tree, mesh: Mesh | None, spec: P):
    """The arrays of `tree` on the mesh with `spec` (on the default device without a sharded
    mesh). In a multi-process run every process passes the same host values."""
    if not is_sharded(mesh):
        return jax.tree.map(_on_device, tree)
    num_devices = mesh.devices.size
    if spec and spec[-1] == AXIS:
        axis = len(spec) - 1
        for x in jax.tree.leaves(tree):
            if np.shape(x)[axis] % num_devices:
                raise ValueError(
                    f"{np.shape(x)[axis]} markets do not divide over {num_devices} devices: "
                    f"stack them with num_markets_multiple={num_devices}"
                )
    return jax.device_put(tree, NamedSharding(mesh, spec))


def _on_device(x):
    """x as a device array: numpy arrays are transferred (jnp.asarray would compile a copy
    program for every shape), device arrays stay as they are."""
    if isinstance(x, jax.Array):
        return x
    return jax.device_put(x) if isinstance(x, np.ndarray) else jnp.asarray(x)


def to_host(tree):
    """Host numpy copies of `tree`'s arrays, whole: arrays whose markets span several
    processes' devices are gathered from every process first."""
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)
