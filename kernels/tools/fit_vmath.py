#!/usr/bin/env python3
"""Fit the polynomial coefficients of kernels/src/vmath.rs (needs only Python and numpy).

Each fit minimises the maximum *relative* error on a dense grid (Lawson's iteratively reweighted
least squares, in float64). The coefficients print highest degree first (Horner order), rounded to
f32, ready to paste; beside each fit, the max relative error of evaluating it in float32 the way the
kernel does, which is what the Rust tests bound.

    /work/venv/bin/python kernels/tools/fit_vmath.py
"""
import math

import numpy as np

f32 = np.float32


def lawson(basis, target, weight, iters=300):
    """Coefficients c approximately minimising max |weight * (basis @ c - target)|."""
    a = basis * weight[:, None]
    b = target * weight
    w = np.ones(len(b)) / len(b)
    for _ in range(iters):
        sw = np.sqrt(w)
        c, *_ = np.linalg.lstsq(a * sw[:, None], b * sw, rcond=None)
        err = np.abs(a @ c - b)
        w = w * err
        w /= w.sum()
    return c[::-1]


def powers(u, deg):
    return np.stack([u**k for k in range(deg + 1)], axis=1)


def horner32(coefs, u):
    acc = f32(coefs[0]) * np.ones_like(u, dtype=f32)
    for c in coefs[1:]:
        acc = (acc * u + f32(c)).astype(f32)
    return acc


def fit_exp(deg=4):
    """exp(r) = 1 + r + r^2 P(r) on |r| <= ln2 / 2 (after n = round(x / ln2), r = x - n ln2)."""
    h = math.log(2) / 2
    r = np.linspace(-h, h, 40001)
    r = r[r != 0]
    c = lawson(powers(r, deg), (np.expm1(r) - r) / (r * r), r * r / np.exp(r))
    r32 = r.astype(f32)
    y = ((r32 * r32).astype(f32) * horner32(c, r32) + r32).astype(f32) + f32(1)
    ref = np.exp(r32.astype(np.float64))
    return c, np.max(np.abs(y - ref) / ref)


def fit_tanh(deg=4, hi=0.625):
    """tanh(x) = x + x^3 P(x^2) on |x| < hi."""
    x = np.linspace(1e-4, hi, 40000)
    c = lawson(powers(x * x, deg), (np.tanh(x) - x) / x**3, x**3 / np.tanh(x))
    x32 = x.astype(f32)
    u = (x32 * x32).astype(f32)
    y = ((x32 * u).astype(f32) * horner32(c, u) + x32).astype(f32)
    ref = np.tanh(x32.astype(np.float64))
    return c, np.max(np.abs(y - ref) / ref)


def fit_erf(deg=5, hi=1.0):
    """erf(x) = x P(x^2) on |x| < hi, P(0) pinned to f32(2 / sqrt(pi)) (Rust's FRAC_2_SQRT_PI)."""
    x = np.linspace(1e-4, hi, 40000)
    erf = np.array([math.erf(v) for v in x])
    c0 = float(f32(2 / math.sqrt(math.pi)))
    u = x * x
    c = lawson(powers(u, deg - 1), (erf / x - c0) / u, x * u / erf)
    c = np.append(c, c0)
    x32 = x.astype(f32)
    y = (x32 * horner32(c, (x32 * x32).astype(f32))).astype(f32)
    ref = np.array([math.erf(v) for v in x32.astype(np.float64)])
    return c, np.max(np.abs(y - ref) / ref)


def fit_erfc(deg=9, lo=0.0, hi=10.5):
    """erfc(x) = exp(-x^2) Q(t), t = 1 / (1 + x / 2), on lo <= x <= hi (erfc underflows beyond)."""
    x = np.linspace(lo, hi, 60000)
    q = np.array([math.erfc(v) * math.exp(v * v) for v in x])
    c = lawson(powers(1 / (1 + 0.5 * x), deg), q, 1 / q)
    x32 = x.astype(f32)
    y = horner32(c, (f32(1) / (f32(0.5) * x32 + f32(1))).astype(f32))
    ref = np.array([math.erfc(v) * math.exp(v * v) for v in x32.astype(np.float64)])
    return c, np.max(np.abs(y - ref) / ref)


def main():
    for name, (c, err) in [
        ("EXP_P", fit_exp()),
        ("TANH_P", fit_tanh()),
        ("ERF_P", fit_erf()),
        ("ERFC_Q", fit_erfc()),
    ]:
        print(f"{name} (f32 evaluation: max relative error {err:.2e}):")
        print("    [" + ", ".join(np.format_float_positional(f32(v), unique=True, trim="0") for v in c) + "]")


if __name__ == "__main__":
    main()
