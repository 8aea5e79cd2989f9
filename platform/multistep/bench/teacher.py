"""Teacher figures: the cost of the adapter that makes a network trained elsewhere a teacher (nets/adapter.py).

The bench's UNet, declared as a DDPM eps network, is called through the adapter (log-SNR -> fractional timestep,
eps -> x_hat in float64) and bare (the network alone, under the same fast paths), on the same batch, in interleaved
rounds; the ratio of the medians is the adapter's overhead (goal <= 1.05 on the cifar-size UNet)."""

from __future__ import annotations

import statistics
import time

from multistep.bench.training import Setup, image_shape, timed

GOAL = 1.05


def bench_teacher(setup: Setup, batch: int, min_rounds: int = 5, min_seconds: float = 2.0) -> dict:
    import torch

    from multistep.diffusion.schedules import DiscreteVP
    from multistep.nets.adapter import Adapted, Time, ddpm_betas

    bare = setup.student  # the network under the sweep's fast paths (autocast, channels_last, compile)
    time_k = Time.ddpm(ddpm_betas("linear", 1e-4, 0.02, 1000))
    adapted = Adapted(bare.net, DiscreteVP(logsnr_k=tuple(time_k.logsnr_k.tolist())), time_k, "eps")
    adapted.autocast_dtype, adapted.channels_last, adapted.compiled = (
        bare.autocast_dtype,
        bare.channels_last,
        bare.compiled,
    )
    g = torch.Generator().manual_seed(3)
    z = torch.randn((batch, *image_shape(setup.size)), generator=g).to(setup.device)
    t = torch.rand(batch, generator=g, dtype=torch.float64).to(setup.device)
    tau = time_k.timestep(adapted.schedule.logsnr(t)).float()
    calls = {"bare": lambda: bare.v(z, tau), "adapter": lambda: adapted(z, t)}
    times: dict[str, list[float]] = {k: [] for k in calls}
    with torch.no_grad():
        for fn in calls.values():
            timed(fn, setup.device, 1, 0)  # warm-up (and compile)
        t0 = time.perf_counter()
        while len(times["bare"]) < min_rounds or time.perf_counter() - t0 < min_seconds:
            for k, fn in calls.items():
                times[k].append(timed(fn, setup.device, 0, 1)[1])
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "batch": batch,
        "bare_s": med["bare"],
        "adapter_s": med["adapter"],
        "ratio": med["adapter"] / med["bare"],
        "goal_ratio": GOAL,
        "rounds": len(times["bare"]),
    }
