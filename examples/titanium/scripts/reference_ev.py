"""Reference energy–volume curves of titanium (hcp, bcc, fcc, ω) from CHGNet, for `ev_curves`.

CHGNet labels the example's stand-in "DFT" set (../data/dft_chgnet, see label_chgnet.py), so its
E(V) curves are the reference a model trained on that set should reproduce.  They are NOT DFT:
one universal potential's static energies, with its own errors.

Every structure is the primitive cell at the lattice constants of label_chgnet.py (near the
CHGNet/PBE minima), scaled isotropically (c/a and fractional positions kept) to V = s·V_ref for
s in SCALINGS; the energies are static, ideal positions, eV/atom.  The evaluation config must
use the same lattice constants (c/a) for a like-for-like comparison; the file header lists them.

Output: a commented CSV (`# key: value` header, then columns structure, scaling,
volume_A3_per_atom, energy_eV_per_atom) read by fusepot.core.evaluation.read_table.

Usage (CPU, well under a minute; needs the `label` extra: pip install chgnet):
    nice -n 10 python examples/titanium/scripts/reference_ev.py [--out FILE]
"""
from __future__ import annotations

import argparse
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk

# the lattice constants of label_chgnet.py (Å)
A_HCP, C_HCP = 2.935, 4.645
A_BCC = 3.255
A_FCC = 4.115
A_OMEGA, C_OMEGA = 4.575, 2.835
SCALINGS = np.round(np.linspace(0.88, 1.12, 13), 4)
MODEL = "0.3.0"


def omega_cell() -> Atoms:
    """ω-Ti (P6/mmm, 3 atoms): Ti on 1a (0,0,0) and 2d (1/3,2/3,1/2), (2/3,1/3,1/2)."""
    cell = [[A_OMEGA, 0, 0], [-A_OMEGA / 2, A_OMEGA * np.sqrt(3) / 2, 0], [0, 0, C_OMEGA]]
    return Atoms("Ti3", cell=cell, pbc=True, scaled_positions=[[0, 0, 0], [1 / 3, 2 / 3, 0.5], [2 / 3, 1 / 3, 0.5]])


def structures() -> dict[str, Atoms]:
    return {"hcp": bulk("Ti", "hcp", a=A_HCP, c=C_HCP), "bcc": bulk("Ti", "bcc", a=A_BCC),
            "fcc": bulk("Ti", "fcc", a=A_FCC), "omega": omega_cell()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "reference" / "ev_chgnet.csv"))
    args = ap.parse_args(argv)

    import torch
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    calc = CHGNetCalculator(model=CHGNet.load(model_name=MODEL, verbose=False), use_device="cpu",
                            on_isolated_atoms="error")
    rows = []
    for name, atoms in structures().items():
        for s in SCALINGS:
            a = atoms.copy()
            a.set_cell(atoms.cell.array * s ** (1.0 / 3.0), scale_atoms=True)
            a.calc = calc
            e = a.get_potential_energy() / len(a)
            rows.append(f"{name},{s:.4f},{a.get_volume() / len(a):.6f},{e:.8f}")
    wall = time.perf_counter() - t0
    header = [
        "title: Static energy-volume curves of titanium (hcp, bcc, fcc, omega) from CHGNet",
        "label: CHGNet (not DFT)",
        "what: CHGNet predictions, NOT DFT: the labeller of the example's stand-in DFT set (../dft_chgnet); "
        "static energies of ideal primitive cells scaled isotropically (c/a and fractional positions kept)",
        f"labels: CHGNet model {MODEL} (chgnet {version('chgnet')}), torch {version('torch')} CPU, ASE {version('ase')}",
        "citation: B. Deng et al., Nat. Mach. Intell. 5, 1031 (2023) (CHGNet)",
        f"structures: hcp a={A_HCP} c={C_HCP}; bcc a={A_BCC}; fcc a={A_FCC}; omega (P6/mmm, 3 atoms) a={A_OMEGA} "
        f"c={C_OMEGA} (Angstrom; the lattice constants of label_chgnet.py)",
        f"scalings: V/V_ref = {', '.join(f'{s:g}' for s in SCALINGS)}",
        f"generator: examples/titanium/scripts/reference_ev.py ({wall:.0f} s wall on CPU)",
        "units: volume_A3_per_atom: Angstrom^3 per atom; energy_eV_per_atom: eV per atom (CHGNet's absolute "
        "energy zero; compare energies relative to the hcp minimum)",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"# {h}\n" for h in header) + "structure,scaling,volume_A3_per_atom,energy_eV_per_atom\n"
                   + "\n".join(rows) + "\n")
    print(f"wrote {out}: {len(rows)} points in {wall:.1f} s")


if __name__ == "__main__":
    main()
