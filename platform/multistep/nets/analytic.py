"""Exact denoiser of a Gaussian mixture: a perfect diffusion teacher with no training.

For z_t = alpha x + sigma eps and component k with mean mu_k, per-dim std s_k:
  z_t | k ~ N(alpha mu_k, diag(alpha^2 s_k^2 + sigma^2))
  E[x | z_t, k] = mu_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) * (z_t - alpha mu_k)
  E[x | z_t]    = sum_k r_k(z_t) E[x | z_t, k],  r_k = softmax_k(log w_k + log N(z_t; ...))
computed in float64 with log-sum-exp. `posterior_var` gives the exact per-dim Var[x | z_t].
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
        if t.unique().numel() == 1:  # samplers: one t per batch -> pure matmuls
            a1, s1 = a[:1], s[:1]
            var = a1**2 * sd2 + s1**2  # (K, d) marginal var of z | k
            iv = 1.0 / var
            quad = (zf**2) @ iv.T - 2 * a1 * (zf @ (mu * iv).T) + (a1**2 * (mu**2 * iv)).sum(1)[None]
            logdet = torch.log(var).sum(1)[None]
        else:  # training batches: per-example t
            var = a[:, None] ** 2 * sd2[None] + s[:, None] ** 2  # (B, K, d)
            quad = ((zf[:, None] - a[:, None] * mu[None]) ** 2 / var).sum(-1)
            logdet = torch.log(var).sum(-1)
        logp = -0.5 * (quad + logdet) + torch.log(self.gmm.weights.to(z.device))[None]
        return torch.softmax(logp, dim=1), zf, a, s, mu, sd2  # r: (B, K)

    @torch.no_grad()
    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # E[x | z] = sum_k r_k (mu_k + g_k (z - a mu_k)),  g_k = a s_k^2 / (a^2 s_k^2 + sigma^2) per dim
        r, zf, a, s, mu, sd2 = self._posterior(z, t)
        if sd2.std(0).max() == 0 and sd2.std(1).max() == 0:  # one shared isotropic std: g is a scalar per row
            g = a * sd2[0, 0] / (a**2 * sd2[0, 0] + s**2)
            x = (1 - g * a) * (r @ mu) + g * zf
        else:
            g = a[:, None] * sd2[None] / (a[:, None] ** 2 * sd2[None] + s[:, None] ** 2)  # (B, K, d)
            x = (r[..., None] * (mu[None] + g * (zf[:, None] - a[:, None] * mu[None]))).sum(1)
        return x.reshape(z.shape).to(z.dtype)

    @torch.no_grad()
    def posterior_var(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Exact per-dimension Var[x | z_t] (law of total variance over components)."""
        r, zf, a, s, mu, sd2 = self._posterior(z, t)
        var = a[:, None] ** 2 * sd2[None] + s[:, None] ** 2
        mean_k = mu[None] + a[:, None] * sd2[None] / var * (zf[:, None] - a[:, None] * mu[None])
        var_k = sd2[None] * s[:, None] ** 2 / var
        m = (r[..., None] * mean_k).sum(1, keepdim=True)
        return (r[..., None] * (var_k + (mean_k - m) ** 2)).sum(1).reshape(z.shape)
