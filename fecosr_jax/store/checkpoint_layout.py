"""What a checkpoint's arrays look like on disk (fecosr_jax/store/checkpoint.py writes them).

The state is packed into one flat array per dtype. Orbax's cost is mostly per array (~2 ms
each on a 2-core CPU, ~40 ms per save whatever its size), and a model's training state has
over a hundred, so a state saved leaf by leaf cost as much as a centralized round's compute;
packed, it is a few arrays (docs/benchmarks.md, "Checkpoint overhead"). Every array a process
holds whole (all of them in a one-process run) is copied to the host in one transfer and
packed; a global array over several processes' devices (the replicated server state, markets
sharded over every process) stays as it is, each process writing its own shards. Restoring
unpacks into the target's shapes, dtypes and shardings. A fingerprint of the saved arrays'
bytes goes with them, so a corrupt checkpoint is detected.
"""

from __future__ import annotations

import hashlib

import jax
import numpy as np
from jax.experimental import multihost_utils

LAYOUT = "packed/1"  # recorded in each checkpoint's meta; checkpoints without it are per leaf


def _global(x) -> bool:
    return isinstance(x, jax.Array) and not x.is_fully_addressable


def whole_to_host(tree):
    """`tree` with every array a process holds whole copied to the host (numpy) in one
    transfer; global arrays (`_global`) stay as they are, each process writing its own
    shards (mesh.to_host, for results, gathers them instead)."""
    leaves, treedef = jax.tree.flatten(tree)
    whole = [i for i, x in enumerate(leaves) if not _global(x)]
    for i, x in zip(whole, jax.device_get([leaves[i] for i in whole]), strict=True):
        leaves[i] = np.asarray(x)
    return treedef.unflatten(leaves)


def pack(tree) -> dict:
    """{dtype name: every whole leaf of that dtype, flattened and concatenated in leaf order},
    plus {"leaf<i>": x} for the global leaves (`_global`), as they are."""
    leaves = jax.tree.leaves(whole_to_host(tree))
    parts: dict[str, list[np.ndarray]] = {}
    for x in leaves:
        if not _global(x):
            parts.setdefault(x.dtype.name, []).append(x.reshape(-1))
    packed: dict = {name: np.concatenate(xs) for name, xs in parts.items()}
    packed.update({f"leaf{i}": x for i, x in enumerate(leaves) if _global(x)})
    return packed


def packed_like(target) -> dict:
    """The shapes `pack(target)` has, as orbax restore targets (host arrays, not filled)."""
    sizes: dict[str, int] = {}
    packed: dict = {}
    for i, x in enumerate(jax.tree.leaves(target)):
        if _global(x):
            packed[f"leaf{i}"] = x
        else:
            name = np.dtype(x.dtype).name
            sizes[name] = sizes.get(name, 0) + int(np.prod(np.shape(x), dtype=np.int64))
    packed.update({name: np.empty(n, name) for name, n in sizes.items()})
    return packed


def unpack(packed: dict, target):
    """The inverse of `pack`, shaped like `target`: its device arrays back on their devices
    (one transfer), its host arrays as numpy."""
    leaves, treedef = jax.tree.flatten(target)
    offsets = dict.fromkeys(packed, 0)
    out = []
    for i, t in enumerate(leaves):
        if _global(t):
            out.append(packed[f"leaf{i}"])
            continue
        name, shape = np.dtype(t.dtype).name, np.shape(t)
        size = int(np.prod(shape, dtype=np.int64))
        flat = np.asarray(packed[name])
        if offsets[name] + size > flat.size:
            raise ValueError(f"the checkpoint holds fewer {name} values than the state has")
        out.append(flat[offsets[name] : offsets[name] + size].reshape(shape))
        offsets[name] += size
    if any(offsets[n] != np.size(packed[n]) for n in offsets if not n.startswith("leaf")):
        raise ValueError("the checkpoint holds more values than the state has")
    on_device = [i for i, t in enumerate(leaves) if isinstance(t, jax.Array) and not _global(t)]
    put = jax.device_put([out[i] for i in on_device], [leaves[i].sharding for i in on_device])
    for i, x in zip(on_device, put, strict=True):
        out[i] = x
    return treedef.unflatten(out)


# ---------------------------------------------------------------------------------------------
# Fingerprints: a hash of every saved array's exact bytes, stored in the checkpoint's JSON.


def fingerprint(tree) -> list[str]:
    """Per-leaf BLAKE2b digest of the exact bytes (and dtype, shape) of every array."""
    out = []
    for x in jax.tree.leaves(tree):
        if _global(x) and not x.is_fully_replicated:
            # markets sharded over every process's devices: every process hashes all of it
            x = multihost_utils.process_allgather(x, tiled=True)
        x = np.ascontiguousarray(jax.device_get(x))
        h = hashlib.blake2b(f"{x.dtype}{x.shape}".encode(), digest_size=16)
        h.update(x.tobytes())
        out.append(h.hexdigest())
    return out


# ---------------------------------------------------------------------------------------------
# Checkpoints written before LAYOUT (leaf by leaf): in a multi-process run, arrays that live on
# one process's devices were saved as host numpy arrays, global arrays as they are.


def _host_local(x) -> bool:
    return jax.process_count() > 1 and isinstance(x, jax.Array) and x.is_fully_addressable


def leaf_by_leaf(tree):
    """The tree as checkpoints before LAYOUT saved it (and the target to restore them)."""
    return jax.tree.map(lambda x: np.asarray(x) if _host_local(x) else x, tree)


def from_leaf_by_leaf(restored, target):
    """The restore of a `leaf_by_leaf` checkpoint: host-local leaves of `target` restored as
    numpy go back onto their devices."""
    return jax.tree.map(
        lambda x, t: jax.device_put(x, t.sharding) if _host_local(t) else x, restored, target
    )
