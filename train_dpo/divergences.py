"""f-divergences for f-DPO, in the paper's convention (Wang et al., 2023, arXiv 2309.16240).

f-DPO replaces DPO's reverse-KL constraint by D_f(pi || pi_ref) = E_ref[f(pi / pi_ref)]. Its loss
(paper, Eq. 9) is

    -log sigmoid( beta * f'(u_w) - beta * f'(u_l) ),   u = pi(y|x) / pi_ref(y|x),

so a divergence enters only through f'. Every f' here takes the log-ratio `log u` (a sequence's summed
token log-probabilities minus the reference's), because u itself over- or underflows for any real
sequence: 200 tokens at -1 nat each give u = e^-200.

The paper's theorem (Thm. 1) needs f' strictly increasing (invertible, so the optimal policy is
unique) and 0 outside the domain of f' (f'(u) -> -inf as u -> 0+, which keeps pi > 0 where
pi_ref > 0). `Divergence.check` tests both numerically, so a user-registered divergence that breaks
them (Pearson chi^2, total variation) is refused with the reason.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import reprlib
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from common.errors import InputError

T = TypeVar("T")

# exp(t) is continued linearly beyond t = EXP_CAP (value and slope match there), so f' stays finite and
# strictly increasing for log-ratios up to |1e4| and beyond. e^50 ~ 5e21: beta * e^50 * 1e4 still fits
# float32/bfloat16 (max ~3.4e38) with room for batch sums and the backward pass.
EXP_CAP = 50.0

# Smallest alpha accepted. f'(u) = (1 - u^-alpha) / alpha cancels to noise in float32 as alpha -> 0 (and is
# NaN once alpha underflows); its alpha -> 0 limit, log u, is reverse_kl.
ALPHA_MIN = 1e-3

# Grid (in log u) on which a divergence's f' is checked: wide enough to see the behaviour near u = 0.
_CHECK_LOGU = torch.linspace(-60.0, 10.0, 1401, dtype=torch.float64)  # above ~10 f' may saturate in fp64

# Grid (in log u) on which a user's f' is fingerprinted (`values_sha256`): the checked range and beyond, to
# the large log-ratios of a policy far from its reference, which training also feeds to f'.
_FINGERPRINT_LOGU = torch.linspace(-120.0, 120.0, 2401, dtype=torch.float64)


def capped_exp(t: torch.Tensor) -> torch.Tensor:
    """exp(t) for t <= EXP_CAP and its tangent line beyond: finite, increasing, smooth to first order."""
    clipped = t.clamp(max=EXP_CAP)
    tail = math.exp(EXP_CAP) * (1.0 + (t - EXP_CAP).clamp(min=0.0))
    return torch.where(t <= EXP_CAP, torch.exp(clipped), tail)


@dataclass(frozen=True)
class Divergence:
    """One f-divergence: its name, f' of the log-ratio, and (optionally) f of the ratio.

    Attributes:
        name: registry key, also used in run names (`jsd`, `alpha03`, ...).
        f_prime: log u -> f'(u), elementwise on tensors; must be stable for |log u| <= 1e4.
        f: u -> f(u), elementwise; only used by tests and docs (f(1) = 0, f convex, f' = df/du).
        formula: f'(u) in words, for logs and the README.
    """

    name: str
    f_prime: Callable[[torch.Tensor], torch.Tensor]
    f: Callable[[torch.Tensor], torch.Tensor] | None = None
    formula: str = ""

    def check(self, label: str = "") -> None:
        """Raise ValueError unless f' satisfies the paper's Theorem 1 on a wide grid of log-ratios.

        f' is called as training calls it, on a tensor of log-ratios, and anything else it does (raise,
        return a float or a tensor of another shape) is refused here too: every caller turns a ValueError
        into one line of error, where any other exception would be a traceback from the user's code.

        Args:
            label: how the error names the divergence (its `module:function` spec); default its name.
        """
        who = label or self.name
        values = self.values(_CHECK_LOGU, who)
        self.values(_FINGERPRINT_LOGU, who)  # so that `values_sha256` of a checked divergence succeeds
        if not torch.isfinite(values).all():
            raise ValueError(f"divergence '{who}': f'(u) is not finite for log u in [-60, 10]")
        # Decreases first: f' = -log u runs to +inf as u -> 0, and must not be called bounded there.
        near_zero = self.values(torch.tensor([-120.0, -60.0, -30.0], dtype=torch.float64), who)
        not_increasing = (
            f"divergence '{who}': f'(u) is not strictly increasing, so it is not invertible and the optimal "
            "policy is not unique (paper, Theorem 1)"
        )
        if (values.diff() < 0).any() or (near_zero.diff() < 0).any():
            raise ValueError(not_increasing)
        if not (near_zero.diff() > 1.0).all():
            raise ValueError(
                f"divergence '{who}': f'(u) stays bounded as u -> 0, i.e. 0 is in the domain of f' "
                "(paper, Theorem 1 needs f'(u) -> -inf so that pi > 0 wherever pi_ref > 0)"
            )
        # Flat stretches last: a bounded f' (Pearson chi^2) saturates to flat in float64 near u = 0.
        if not (values.diff() > 0).all():
            raise ValueError(not_increasing)

    def values(self, logu: torch.Tensor, label: str = "") -> torch.Tensor:
        """f'(u) at `logu`, or a ValueError naming the divergence when f' fails or returns no tensor like it.

        Args:
            logu: log-ratios, any shape.
            label: how the error names the divergence; default its name.

        Returns:
            f'(u), a floating-point tensor of the shape of `logu`.
        """
        who = label or self.name
        try:  # the user's code runs here: a bug, a signature other than f'(logu), or a sys.exit()
            values = self.f_prime(logu)
        except KeyboardInterrupt:  # Ctrl-C, wherever it lands, stays an interrupt
            raise
        except BaseException as error:
            name, message = _described(error)
            raise ValueError(
                f"divergence '{who}': f' raised {name} when called on a tensor of log u ({message}); it "
                "must take one tensor of log-ratios and return f'(u) of the same shape"
            ) from None
        # A tensor subclass is refused unread: its methods (`__torch_function__`) are the user's code too.
        if type(values) is not torch.Tensor or not values.is_floating_point():
            got = f"a tensor of {values.dtype}" if type(values) is torch.Tensor else _type_name(values)
            raise ValueError(
                f"divergence '{who}': f' returned {got}, not a floating-point tensor of f'(u) for each log u"
            )
        if values.shape != logu.shape:
            raise ValueError(
                f"divergence '{who}': f' returned shape {tuple(values.shape)} for log u of shape "
                f"{tuple(logu.shape)}; it must apply elementwise (a scalar would broadcast over the batch)"
            )
        return values


def _reverse_kl() -> Divergence:
    return Divergence(
        name="reverse_kl",
        f_prime=lambda logu: logu + 1.0,
        f=lambda u: u * torch.log(u),
        formula="f'(u) = log u + 1 (standard DPO)",
    )


def _forward_kl() -> Divergence:
    return Divergence(
        name="forward_kl",
        f_prime=lambda logu: -capped_exp(-logu),
        f=lambda u: -torch.log(u),
        formula="f'(u) = -1/u",
    )


def _jsd() -> Divergence:
    # log(2u / (1 + u)) = log 2 + log sigmoid(log u): no exp of log u at all.
    return Divergence(
        name="jsd",
        f_prime=lambda logu: math.log(2.0) + torch.nn.functional.logsigmoid(logu),
        f=lambda u: u * torch.log(u) - (u + 1.0) * torch.log((u + 1.0) / 2.0),
        formula="f'(u) = log(2u / (1 + u))",
    )


def _alpha(alpha: float) -> Divergence:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if alpha < ALPHA_MIN:
        raise ValueError(
            f"alpha {alpha:g} is too small to compute f'(u) in float32; use alpha >= {ALPHA_MIN:g}, or "
            "--divergence reverse_kl, its alpha -> 0 limit"
        )
    return Divergence(
        name=f"alpha{alpha:g}".replace(".", ""),
        f_prime=lambda logu: (1.0 - capped_exp(-alpha * logu)) / alpha,
        f=lambda u: (u ** (1.0 - alpha) - (1.0 - alpha) * u - alpha) / (alpha * (alpha - 1.0)),
        formula=f"f'(u) = (1 - u^-alpha) / alpha, alpha = {alpha:g}",
    )


def _jeffreys() -> Divergence:
    # Symmetric KL: KL(pi||ref) + KL(ref||pi), f(u) = (u - 1) log u.
    return Divergence(
        name="jeffreys",
        f_prime=lambda logu: logu + 1.0 - capped_exp(-logu),
        f=lambda u: (u - 1.0) * torch.log(u),
        formula="f'(u) = log u + 1 - 1/u",
    )


def _neyman_chi2() -> Divergence:
    return Divergence(
        name="neyman_chi2",
        f_prime=lambda logu: 1.0 - capped_exp(-2.0 * logu),
        f=lambda u: (1.0 - u) ** 2 / u,
        formula="f'(u) = 1 - 1/u^2",
    )


# name -> factory(**params). `alpha` takes alpha in (0, 1); the others take nothing.
_REGISTRY: dict[str, Callable[..., Divergence]] = {
    "reverse_kl": _reverse_kl,
    "forward_kl": _forward_kl,
    "jsd": _jsd,
    "alpha": _alpha,
    "jeffreys": _jeffreys,
    "neyman_chi2": _neyman_chi2,
}

_BUILT_IN = frozenset(_REGISTRY)


def available() -> list[str]:
    """Names accepted by `get_divergence`."""
    return sorted(_REGISTRY)


def get_divergence(name: str, alpha: float | None = None) -> Divergence:
    """The registered divergence `name`, or `module:attribute` imported (`imported_divergence`).

    `alpha` is required for, and only for, `alpha`.
    """
    if ":" in name:
        if alpha is not None:
            raise ValueError(f"--alpha is only used with --divergence alpha, not '{name}'")
        return imported_divergence(name)
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown divergence '{name}'; choose one of: {', '.join(available())}, or module:function"
        )
    if name == "alpha":
        if alpha is None:
            raise ValueError("divergence 'alpha' needs alpha in (0, 1)")
        return _REGISTRY[name](alpha)
    return _REGISTRY[name]()


def register_divergence(
    name: str,
    f_prime: Callable[[torch.Tensor], torch.Tensor],
    f: Callable[[torch.Tensor], torch.Tensor] | None = None,
    formula: str = "",
) -> Divergence:
    """Add a divergence given f' of the log-ratio; refuse it if the paper's theorem excludes it.

    Example: `register_divergence("my_kl", lambda logu: 2 * logu)` makes `--divergence my_kl` work.
    """
    if name in _REGISTRY:
        raise ValueError(f"divergence '{name}' is already registered")
    divergence = Divergence(name=name, f_prime=f_prime, f=f, formula=formula)
    divergence.check()
    _REGISTRY[name] = lambda: divergence
    return divergence


def unregister_divergence(name: str) -> None:
    """Remove a user-registered divergence (the built-in ones stay)."""
    if name in _BUILT_IN:
        raise ValueError(f"divergence '{name}' is built in")
    _REGISTRY.pop(name, None)


def imported_divergence(spec: str) -> Divergence:
    """`module:attribute`, imported, as a checked divergence: how a user's divergence reaches every run.

    A divergence registered in Python lives in one process, and each run of a sweep is a process of its
    own; a `module:attribute` spec travels in the run's flags instead, and each process imports it. The
    attribute is a `Divergence`, or a function log u -> f'(u) (then named after the function). The
    module must be importable by every run: installed, or on PYTHONPATH. Refused like a registered one
    when the paper's theorem excludes it.
    """
    module_name, _, attribute = spec.partition(":")
    module = _user_code(spec, f"cannot import module '{module_name}'", importlib.import_module, module_name)
    if not issubclass(type(module), types.ModuleType):  # the module put something else in sys.modules
        raise ValueError(
            f"divergence '{spec}': importing '{module_name}' gave {_type_name(module)}, not a module"
        )
    found = _user_code(
        spec, f"reading '{attribute}' from module '{module_name}'", getattr, module, attribute, None
    )
    if found is None:
        raise ValueError(f"divergence '{spec}': module '{module_name}' has no '{attribute}'")
    if type(found) is Divergence:
        divergence = found
    elif issubclass(type(found), Divergence):  # its methods would be the user's: only its fields are kept
        divergence = _user_code(
            spec,
            "reading its fields",
            lambda: Divergence(name=found.name, f_prime=found.f_prime, f=found.f, formula=found.formula),
        )
    elif callable(found):
        divergence = Divergence(name=attribute, f_prime=found, formula=f"f'(u) = {spec}(log u)")
    else:
        raise ValueError(
            f"divergence '{spec}': expected a Divergence or a function of log u, not {_type_name(found)}"
        )
    if type(divergence.name) is not str or not divergence.name.isidentifier():  # it names run folders
        raise ValueError(
            f"divergence '{spec}': its name {_safe_repr(divergence.name)} must be a Python identifier"
        )
    if not callable(divergence.f_prime):
        raise ValueError(
            f"divergence '{spec}': its f_prime is {_type_name(divergence.f_prime)}, not a function of log u"
        )
    divergence.check(spec)
    return Divergence(
        name=divergence.name,
        f_prime=_guarded(spec, "f'", divergence.f_prime),
        f=divergence.f if divergence.f is None else _guarded(spec, "f", divergence.f),
        formula=divergence.formula,
    )


def _guarded(spec: str, what: str, function: Callable[[torch.Tensor], torch.Tensor]):
    """`function` as training and evaluation call it: whatever the user's code raises or exits with there
    (a `sys.exit(0)` would end a run with status 0 and no weights) becomes one InputError line naming the
    spec. Ctrl-C stays an interrupt."""

    def call(value: torch.Tensor) -> torch.Tensor:
        try:
            return function(value)
        except KeyboardInterrupt:
            raise
        except BaseException as error:
            name, message = _described(error)
            raise InputError(f"divergence '{spec}': its {what} failed ({name}: {message})") from None

    return call


def _user_code(spec: str, doing: str, call: Callable[..., T], *args) -> T:
    """`call(*args)`, where a user's code runs (an import, a module's `__getattr__`, a property).

    Anything it raises or exits with becomes a ValueError naming `spec`, which every caller reports in
    one line: a `sys.exit(0)` at import would otherwise end a sweep with status 0 and no output, and a
    SystemExit or GeneratorExit is no Exception. Ctrl-C (KeyboardInterrupt) stays an interrupt.
    """
    try:
        return call(*args)
    except KeyboardInterrupt:
        raise
    except BaseException as error:
        name, message = _described(error)
        raise ValueError(f"divergence '{spec}': {doing} ({name}: {message})") from None


def _described(error: BaseException) -> tuple[str, str]:
    """An exception from a user's code as (type name, first line of its message), even one that cannot
    be printed (its __str__ raising) or prints several lines (the report is one line)."""
    name = _type_name(error)
    try:
        text = str(error)
        text = text if type(text) is str else str.__str__(text)  # a str subclass's methods are the user's
    except KeyboardInterrupt:
        raise
    except BaseException:
        return name, "its message could not be printed"
    return name, (text.strip().splitlines() or ["no message"])[0]


def _type_name(value: object) -> str:
    """The name of `value`'s type, read without running its class's code (a metaclass may define it)."""
    name = type.__dict__["__name__"].__get__(type(value))
    return name if type(name) is str else "object"


def _safe_repr(value: object) -> str:
    """repr(value) for a message, or its type's name when its __repr__ fails."""
    try:
        text = repr(value)
        return reprlib.repr(text if type(text) is str else str.__str__(text))[1:-1]
    except KeyboardInterrupt:
        raise
    except BaseException:
        return f"<a {_type_name(value)}>"


def values_sha256(divergence: Divergence) -> str:
    """SHA-256 of f' on a fixed grid of log-ratios: what a user's f' computes, wherever its code lives.

    The hash of its module's source misses an edit to a helper module it calls, or to a constant it reads;
    its values do not. They are written to 10 significant digits, so that a last-bit difference between
    two machines' math libraries does not retrain a run.
    """
    values = divergence.values(_FINGERPRINT_LOGU).to(torch.float64).tolist()
    return hashlib.sha256(" ".join(f"{value:.10g}" for value in values).encode()).hexdigest()
