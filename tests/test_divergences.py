"""The divergence registry against closed forms and the paper's Theorem 1."""

import math

import pytest
import torch

from train_dpo.divergences import (
    Divergence,
    available,
    get_divergence,
    register_divergence,
    unregister_divergence,
)

ALL = [
    ("reverse_kl", None),
    ("forward_kl", None),
    ("jsd", None),
    ("jeffreys", None),
    ("neyman_chi2", None),
] + [("alpha", a) for a in (0.1, 0.3, 0.5, 0.7, 0.9)]
IDS = [f"{name}{alpha or ''}" for name, alpha in ALL]


@pytest.mark.parametrize(("name", "alpha"), ALL, ids=IDS)
def test_f_vanishes_at_one(name, alpha):
    f = get_divergence(name, alpha).f
    assert f(torch.tensor(1.0, dtype=torch.float64)).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(("name", "alpha"), ALL, ids=IDS)
def test_f_is_convex(name, alpha):
    u = torch.logspace(-3, 3, 2001, dtype=torch.float64)
    f = get_divergence(name, alpha).f(u)
    # Convex <=> slopes of consecutive chords never decrease (works on a non-uniform grid).
    slopes = f.diff() / u.diff()
    assert (slopes.diff() >= -1e-9 * slopes.abs()[1:].clamp(min=1)).all()


@pytest.mark.parametrize(("name", "alpha"), ALL, ids=IDS)
def test_f_prime_is_the_derivative_of_f(name, alpha):
    divergence = get_divergence(name, alpha)
    u = torch.logspace(-2, 2, 101, dtype=torch.float64).requires_grad_()
    (autograd_f_prime,) = torch.autograd.grad(divergence.f(u).sum(), u)
    torch.testing.assert_close(divergence.f_prime(torch.log(u.detach())), autograd_f_prime)


def test_alpha_divergence_closed_form():
    # f'(u) = (1 - u^-alpha) / alpha at u = 4, alpha = 0.5: (1 - 1/2) / 0.5 = 1.
    value = get_divergence("alpha", 0.5).f_prime(torch.tensor(math.log(4.0), dtype=torch.float64))
    assert value.item() == pytest.approx(1.0)


@pytest.mark.parametrize(("name", "alpha"), ALL, ids=IDS)
def test_builtins_satisfy_the_theorem(name, alpha):
    get_divergence(name, alpha).check()


def test_pearson_chi2_is_rejected_because_f_prime_is_defined_at_zero():
    with pytest.raises(ValueError, match="bounded as u -> 0"):
        register_divergence("pearson_chi2", lambda logu: 2.0 * (torch.exp(logu) - 1.0))
    assert "pearson_chi2" not in available()


def test_total_variation_is_rejected():
    with pytest.raises(ValueError, match="bounded as u -> 0"):
        register_divergence("total_variation", lambda logu: 0.5 * torch.sign(logu))


def test_flat_f_prime_is_rejected_because_it_is_not_invertible():
    with pytest.raises(ValueError, match="not strictly increasing"):
        register_divergence("kl_capped_at_one", lambda logu: logu.clamp(max=0.0))


def test_non_finite_f_prime_is_rejected():
    with pytest.raises(ValueError, match="not finite"):
        register_divergence("naive_forward_kl", lambda logu: -torch.exp(-10 * logu).float())


def test_user_divergence_registers_and_resolves():
    try:
        registered = register_divergence("scaled_kl", lambda logu: 2.0 * logu, formula="f'(u) = 2 log u")
        assert "scaled_kl" in available()
        assert get_divergence("scaled_kl") is registered
        with pytest.raises(ValueError, match="already registered"):
            register_divergence("scaled_kl", lambda logu: logu)
    finally:
        unregister_divergence("scaled_kl")
    assert "scaled_kl" not in available()


@pytest.mark.parametrize(
    ("name", "alpha", "message"),
    [("nope", None, "unknown divergence"), ("alpha", None, "needs alpha"), ("alpha", 1.0, r"\(0, 1\)")],
)
def test_bad_names_and_alphas(name, alpha, message):
    with pytest.raises(ValueError, match=message):
        get_divergence(name, alpha)


def test_builtins_cannot_be_unregistered():
    with pytest.raises(ValueError, match="built in"):
        unregister_divergence("jsd")
    assert isinstance(get_divergence("jsd"), Divergence)


def test_a_module_function_is_imported_checked_and_named_after_the_function(tmp_path, monkeypatch):
    (tmp_path / "user_divergences.py").write_text(
        "import torch\n\n"
        "def kl_plus_chi2(logu):\n    return logu + torch.exp(logu.clamp(max=50.0))\n\n"
        "def total_variation(logu):\n    return 0.5 * torch.sign(logu)\n\n"
        "NOT_A_FUNCTION = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    divergence = get_divergence("user_divergences:kl_plus_chi2")
    logu = torch.tensor([-3.0, 0.0, 2.0], dtype=torch.float64)
    assert divergence.name == "kl_plus_chi2"
    torch.testing.assert_close(divergence.f_prime(logu), logu + torch.exp(logu))  # f'(u) = log u + u
    with pytest.raises(ValueError, match="bounded as u -> 0|not strictly increasing"):
        get_divergence("user_divergences:total_variation")
    with pytest.raises(ValueError, match="expected a Divergence or a function of log u"):
        get_divergence("user_divergences:NOT_A_FUNCTION")
    with pytest.raises(ValueError, match="module 'user_divergences' has no 'missing'"):
        get_divergence("user_divergences:missing")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_here'"):
        get_divergence("no_such_module_here:f")
    (tmp_path / "broken_divergences.py").write_text("def f(logu):\n    return logu +\n")
    with pytest.raises(ValueError, match="cannot import module 'broken_divergences' \\(SyntaxError: "):
        get_divergence("broken_divergences:f")
    with pytest.raises(ValueError, match="--alpha is only used with --divergence alpha"):
        get_divergence("user_divergences:kl_plus_chi2", alpha=0.5)
