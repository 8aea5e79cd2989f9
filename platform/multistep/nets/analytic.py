"""Exact denoiser of a Gaussian mixture: a perfect diffusion teacher with no training.

For z_t = alpha x + sigma eps and component k with mean mu_k, per-dim std s_k:
  z_t | k ~ N(alpha mu_k, diag(alpha^2 s_k^2 + sigma^2))
  E[x | z_t, k] = mu_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) * (z_t - alpha mu_k)
  E[x | z_t]    = sum_k r_k(z_t) E[x | z_t, k],  r_k = softmax_k(log w_k + log N(z_t; ...))
computed in float64 with log-sum-exp. `posterior_var` gives the exact per-dim Var[x | z_t].

Correlated components (Sigma_k = s_k^2 I + Q_k diag(lambda_k) Q_k^T, Q_k orthonormal d x r) use Woodbury:
  z_t | k ~ N(a mu_k, c_k I + a^2 Q_k diag(lambda_k) Q_k^T),  c_k = a^2 s_k^2 + sigma^2
  with delta = z_t - a mu_k, p = Q_k^T delta and e_kj = c_k + a^2 lambda_kj (the variance along factor j):
  quad     = (|delta|^2 - |p|^2) / c_k + sum_j p_j^2 / e_kj
  log det  = (d - r) log c_k + sum_j log e_kj
  E[x | z_t, k] = mu_k + a [ (s_k^2 / c_k) delta + Q_k (((s_k^2 + lambda_kj) / e_kj - s_k^2 / c_k) p_j)_j ]
so nothing larger than (B, K r) or (d, K r) is ever formed.
"""

from __future__ import annotations

import torch
from torch import nn

from multistep.data.gmm import GaussianMixture
from multistep.diffusion.schedules import Schedule


