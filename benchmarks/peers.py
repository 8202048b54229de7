"""Peers on the same work: diffusers' DDPM and DDIM schedulers and torchcfm's flow matchers,
driving the same network as ours, compared on quality at equal NFE and on seconds.

  pip install -r benchmarks/requirements.txt     # diffusers, torchcfm (+ pot, torchdyn); the
                                                 # model files never import them
  OMP_NUM_THREADS=1 python benchmarks/peers.py   # ~12 min on one core: results/peers.json
  OMP_NUM_THREADS=1 python benchmarks/peers.py --quick --work /tmp/peers   # smoke test in
                                                 # seconds: WORK/peers.json

What is compared (2-D checkerboard, the default MLP, FULL's training iterations; W2 on 2000
held-out points):
- one DDPM eps network trained by ddpm.py, sampled by ddpm.DDPM.sample and diffusers'
  DDPMScheduler (1000 ancestral steps), and by ddim.DDIM.sample and diffusers' DDIMScheduler
  (50 steps, eta = 0). diffusers counts time 0..T-1 where we count 1..T: its t is our t + 1. Both
  schedulers take timestep_spacing="trailing", the grid ddim.py visits (tau_i = round(T i / S),
  T down to T / S); diffusers' default, "leading" (T - T / S + 1 down to 1 in our count), is
  another sampler, not a check of ours (corrected: the table compared ddim.py with it). Each pair
  of samplers runs A B B A (ours, theirs, theirs, ours) from the same noise; a row's seconds are
  the mean of its two runs.
- flow matching trained by cfm.py's loss (cfm.CFM().loss, independent and exact minibatch-OT
  coupling) and by torchcfm's ConditionalFlowMatcher / ExactOptimalTransportConditionalFlowMatcher
  (sigma = 0), every loss inside the same training loop, common.train (the same network, seed,
  optimiser, EMA and batches), all sampled with cfm.CFM's Euler solver at the same NFE.

Seconds, like with like: one process, one thread (torch.set_num_threads(1)). The four flow losses
train interleaved, in `rounds` chunks of iters / rounds iterations: each chunk continues its run
exactly from its checkpoint (common.train's resume: weights, optimiser, EMA and RNG states), and a
round runs cfm.py's chunk and the peer's back to back, in the order A B in even rounds and B A in
odd ones, for each coupling. A round's ratio is cfm.py's CPU seconds over the peer's in that
round: load on the machine that changes over minutes hits both sides of a pair alike. The table
gives the median ratio over rounds with its range, and each loss's training CPU seconds (the sum
of its chunks).

Corrected: this script called common.run, which common.py no longer has (common.train is the
training loop), and so failed before its first flow-matching row; it trained cfm.py's rows
through cfm.main and the peers' through another path, one after the other, so the committed
table's 233 s against 106 s compared unlike code under unlike load.
"""
import argparse
import statistics
import time
from pathlib import Path

import bench
import torch

import cfm  # the model files: bench puts the repository's root on sys.path
import common
import ddim
import ddpm

COMMAND = ("pip install -r benchmarks/requirements.txt && OMP_NUM_THREADS=1 python "
           "benchmarks/peers.py")

DATA, SEED = "checkerboard", 0
FULL = dict(iters=1200, rounds=6, n_eval=2000, T=1000, ddim_steps=50, flags=[])
# --quick: a smoke test of the code paths (narrow network, small batches, T = 20), not a measurement
QUICK = dict(iters=4, rounds=2, n_eval=100, T=20, ddim_steps=5,
             flags=["--width", "16", "--batch-size", "32"])
NFES = (1, 10, 100)  # the flows' Euler steps
PEER_OF = {"torchcfm": "cfm", "torchcfm-ot": "cfm-ot"}  # each peer's own loss, trained beside it


def w2(data, x):
    q = common.quality(data, x.float().cpu())
    return q["value"], q["floor"]


def timed(fn):
    """(fn(), wall seconds, CPU seconds)."""
    t0, c0 = time.time(), time.process_time()
    out = fn()
    return out, time.time() - t0, time.process_time() - c0


