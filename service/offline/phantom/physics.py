"""X-ray physics of the phantom: HU of materials from their composition, a tube spectrum per kVp and the patient.

Nothing here is taken from the calibration (``service.calibration``): the phantom's HU come from published
attenuation data, so a wrong constant in the calibration shows as a BMD error on the phantom.

Attenuation
    Mass attenuation coefficients mu/rho (cm2/g, total with coherent scattering) of the elements, from NIST
    Standard Reference Database 126 (Hubbell JH, Seltzer SM. Tables of X-ray mass attenuation coefficients and mass
    energy-absorption coefficients, version 1.4, 2004; Table 3), at 20-150 keV (``MU_RHO_CM2_G``), interpolated
    log-log. Iodine has its K edge (33.17 keV) in the range: two branches, below and above the edge.
    A mixture's mu/rho is the mass-fraction weighted sum (``MATERIALS``).
Compositions (mass fractions) and densities
    Water, air (dry, near sea level), skeletal muscle, blood, liver, spleen, kidney, GI tract, skin, cartilage,
    cerebrospinal fluid and cortical bone: ICRU Report 44 (1989) as tabulated by NIST (SRD 126 Table 2); adipose
    tissue: ICRU Report 46 (1992) adult adipose tissue #3 (0.93 g/cm3); blood at 1.05 g/cm3 (whole blood specific
    gravity 1.050-1.060; ICRU 44 lists 1.06); lung parenchyma: ICRU 44 lung tissue at an inflated density of
    0.15 g/cm3. Hydroxyapatite Ca10(PO4)6(OH)2 (3.16 g/cm3) and K2HPO4 (2.44 g/cm3): stoichiometric.
A solution of mineral (or iodine) at concentration c (g/cm3) in a base of density rho_b displaces c / rho_crystal of
    the base: ``mu = (1 - c/rho_crystal) * rho_b * (mu/rho)_base + c * (mu/rho)_mineral`` (``mu_solution``).
Spectrum (``Beam``)
    Tungsten-anode bremsstrahlung after Kramers (1923): photon fluence N(E) ~ (kVp - E) / E, characteristic lines
    left out; filtered by ``FILTRATION_AL_MM`` aluminium (inherent + bow-tie centre; CT half-value layers at 120 kVp
    are ~ 7-9 mm Al) and by the patient, a water-equivalent path ``water_path_cm``; an energy-integrating detector
    weights each energy by E. A material's effective attenuation is the detected-spectrum-weighted mean of mu(E).
    HU = 1000 * (mu - mu_water) / (mu_water - mu_air), all at the same detected spectrum: the scanner's water
    beam-hardening correction keeps water at 0 HU at every size, while denser materials (bone, iodine) read lower
    in larger patients (the spectrum hardens: beam hardening that grows with body size).
    The patient path is ``REFERENCE_WATER_PATH_CM`` (25 cm, an average adult trunk) times the patient's size factor.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import numpy as np
import numpy.typing as npt

ENERGIES_KEV: Final = (20.0, 30.0, 40.0, 50.0, 60.0, 80.0, 100.0, 150.0)
MU_RHO_CM2_G: Final = MappingProxyType({
    # NIST SRD 126, Table 3 (Hubbell & Seltzer 2004): mu/rho in cm2/g at ENERGIES_KEV
    "H": (0.3695, 0.3570, 0.3458, 0.3355, 0.3260, 0.3091, 0.2944, 0.2651),
    "C": (0.4420, 0.2562, 0.2076, 0.1871, 0.1753, 0.1610, 0.1514, 0.1347),
    "N": (0.6178, 0.3066, 0.2288, 0.1980, 0.1817, 0.1639, 0.1529, 0.1353),
    "O": (0.8651, 0.3779, 0.2585, 0.2132, 0.1907, 0.1678, 0.1551, 0.1361),
    "Na": (2.057, 0.7197, 0.3969, 0.2804, 0.2268, 0.1796, 0.1585, 0.1335),
    "Mg": (2.763, 0.9306, 0.4881, 0.3292, 0.2570, 0.1951, 0.1686, 0.1394),
    "Al": (3.441, 1.128, 0.5685, 0.3681, 0.2778, 0.2018, 0.1704, 0.1378),
    "P": (5.352, 1.700, 0.8096, 0.4916, 0.3494, 0.2324, 0.1865, 0.1432),
    "S": (6.708, 2.113, 0.9872, 0.5849, 0.4053, 0.2585, 0.2020, 0.1506),
    "Cl": (7.739, 2.425, 1.117, 0.6483, 0.4395, 0.2696, 0.2050, 0.1480),
    "Ar": (8.629, 2.697, 1.228, 0.7012, 0.4664, 0.2760, 0.2043, 0.1427),
    "K": (10.93, 3.413, 1.541, 0.8679, 0.5678, 0.3251, 0.2345, 0.1582),
    "Ca": (13.06, 4.080, 1.830, 1.019, 0.6578, 0.3656, 0.2571, 0.1674),
    "Fe": (25.68, 8.176, 3.629, 1.958, 1.205, 0.5952, 0.3717, 0.1964),
})
IODINE_K_EDGE_KEV: Final = 33.17
IODINE_BELOW_EDGE: Final = ((20.0, 25.43), (30.0, 8.561), (IODINE_K_EDGE_KEV, 6.553))
IODINE_ABOVE_EDGE: Final = ((IODINE_K_EDGE_KEV, 35.82), (40.0, 22.10), (50.0, 12.32), (60.0, 7.579), (80.0, 3.510),
                            (100.0, 1.942), (150.0, 0.6978))
"""NIST SRD 126 Table 3, iodine (Z = 53), with the K edge."""


@dataclass(frozen=True)
class Material:
    name: str
    mass_fractions: tuple[tuple[str, float], ...]
    density_g_cm3: float

    def __post_init__(self) -> None:
        total = sum(w for _, w in self.mass_fractions)
        if abs(total - 1.0) > 0.002:
            raise ValueError(f"mass_fractions of {self.name} must sum to 1, got {total:.4f}")
        unknown = [el for el, _ in self.mass_fractions if el not in MU_RHO_CM2_G and el != "I"]
        if unknown:
            raise ValueError(f"mass_fractions of {self.name} name elements without data: {unknown}")
        if not self.density_g_cm3 > 0:
            raise ValueError(f"density_g_cm3 of {self.name} must be positive, got {self.density_g_cm3}")


def _m(name: str, density: float, **fractions: float) -> Material:
    return Material(name, tuple(fractions.items()), density)


MATERIALS: Final = MappingProxyType({m.name: m for m in (
    _m("water", 1.0, H=0.111898, O=0.888102),
    _m("air", 0.001205, C=0.000124, N=0.755268, O=0.231781, Ar=0.012827),
    _m("adipose", 0.93, H=0.116, C=0.681, N=0.002, O=0.198, Na=0.001, S=0.001, Cl=0.001),
    _m("muscle", 1.05, H=0.102, C=0.143, N=0.034, O=0.710, Na=0.001, P=0.002, S=0.003, Cl=0.001, K=0.004),
    _m("blood", 1.05, H=0.102, C=0.110, N=0.033, O=0.745, Na=0.001, P=0.001, S=0.002, Cl=0.003, K=0.002, Fe=0.001),
    _m("liver", 1.06, H=0.102, C=0.139, N=0.030, O=0.716, Na=0.002, P=0.003, S=0.003, Cl=0.002, K=0.003),
    _m("spleen", 1.06, H=0.103, C=0.113, N=0.032, O=0.741, Na=0.001, P=0.003, S=0.002, Cl=0.002, K=0.003),
    _m("kidney", 1.05, H=0.103, C=0.132, N=0.030, O=0.724, Na=0.002, P=0.002, S=0.002, Cl=0.002, K=0.002, Ca=0.001),
    _m("gi_tract", 1.03, H=0.106, C=0.115, N=0.022, O=0.751, Na=0.001, P=0.001, S=0.001, Cl=0.002, K=0.001),
    _m("skin", 1.09, H=0.100, C=0.204, N=0.042, O=0.645, Na=0.002, P=0.001, S=0.002, Cl=0.003, K=0.001),
    _m("cartilage", 1.10, H=0.096, C=0.099, N=0.022, O=0.744, Na=0.005, P=0.022, S=0.009, Cl=0.003),
    _m("csf", 1.01, H=0.111, O=0.880, Na=0.005, Cl=0.004),
    _m("lung", 0.15, H=0.103, C=0.105, N=0.031, O=0.749, Na=0.002, P=0.002, S=0.003, Cl=0.003, K=0.002),
    _m("cortical_bone", 1.92, H=0.034, C=0.155, N=0.042, O=0.435, Na=0.001, Mg=0.002, P=0.103, S=0.003, Ca=0.225),
    _m("hydroxyapatite", 3.16, Ca=0.39895, P=0.18498, O=0.41407, H=0.00200),
    _m("k2hpo4", 2.44, K=0.44898, P=0.17783, O=0.36741, H=0.00578),
    _m("iodine", 4.93, I=1.0),
)})

FILTRATION_AL_MM: Final = 8.0
REFERENCE_WATER_PATH_CM: Final = 25.0
SUPPORTED_KVP: Final = tuple(range(80, 141, 20))
"""80, 100, 120 and 140 kVp."""
MIN_ENERGY_KEV: Final = 20.0
AL_DENSITY_G_CM3: Final = 2.699


def element_mu_rho(element: str, energy_kev: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """mu/rho (cm2/g) of one element, log-log interpolated in the NIST table (iodine: on its side of the K edge)."""
    e = np.asarray(energy_kev, dtype=np.float64)
    if np.any(e < ENERGIES_KEV[0]) or np.any(e > ENERGIES_KEV[-1]):
        raise ValueError(f"energy_kev must be within {ENERGIES_KEV[0]}..{ENERGIES_KEV[-1]} keV")
    if element == "I":
        lo, hi = (np.array(t, dtype=np.float64).T for t in (IODINE_BELOW_EDGE, IODINE_ABOVE_EDGE))
        below = np.exp(np.interp(np.log(e), np.log(lo[0]), np.log(lo[1])))
        above = np.exp(np.interp(np.log(e), np.log(hi[0]), np.log(hi[1])))
        return np.where(e < IODINE_K_EDGE_KEV, below, above)
    table = MU_RHO_CM2_G.get(element)
    if table is None:
        raise ValueError(f"no attenuation data for element {element!r}")
    return np.exp(np.interp(np.log(e), np.log(ENERGIES_KEV), np.log(table)))


def mass_attenuation(material: str, energy_kev: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """mu/rho (cm2/g) of a material of ``MATERIALS``."""
    m = MATERIALS.get(material)
    if m is None:
        raise ValueError(f"material must be one of {sorted(MATERIALS)}, got {material!r}")
    return sum((w * element_mu_rho(el, energy_kev) for el, w in m.mass_fractions),
               start=np.zeros(np.shape(energy_kev)))


@dataclass(frozen=True)
class Beam:
    """The detected spectrum of one acquisition: tube voltage and the patient's water-equivalent path."""

    kvp: int
    water_path_cm: float = REFERENCE_WATER_PATH_CM

    def __post_init__(self) -> None:
        if int(self.kvp) not in SUPPORTED_KVP:
            raise ValueError(f"kvp must be one of {SUPPORTED_KVP}, got {self.kvp}")
        if not 5.0 <= self.water_path_cm <= 60.0:
            raise ValueError(f"water_path_cm must be within 5..60, got {self.water_path_cm}")

    @functools.cached_property
    def _spectrum(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        e = np.arange(MIN_ENERGY_KEV, float(self.kvp), 0.5) + 0.25
        fluence = (self.kvp - e) / e
        fluence *= np.exp(-element_mu_rho("Al", e) * AL_DENSITY_G_CM3 * FILTRATION_AL_MM / 10.0
                          - mass_attenuation("water", e) * self.water_path_cm)
        weights = fluence * e
        return e, weights / weights.sum()

    @property
    def mean_energy_kev(self) -> float:
        """Mean energy of the detected (energy-weighted) spectrum."""
        e, w = self._spectrum
        return float(np.sum(e * w))

    def mu(self, material: str, density_g_cm3: float | None = None) -> float:
        """Effective linear attenuation (1/cm) of a material at its (or the given) density."""
        e, w = self._spectrum
        rho = MATERIALS[material].density_g_cm3 if density_g_cm3 is None else density_g_cm3
        return float(np.sum(w * mass_attenuation(material, e)) * rho)

    def mu_solution(self, solute: str, concentration_mg_cm3: float, base: str = "water") -> float:
        """Effective mu (1/cm) of ``solute`` at ``concentration_mg_cm3`` in ``base`` (volume displacement)."""
        c = concentration_mg_cm3 / 1000.0
        displaced = c / MATERIALS[solute].density_g_cm3
        if not 0.0 <= displaced < 1.0:
            raise ValueError(f"concentration_mg_cm3 of {solute} out of range: {concentration_mg_cm3}")
        return (1.0 - displaced) * self.mu(base) + c * self.mu(solute, 1.0)

    def hu_of_mu(self, mu: float) -> float:
        water, air = self.mu("water"), self.mu("air")
        return 1000.0 * (mu - water) / (water - air)

    def hu(self, material: str, density_g_cm3: float | None = None) -> float:
        return self.hu_of_mu(self.mu(material, density_g_cm3))

    def hu_solution(self, solute: str, concentration_mg_cm3: float, base: str = "water") -> float:
        return self.hu_of_mu(self.mu_solution(solute, concentration_mg_cm3, base))

    def hu_per_mg(self, solute: str, base: str = "water") -> float:
        """HU per mg/cm3 of ``solute`` in ``base`` (the solution is linear in concentration)."""
        return self.hu_solution(solute, 1.0, base) - self.hu_solution(solute, 0.0, base)


@functools.lru_cache(maxsize=64)
def beam(kvp: int, water_path_cm: float = REFERENCE_WATER_PATH_CM) -> Beam:
    """A cached ``Beam`` (its spectrum is computed once)."""
    return Beam(int(kvp), round(float(water_path_cm), 3))


@dataclass(frozen=True)
class Scanner:
    """The scanner's HU scale: ``HU' = gain * HU + offset_hu`` (calibration drift between scanners)."""

    gain: float = 1.0
    offset_hu: float = 0.0

    def __post_init__(self) -> None:
        if not 0.9 <= self.gain <= 1.1:
            raise ValueError(f"gain must be within 0.9..1.1, got {self.gain}")
        if not -30.0 <= self.offset_hu <= 30.0:
            raise ValueError(f"offset_hu must be within -30..30, got {self.offset_hu}")

    def apply(self, hu: float) -> float:
        return float(self.gain * hu + self.offset_hu)
