"""DimeNet++ potential plugin (`dimenet_pp`)."""
from __future__ import annotations

from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from fusepot.core.plugins import Component, hookimpl

from .model import DimeNetPP, init_dimenet_pp


class DimeNetPPParams(BaseModel):
    """Hyperparameters (defaults: the titanium DiffTRe paper)."""

    model_config = ConfigDict(extra="forbid")
    cutoff: float = Field(5.0, gt=0, description="cutoff radius in Å")
    embed_size: int = Field(32, ge=1, description="edge message (hidden) size")
    out_embed_size: int = Field(64, ge=1, description="width of the output blocks' dense layers")
    type_embed_size: int = Field(16, ge=1, description="species embedding size")
    int_embed_size: int = Field(16, ge=1, description="triplet (angle-interaction) embedding size")
    basis_embed_size: int = Field(8, ge=1, description="bottleneck of the radial/spherical basis projections")
    n_interaction_blocks: int = Field(4, ge=0)
    n_residual_before_skip: int = Field(1, ge=0)
    n_residual_after_skip: int = Field(2, ge=0)
    n_dense_output: int = Field(3, ge=0, description="dense layers per output block")
    n_radial: int = Field(6, ge=1, description="radial Bessel basis functions")
    n_spherical: int = Field(7, ge=1, le=7, description="spherical basis orders l = 0..n_spherical-1")
    envelope_exponent: int = Field(6, ge=2, description="p of the polynomial cutoff envelope")
    max_neighbors: int = Field(0, ge=0, description="per-atom edge capacity K inside the cutoff "
                                                    "(triplet capacity N·K²); 0 = derive from the neighbor list")
    edge_capacity: int = Field(0, ge=0, description="capacity of the edge list inside the cutoff; "
                                                    "0 = derive from the neighbor list")
    per_species_scale_shift: bool = Field(True, description="trainable per-species energy scale and shift")
    energy_shift: Optional[Union[float, list[float]]] = Field(None, description="initial per-species shift in eV")
    energy_scale: Optional[Union[float, list[float]]] = Field(None, description="initial per-species scale")
    seed: int = Field(0, description="PRNG seed of the parameter initialisation")


def build_dimenet_pp(p: DimeNetPPParams, ctx) -> DimeNetPP:
    n_species = max(1, len(ctx.species))
    for name in ("energy_shift", "energy_scale"):
        v = getattr(p, name)
        if isinstance(v, list) and len(v) != n_species:
            raise ValueError(f"dimenet_pp.{name}: expected {n_species} values for species {ctx.species}, got {len(v)}")
    kw = p.model_dump(exclude={"seed"})
    return init_dimenet_pp(p.seed, n_species, dtype=ctx.dtype, **kw)


@hookimpl
def fusepot_potentials():
    return [Component("dimenet_pp", DimeNetPP, DimeNetPPParams, build_dimenet_pp,
                      "DimeNet++ message-passing neural network potential (directional, with angles)")]


__all__ = ["DimeNetPP", "DimeNetPPParams", "build_dimenet_pp", "init_dimenet_pp"]