@torch.no_grad()
def diffusers_ddpm(net, sched_cls, steps, noise, generator, T=1000, **step_kw):
    s = sched_cls(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                  clip_sample=False, timestep_spacing="trailing")  # ddpm.py's and ddim.py's times
    s.set_timesteps(steps)
    x = noise.clone()
    for t in s.timesteps:
        eps = net(x, torch.full((len(x),), int(t) + 1), None)  # their t = our t - 1
        x = s.step(eps, t, x, generator=generator, **step_kw).prev_sample
    return x


def torchcfm_loss(matcher):
    """torchcfm's matcher as a loss of common.train: || v(x_t, t) - u_t ||^2 at its (t, x_t,
    u_t)."""
    def loss_fn(net, x1, y):
        t, x_t, u_t = matcher.sample_location_and_conditional_flow(torch.randn_like(x1), x1)
        return (net(x_t, t, y) - u_t).pow(2).mean()
    return loss_fn


def training_args(train, out, tag):
    """One flow's shared flags, parsed as a model file parses them (its checkpoints name `tag`)."""
    parser = common.add_args(argparse.ArgumentParser(prog="peers.py"))
    args, _ = common.parse_args(parser, train + ["--out", str(out)], tag)
    return args


def train_chunk(args, loss_fn, data, until):
    """common.train of a fresh network (seeded as a model file seeds it) on `loss_fn` up to
    iteration `until`, continuing exactly from args.out/ckpt.pt where an earlier chunk wrote it:
    (EMA network, wall s, CPU s) of the common.train call alone."""
    path = Path(args.out) / "ckpt.pt"
    ckpt = common.load_checkpoint(path, (args.model,)) if path.exists() else None
    args.iters = until
    with common.session(args) as device:  # seeds torch with args.seed, as cfm.main does
        net = common.make_net(args.arch, data.shape, args.width, 0, time_scale=1000.0).to(device)
        return timed(lambda: common.train(net, loss_fn, data, args, ckpt))


def flows_interleaved(flows, data, iters, rounds, train, out):
    """Train every flow of `flows` ({tag: (label, loss)}, in pairs: cfm.py's, then its peer)
    through common.train in `rounds` chunks, each pair A B in even rounds and B A in odd ones.
    Returns {tag: (EMA network, [wall s of each chunk], [CPU s of each chunk])}."""
    args = {tag: training_args(train, out / tag, tag) for tag in flows}
    for tag in flows:  # a fresh start: no checkpoint of an earlier run to continue
        (out / tag / "ckpt.pt").unlink(missing_ok=True)
    done = {tag: (None, [], []) for tag in flows}
    tags = list(flows)
    pairs = [tags[i:i + 2] for i in range(0, len(tags), 2)]
    for k in range(rounds):
        until = round(iters * (k + 1) / rounds)
        for pair in pairs:
            for tag in (pair if k % 2 == 0 else pair[::-1]):
                net, wall, cpu = train_chunk(args[tag], flows[tag][1], data, until)
                done[tag] = (net, done[tag][1] + [wall], done[tag][2] + [cpu])
                print(f"round {k}: {tag} to {until} iterations, {cpu:.2f} CPU s ({wall:.2f} s)",
                      flush=True)
    return done


def ratio_summary(ours, theirs):
    """The per-round ratios ours / theirs (CPU seconds), their median and range."""
    ratios = [a / b for a, b in zip(ours, theirs)]
    return dict(ratios=ratios, median=statistics.median(ratios), lo=min(ratios), hi=max(ratios))


