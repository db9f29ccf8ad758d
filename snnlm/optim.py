"""AdamW over a nested dict of float32 arrays, the cosine learning-rate schedule, and gradient clipping."""
from __future__ import annotations

import math

import numba
import numpy as np

from snnlm.errors import SnnlmError


def tree_leaves(tree, prefix: str = "") -> list[tuple[str, np.ndarray]]:
    """Every array of a nested dict/list, as (dotted name, array), dict keys sorted, lists in order.

    The order depends only on the structure, so a params dict and its gradients line up leaf by leaf.
    """
    if isinstance(tree, np.ndarray):
        return [(prefix, tree)]
    if isinstance(tree, dict):
        items = sorted(tree.items())
    elif isinstance(tree, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(tree)]
    else:
        raise TypeError(f"{prefix or 'tree'}: expected an array, dict or list, got {type(tree).__name__}")
    leaves = []
    for key, value in items:
        leaves.extend(tree_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return leaves


def cosine_lr(step: int, max_lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Learning rate for 0-based `step`: linear warmup to max_lr over `warmup` steps, then a cosine
    decay that reaches min_lr at `total` and stays there."""
    if step < warmup:
        return max_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def clip_grad_norm(grads, max_norm: float) -> float:
    """Scale all gradient arrays in place so that their global L2 norm is at most `max_norm`.

    Returns the norm before clipping (inf or NaN when a gradient is not finite; nothing is scaled then).
    `max_norm` <= 0 only measures.
    """
    leaves = [g for _, g in tree_leaves(grads)]
    total = math.sqrt(sum(float(np.vdot(g, g)) for g in leaves))
    if max_norm > 0 and math.isfinite(total) and total > max_norm:
        scale = np.float32(max_norm / (total + 1e-6))
        for g in leaves:
            g *= scale
    return total


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter), updating the params' arrays in place.

    Weight decay applies only to arrays with two or more dimensions (matrices and embeddings), never to
    biases or LayerNorm gains. The moments m and v are float32, one pair per leaf.
    """

    def __init__(self, params, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        leaves = tree_leaves(params)
        for name, p in leaves:
            if p.dtype != np.float32 or not p.flags.c_contiguous or not p.flags.writeable:
                raise TypeError(f"{name}: AdamW updates contiguous writable float32 arrays in place")
        self.names = [name for name, _ in leaves]
        self.params = [p for _, p in leaves]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.t = 0

    def step(self, grads, lr: float) -> None:
        """One update with learning rate `lr`; `grads` has the structure of the params."""
        leaves = tree_leaves(grads)
        if [name for name, _ in leaves] != self.names:
            raise ValueError("the gradients do not have the structure of the parameters")
        self.t += 1
        bias1 = 1.0 - self.beta1 ** self.t
        bias2 = 1.0 - self.beta2 ** self.t
        for p, (_, g), m, v in zip(self.params, leaves, self.m, self.v):
            decay = self.weight_decay if p.ndim >= 2 else 0.0
            _adamw_kernel(p.reshape(-1), np.ascontiguousarray(g, dtype=np.float32).reshape(-1),
                          m.reshape(-1), v.reshape(-1), lr, self.beta1, self.beta2, self.eps, decay,
                          bias1, math.sqrt(bias2))

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """The state as named arrays (`m.<leaf>`, `v.<leaf>`) and string metadata (`step`), for safetensors."""
        tensors = {f"m.{name}": m for name, m in zip(self.names, self.m)}
        tensors.update({f"v.{name}": v for name, v in zip(self.names, self.v)})
        return tensors, {"step": str(self.t)}

    def load_state_dict(self, tensors: dict[str, np.ndarray], metadata: dict[str, str], source: str) -> None:
        """Restore what `state_dict` returned; a missing or misshapen entry is an SnnlmError naming `source`."""
        try:
            t = int(metadata["step"])
        except (KeyError, ValueError):
            raise SnnlmError(f"{source}: the optimizer state has no valid step count") from None
        for kind, moments in (("m", self.m), ("v", self.v)):
            for name, moment in zip(self.names, moments):
                key = f"{kind}.{name}"
                if key not in tensors:
                    raise SnnlmError(f"{source}: missing optimizer tensor {key!r}")
                if tensors[key].shape != moment.shape:
                    raise SnnlmError(f"{source}: optimizer tensor {key!r} has shape {tensors[key].shape}, expected {moment.shape}")
        for kind, moments in (("m", self.m), ("v", self.v)):
            for name, moment in zip(self.names, moments):
                moment[...] = tensors[f"{kind}.{name}"]
        self.t = t


@numba.njit(cache=True)
def _adamw_kernel(p, g, m, v, lr, beta1, beta2, eps, decay, bias1, sqrt_bias2):
    # One fused pass over memory: NumPy would need about ten, and this runs on every parameter every step.
    step = np.float32(lr / bias1)
    shrink = np.float32(1.0 - lr * decay)
    b1, b2 = np.float32(beta1), np.float32(beta2)
    c1, c2 = np.float32(1.0 - beta1), np.float32(1.0 - beta2)
    inv_sqrt_bias2 = np.float32(1.0 / sqrt_bias2)
    e = np.float32(eps)
    for i in range(p.shape[0]):
        gi = g[i]
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * shrink - step * mi / (np.sqrt(vi) * inv_sqrt_bias2 + e)
