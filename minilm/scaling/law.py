"""The scaling laws themselves: Chinchilla's L(N, D), its compute-optimal frontier, and Kaplan's form.

Chinchilla (Hoffmann et al., 2022, eq. 2):   L(N, D) = E + A / N^alpha + B / D^beta
    E is the irreducible loss (the entropy of the data), the other two terms are what a finite
    model (N parameters) and finite data (D tokens) leave on the table.
Compute: a transformer forward+backward pass costs about 6 FLOPs per parameter per token, so a
    run costs C = 6 N D (Kaplan et al., 2020, sec. 2.1).
Kaplan et al. (2020, eq. 1.5):   L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D
    (no irreducible term: loss goes to zero as N, D grow).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLOPS_PER_PARAM_PER_TOKEN = 6.0  # forward (2) + backward (4) multiply-adds, Kaplan et al. sec. 2.1


def training_flops(N: np.ndarray | float, D: np.ndarray | float) -> np.ndarray | float:
    """Training compute C = 6 N D in FLOPs for N parameters trained on D tokens."""
    return FLOPS_PER_PARAM_PER_TOKEN * np.asarray(N, dtype=float) * np.asarray(D, dtype=float)


@dataclass(frozen=True)
class ChinchillaParams:
    """Parameters of L(N, D) = E + A / N^alpha + B / D^beta (losses in nats per token)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def __post_init__(self) -> None:
        for name in ("E", "A", "B", "alpha", "beta"):
            value = getattr(self, name)
            if not np.isfinite(value):
                raise ValueError(f"ChinchillaParams.{name} must be a finite number, got {value!r}")

    @classmethod
    def hoffmann(cls) -> ChinchillaParams:
        """Hoffmann et al. (2022) published Approach 3 fit (eq. 10): E=1.69, A=406.4, B=410.7,
        alpha=0.34, beta=0.28."""
        return cls(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)

    @classmethod
    def besiroglu(cls) -> ChinchillaParams:
        """Besiroglu et al. (2024, "Chinchilla scaling: a replication attempt") refit on data
        read off Hoffmann's Figure 4: E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658."""
        return cls(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)

    @property
    def a(self) -> float:
        """Allocation exponent a = beta / (alpha + beta): N_opt grows as C^a (Hoffmann eq. 4)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Allocation exponent b = alpha / (alpha + beta): D_opt grows as C^b (Hoffmann eq. 4)."""
        return self.alpha / (self.alpha + self.beta)

    def as_dict(self) -> dict[str, float]:
        """The five parameters plus the allocation exponent a, by name."""
        return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta, "a": self.a}


def chinchilla_loss(N: np.ndarray | float, D: np.ndarray | float, params: ChinchillaParams) -> np.ndarray | float:
    """L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al., 2022, eq. 2), elementwise."""
    N = np.asarray(N, dtype=float)
    D = np.asarray(D, dtype=float)
    if np.any(N <= 0) or np.any(D <= 0):
        raise ValueError("chinchilla_loss needs N > 0 parameters and D > 0 tokens")
    out = params.E + params.A / N**params.alpha + params.B / D**params.beta
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class ComputeOptimal:
    """The compute-optimal allocation of a budget C (arrays if C was an array)."""

    C: np.ndarray | float  # FLOPs
    N: np.ndarray | float  # parameters
    D: np.ndarray | float  # tokens
    tokens_per_param: np.ndarray | float  # D / N
    loss: np.ndarray | float  # L(N_opt, D_opt)


def compute_optimal(C: np.ndarray | float, params: ChinchillaParams) -> ComputeOptimal:
    """Minimise L(N, D) subject to 6 N D = C, in closed form (Hoffmann et al., 2022, eq. 4).

        N_opt = G (C/6)^a,   D_opt = G^-1 (C/6)^b,   G = (alpha A / (beta B))^(1 / (alpha + beta))

    with a = beta/(alpha+beta), b = alpha/(alpha+beta). (Setting dL/dN = 0 along D = C/(6N)
    gives alpha A / N^alpha = beta B / D^beta.) E does not move the optimum.
    """
    if params.alpha <= 0 or params.beta <= 0 or params.A <= 0 or params.B <= 0:
        raise ValueError(
            f"compute_optimal needs A, B, alpha, beta > 0 (a finite optimum exists only then); got {params}"
        )
    C_arr = np.asarray(C, dtype=float)
    if np.any(~np.isfinite(C_arr)) or np.any(C_arr <= 0):
        raise ValueError("compute budget C must be finite and > 0 FLOPs")
    G = (params.alpha * params.A / (params.beta * params.B)) ** (1.0 / (params.alpha + params.beta))
    N = G * (C_arr / FLOPS_PER_PARAM_PER_TOKEN) ** params.a
    D = (C_arr / FLOPS_PER_PARAM_PER_TOKEN) ** params.b / G
    loss = params.E + params.A / N**params.alpha + params.B / D**params.beta
    values = [C_arr, N, D, D / N, loss]
    if C_arr.ndim == 0:
        values = [float(v) for v in values]
    return ComputeOptimal(*values)


@dataclass(frozen=True)
class KaplanParams:
    """Parameters of Kaplan et al.'s L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D."""

    N_c: float
    D_c: float
    alpha_N: float
    alpha_D: float

    def __post_init__(self) -> None:
        for name in ("N_c", "D_c", "alpha_N", "alpha_D"):
            value = getattr(self, name)
            if not np.isfinite(value):
                raise ValueError(f"KaplanParams.{name} must be a finite number, got {value!r}")

    @classmethod
    def kaplan(cls) -> KaplanParams:
        """Kaplan et al. (2020) Table 2 fit: alpha_N=0.076, alpha_D=0.103, N_c=6.4e13, D_c=1.8e13
        (non-embedding parameters, WebText2 tokens, loss in nats)."""
        return cls(N_c=6.4e13, D_c=1.8e13, alpha_N=0.076, alpha_D=0.103)


def kaplan_loss(N: np.ndarray | float, D: np.ndarray | float, params: KaplanParams) -> np.ndarray | float:
    """L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D (Kaplan et al., 2020, eq. 1.5)."""
    N = np.asarray(N, dtype=float)
    D = np.asarray(D, dtype=float)
    if np.any(N <= 0) or np.any(D <= 0):
        raise ValueError("kaplan_loss needs N > 0 parameters and D > 0 tokens")
    out = ((params.N_c / N) ** (params.alpha_N / params.alpha_D) + params.D_c / D) ** params.alpha_D
    return float(out) if out.ndim == 0 else out