def diffusion_rows(B, train, out, data, noise, gen):
    """ddpm.py's network, sampled by ours and by diffusers' schedulers: each pair A B B A."""
    from diffusers import DDIMScheduler, DDPMScheduler  # optional: benchmarks/requirements.txt
    T, k = B["T"], B["ddim_steps"]
    q = bench.run(ddpm.main, train + ["--T", str(T), "--out", str(out / "ddpm")])  # linear betas
    t_train, c_train = q["train_seconds"], q["train_cpu_seconds"]
    net = common.ema_net(common.load_checkpoint(out / "ddpm" / "ckpt.pt", ("ddpm",)), data)
    d, dd = ddpm.DDPM(T), ddim.DDIM(T)
    samplers = [
        [("ours", "DDPM ancestral", T,
          lambda: d.sample(net, noise.shape, generator=gen(), noise=noise)),
         ("diffusers", "DDPMScheduler", T,
          lambda: diffusers_ddpm(net, DDPMScheduler, T, noise, gen(), T))],
        [("ours", "DDIM eta=0", k,
          lambda: dd.sample(net, noise.shape, steps=k, eta=0.0, noise=noise)),
         ("diffusers", "DDIMScheduler eta=0", k,
          lambda: diffusers_ddpm(net, DDIMScheduler, k, noise, gen(), T, eta=0.0))],
    ]
    rows = []
    for pair in samplers:
        seconds, xs = {}, {}
        for impl, sampler, nfe, fn in pair + pair[::-1]:  # A B B A
            xs[impl], wall, cpu = timed(fn)
            seconds.setdefault(impl, []).append(cpu)
        for impl, sampler, nfe, fn in pair:
            rows.append(dict(method="DDPM eps-net", impl=impl, sampler=sampler, nfe=nfe,
                             train_s=t_train, train_cpu_s=c_train,
                             sample_s=statistics.mean(seconds[impl]), sample_cpu_s=seconds[impl],
                             **dict(zip(("w2", "floor"), w2(data, xs[impl])))))
            print(rows[-1], flush=True)
    return rows