class MixtureDenoiser(nn.Module):
    def __init__(self, gmm: GaussianMixture, schedule: Schedule):
        super().__init__()
        self.gmm, self.schedule = gmm, schedule

    def _posterior(self, z: torch.Tensor, t: torch.Tensor):
        """Responsibilities r (B, K) and the per-component gains, all in float64.

        Expanding ||z - a mu_k||^2 / var_k into three matrix products keeps every op O(B K d)
        in BLAS instead of materialising (B, K, d) tensors.
        """
        B = z.shape[0]
        zf = z.reshape(B, -1).double()  # (B, d)
        a, s = (v.double().reshape(B, 1) for v in self.schedule.alpha_sigma(t.double()))
        mu, sd2 = self.gmm.means.to(z.device), self.gmm.stds.to(z.device) ** 2  # (K, d)
        low = self._lowrank(zf, a, s) if self.gmm.rank else None
        if low is not None:
            logp = low[0]
        elif t.unique().numel() == 1:  # samplers: one t per batch -> pure matmuls
            a1, s1 = a[:1], s[:1]
            var = a1**2 * sd2 + s1**2  # (K, d) marginal var of z | k
            iv = 1.0 / var
            quad = (zf**2) @ iv.T - 2 * a1 * (zf @ (mu * iv).T) + (a1**2 * (mu**2 * iv)).sum(1)[None]
            logdet = torch.log(var).sum(1)[None]
        else:  # training batches: per-example t
            var = a[:, None] ** 2 * sd2[None] + s[:, None] ** 2  # (B, K, d)
            quad = ((zf[:, None] - a[:, None] * mu[None]) ** 2 / var).sum(-1)
            logdet = torch.log(var).sum(-1)
        if low is None:
            logp = -0.5 * (quad + logdet)
        logp = logp + torch.log(self.gmm.weights.to(z.device))[None]
        return torch.softmax(logp, dim=1), zf, a, s, mu, sd2, low  # r: (B, K)

    @torch.no_grad()
    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # E[x | z] = sum_k r_k (mu_k + g_k (z - a mu_k)),  g_k = a s_k^2 / (a^2 s_k^2 + sigma^2) per dim
        r, zf, a, s, mu, sd2, low = self._posterior(z, t)
        if low is not None:  # Woodbury (module docstring): sum_k r_k E[x | z, k] in (B, K r) matmuls
            _, p, g, coef, Q = low
            rg = r * g  # (B, K): r_k s_k^2 / c_k
            x = (
                r @ mu
                + a * (rg.sum(1, keepdim=True) * zf - a * (rg @ mu))
                + a * ((r[..., None] * coef * p).flatten(1) @ Q.T)
            )
        elif sd2.std(0).max() == 0 and sd2.std(1).max() == 0:  # one shared isotropic std: g is a scalar per row
            g = a * sd2[0, 0] / (a**2 * sd2[0, 0] + s**2)
            x = (1 - g * a) * (r @ mu) + g * zf
        else:
            g = a[:, None] * sd2[None] / (a[:, None] ** 2 * sd2[None] + s[:, None] ** 2)  # (B, K, d)
            x = (r[..., None] * (mu[None] + g * (zf[:, None] - a[:, None] * mu[None]))).sum(1)
        return x.reshape(z.shape).to(z.dtype)

    def _lowrank(self, zf: torch.Tensor, a: torch.Tensor, s: torch.Tensor):
        """Woodbury terms of correlated components (module docstring), all (B, K) or (B, K, r):
        log N(z; a mu_k, Cov_k) up to -d/2 log 2 pi, p = Q_k^T delta, g = s_k^2 / c_k, the factor gains' excess."""
        g = self.gmm
        mu, s2, lam = (v.to(zf.device) for v in (g.means, g.stds[:, 0] ** 2, g.factor_vars))  # (K, d), (K,), (K, r)
        factors = g.factors.to(zf.device)  # (K, d, r)
        K, d, r = factors.shape
        Q = factors.permute(1, 0, 2).reshape(d, K * r)  # (d, K r): every component's directions
        c = a**2 * s2[None] + s**2  # (B, K)
        delta2 = (zf**2).sum(1, keepdim=True) - 2 * a * (zf @ mu.T) + a**2 * (mu**2).sum(1)[None]  # |z - a mu_k|^2
        p = (zf @ Q).reshape(-1, K, r) - a[..., None] * torch.einsum("kd,kdr->kr", mu, factors)[None]
        e = c[..., None] + a[..., None] ** 2 * lam[None]  # (B, K, r)
        quad = (delta2 - (p**2).sum(-1)) / c + (p**2 / e).sum(-1)
        logdet = (d - r) * torch.log(c) + torch.log(e).sum(-1)
        coef = (s2[None, :, None] + lam[None]) / e - (s2[None] / c)[..., None]
        return -0.5 * (quad + logdet), p, s2[None] / c, coef, Q

    @torch.no_grad()
    def posterior_var(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Exact per-dimension Var[x | z_t] (law of total variance over components)."""
        r, zf, a, s, mu, sd2, low = self._posterior(z, t)
        if low is not None:  # per component: mean as in forward; Var diag = sigma^2 (g + sum_j Q_kdj^2 coef_j)
            _, p, g, coef, Q = low
            F = self.gmm.factors.to(z.device)  # (K, d, r)
            mean_k = mu[None] + a[:, None] * (
                g[..., None] * (zf[:, None] - a[:, None] * mu[None]) + torch.einsum("kdr,bkr->bkd", F, coef * p)
            )
            var_k = s[:, None] ** 2 * (g[..., None] + torch.einsum("kdr,bkr->bkd", F**2, coef))
        else:
            var = a[:, None] ** 2 * sd2[None] + s[:, None] ** 2
            mean_k = mu[None] + a[:, None] * sd2[None] / var * (zf[:, None] - a[:, None] * mu[None])
            var_k = sd2[None] * s[:, None] ** 2 / var
        m = (r[..., None] * mean_k).sum(1, keepdim=True)
        return (r[..., None] * (var_k + (mean_k - m) ** 2)).sum(1).reshape(z.shape)
