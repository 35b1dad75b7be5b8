"""Potentials described by JSON-able specs, so that a stored landscape database can rebuild its potential
(the CLI stores the spec in the database's ``meta`` table under ``"spec"``)."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .potentials import LennardJones, MullerBrown, Potential, tanh_network_potential

__all__ = ["make_potential", "parse_potential"]

NETWORK_DEFAULTS = {"dataset": "digits", "classes": [3, 5, 8], "pca_dim": 5, "size": 200, "hidden": [4],
                    "l2": 1e-3, "seed": 0}


def parse_potential(name: str, **network: Any) -> dict[str, Any]:
    """A spec from a short name: ``"lj13"`` / ``"lj:13"`` (any size), ``"muller-brown"``, ``"network"``
    (options: dataset, classes, pca_dim, size, hidden, l2, seed)."""
    key = name.strip().lower()
    if key in ("muller-brown", "mueller-brown", "mb"):
        return {"kind": "muller-brown"}
    if key.startswith("lj"):
        digits = key[2:].lstrip(":")
        if not digits.isdigit():
            raise ConfigError(f"cannot read the number of atoms in {name!r}; write e.g. lj13")
        return {"kind": "lennard-jones", "n_atoms": int(digits)}
    if key == "network":
        spec = {"kind": "network", **NETWORK_DEFAULTS}
        for k, v in network.items():
            if v is None:
                continue
            if k not in NETWORK_DEFAULTS:
                raise ConfigError(f"unknown network option {k!r}")
            spec[k] = v
        return spec
    raise ConfigError(f"unknown potential {name!r}; choose lj<N>, muller-brown or network")


def make_potential(spec: dict[str, Any]) -> Potential:
    """Build the potential a spec describes."""
    kind = spec.get("kind")
    if kind == "muller-brown":
        return MullerBrown()
    if kind == "lennard-jones":
        return LennardJones(int(spec["n_atoms"]))
    if kind == "network":
        from ..data import load
        from ..data.preprocess import balanced_subset, pca, select_classes

        ds = load(spec["dataset"])
        if spec.get("classes"):
            ds = select_classes(ds, spec["classes"])
        if spec.get("pca_dim"):
            ds = pca(ds, int(spec["pca_dim"]))
        ds = balanced_subset(ds, min(int(spec["size"]), len(ds.y_train)), seed=int(spec["seed"]))
        X = ds.X_train.reshape(len(ds.y_train), -1).double()
        return tanh_network_potential(X, ds.y_train, hidden=list(spec["hidden"]), l2=float(spec["l2"]),
                                      n_classes=ds.n_classes)
    raise ConfigError(f"unknown potential spec {spec!r}")