def flow_rows(B, train, out, data, noise):
    """The four flow losses trained interleaved, each sampled with Euler at NFES."""
    from torchcfm.conditional_flow_matching import (ConditionalFlowMatcher,
                                                    ExactOptimalTransportConditionalFlowMatcher)
    flows = {"cfm": ("ours (cfm.py, independent)", cfm.CFM(0.0, "independent").loss),
             "torchcfm": ("torchcfm ConditionalFlowMatcher",
                          torchcfm_loss(ConditionalFlowMatcher(sigma=0.0))),
             "cfm-ot": ("ours (cfm.py, OT)", cfm.CFM(0.0, "ot").loss),
             "torchcfm-ot": ("torchcfm ExactOptimalTransportCFM",
                             torchcfm_loss(ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)))}
    trained = flows_interleaved(flows, data, B["iters"], B["rounds"], train, out)
    rows = []
    for tag, (label, _) in flows.items():
        net, walls, cpus = trained[tag]
        timing = dict(train_s=sum(walls), train_cpu_s=sum(cpus), chunk_cpu_s=cpus)
        if tag in PEER_OF:
            timing["cfm_over_this"] = ratio_summary(trained[PEER_OF[tag]][2], cpus)
        for nfe in NFES:
            x, _, t_sample = timed(lambda: cfm.CFM().sample(net, noise.shape, steps=nfe,
                                                            method="euler", noise=noise))
            rows.append(dict(method="flow matching", impl=label, sampler="Euler", nfe=nfe,
                             sample_s=t_sample, **timing,
                             **dict(zip(("w2", "floor"), w2(data, x)))))
            print({k: v for k, v in rows[-1].items()
                   if k not in ("chunk_cpu_s", "cfm_over_this")}, flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench.add_output_flags(p, bench.ROOT / "benchmarks" / "work" / "peers")
    p.add_argument("--iters", type=int,
                   help=f"training iterations of every model (default {FULL['iters']})")
    args = p.parse_args(argv)
    results = bench.results_dir(args, "peers.py")
    torch.set_num_threads(1)  # like with like: every timing on one thread of this one process
    B = dict(QUICK if args.quick else FULL)
    B["iters"] = args.iters or B["iters"]
    out, n_eval = Path(args.work), B["n_eval"]
    train = ["--data", DATA, "--iters", str(B["iters"]), "--n-eval", "0", "--log-every", "1000",
             "--uncond", "--seed", str(SEED), "--device", "cpu"] + B["flags"]
    data = common.load_data(DATA)
    noise = torch.randn(n_eval, 2, generator=torch.Generator().manual_seed(SEED))
    t_start = time.time()
    gen = lambda: torch.Generator().manual_seed(SEED + 1)  # the samplers' noise after x_T
    rows = diffusion_rows(B, train, out, data, noise, gen)
    rows += flow_rows(B, train, out, data, noise)
    result = {"machine": bench.machine(), "command": COMMAND + " --quick" * args.quick,
              "data": DATA, "iters": B["iters"], "rounds": B["rounds"], "n_eval": n_eval,
              "quick": args.quick, "rows": rows, "total_s": time.time() - t_start}
    bench.write_json(results / "peers.json", result)
    print(markdown(result))
    return result


def markdown(res):
    """The diffusion samplers one per row; the flow matchers one per row, their NFE side by side,
    their training CPU seconds and, for a peer, cfm.py's seconds over its own per round."""
    n_eval = res.get("n_eval", 2000)
    interleaved = "rounds" in res  # older files: back-to-back runs, wall seconds, no ratio
    diffusion = [[r["impl"], r["sampler"], r["nfe"], f"{r['w2']:.3f}", f"{r['sample_s']:.2f}"]
                 for r in res["rows"] if r["method"] != "flow matching"]
    flows = [r for r in res["rows"] if r["method"] == "flow matching"]
    nfes = sorted({r["nfe"] for r in flows})
    matching = []
    for impl in dict.fromkeys(r["impl"] for r in flows):
        mine = {r["nfe"]: r for r in flows if r["impl"] == impl}
        cells = [impl] + [f"{mine[n]['w2']:.3f}" for n in nfes]
        first = mine[nfes[0]]
        if not interleaved:
            matching.append(cells + [f"{first['train_s']:.0f}"])
            continue
        ratio = first.get("cfm_over_this")
        spread = f"{ratio['median']:.3f} ({ratio['lo']:.3f} - {ratio['hi']:.3f})" if ratio else ""
        matching.append(cells + [f"{first['train_cpu_s']:.1f}", spread])
    d0 = res["rows"][0]
    trained = f"{d0['train_cpu_s']:.0f} CPU s" if "train_cpu_s" in d0 else f"{d0['train_s']:.0f} s"
    what = (f"{res['data']}, {res['iters']} training iterations of every model, W2 of {n_eval} "
            f"points (floor, real vs real: {d0['floor']:.3f}); diffusion: one network trained by "
            f"ddpm.py ({trained})")
    if interleaved:
        what += ("; one process, one thread. Samplers: diffusers' with timestep_spacing "
                 "\"trailing\", the times ddpm.py and ddim.py visit; CPU seconds, the mean of two "
                 "runs in the order ours, diffusers, diffusers, ours. Flow losses: every one "
                 f"trains in common.train, interleaved in {res['rounds']} rounds of "
                 f"{res['iters'] // res['rounds']} iterations (cfm.py's chunk and its peer's back "
                 "to back, A B then B A), each chunk continuing its run exactly; the ratio is "
                 "cfm.py's CPU seconds over the peer's in the same round, median (range) over "
                 "rounds")
    header = ["flow matching loss, Euler sampler"] + [f"W2 at NFE {n}" for n in nfes]
    header += (["train CPU s", "cfm.py's CPU s / this loss's, per round"] if interleaved
               else ["train s"])
    samplers = bench.table(["implementation", "sampler", "NFE", "W2",
                            "sample CPU s" if interleaved else "sample s"], diffusion,
                           ["l", "l", "r", "r", "r"])
    return "\n".join([bench.caption(res["machine"], res.get("command", COMMAND), what), "",
                      samplers, "", bench.table(header, matching)]) + "\n"


if __name__ == "__main__":
    main()
